//! procspawn 1 (default features): `spawn` a function in a new process (exec of this binary,
//! arguments and result over ipc-channel) and `join` it. A start-call-stop is one spawn + join;
//! the function reports the CPU it ran on, since its process is gone when `join` returns.

use crate::lanes::{check_hello, StartOp, Stopwatch, NUMBER};
use crate::os;

/// Row 3.
pub fn start_call_stop() -> StartOp {
    let mut w = Stopwatch::start();
    let handle = procspawn::spawn(
        ("Joe".to_owned(), "Dalton".to_owned()),
        |(first, last): (String, String)| {
            (
                format!("Hello {first} {last}, how are you?"),
                NUMBER,
                os::this_cpu(),
            )
        },
    );
    let (greeting, number, cpu) = handle.join().expect("procspawn join");
    w.reported(cpu);
    check_hello("procspawn", &greeting, number);
    w.finish()
}
