//! The peers: ipc-channel, tarpc and procspawn, each doing the rows' work the way its
//! documentation shows, with a helper process like fdserver's.

pub mod ipc_lane;
pub mod procspawn_lane;
pub mod tarpc_lane;

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::os;

/// In a freshly forked child: dies with the bench, runs `body`, and `_exit`s with its code (101
/// if it panicked), never returning into the parent's code.
pub fn run_child(body: impl FnOnce() -> i32) -> ! {
    os::die_with_parent();
    let code = catch_unwind(AssertUnwindSafe(body)).unwrap_or(101);
    os::exit_child(code)
}

/// Reaps a forked helper that exits once its channel closes; panics unless it exited with 0.
pub fn reap(pid: i32, lane: &str) {
    let status = os::wait(pid);
    assert_eq!(status, 0, "{lane} helper {pid}: wait status {status:#x}");
}
