//! The operating-system layer: every raw syscall the runtime makes lives here, each behind a small
//! function, one file per concept, so that a second platform only has to provide this module.
//!
//! Everything in this module that the forked child calls before its server loop
//! (`reset_signal_dispositions`, `close_fds_except`, `set_disposition`, `set_loop_thread`,
//! `set_sigmask`, `exit_now`) is async-signal-safe: no allocation, no locks. The one exception is
//! [`HangupWatch::start`], which creates a thread (`pthread_create`, which glibc and musl support
//! in a forked child: they reset their own locks at `fork`).

use std::io;

mod fd;
mod hangup;
mod memory;
mod peers;
mod poll;
mod process;
mod signal;
mod socket;

pub(crate) use fd::*;
pub(crate) use hangup::*;
pub(crate) use memory::*;
pub(crate) use peers::*;
pub(crate) use poll::*;
pub(crate) use process::*;
pub(crate) use signal::*;
pub(crate) use socket::*;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
