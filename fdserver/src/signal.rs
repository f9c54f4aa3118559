//! [`Signal`]: the signals a server handles and a client sends, fdserver's own type (so that no
//! other crate's version is part of fdserver's public API).

use std::fmt;
use std::str::FromStr;

macro_rules! signals {
    ($($(#[doc = $doc:literal])* $(#[cfg($cfg:meta)])? $name:ident = $number:ident,)*) => {
        /// A Linux signal: what a server handles ([`Server::SIGNALS`](crate::Server::SIGNALS),
        /// `#[fdserver(signal = "...")]`) and what [`ServerHandle::signal`](crate::ServerHandle::signal)
        /// sends.
        ///
        /// The variants are Linux's standard signals, named and numbered as in `<signal.h>`
        /// (`Signal::SIGUSR1 as i32` is `libc::SIGUSR1`); real-time signals are not represented.
        /// Converts to and from signal numbers and names:
        ///
        /// ```
        /// use fdserver::Signal;
        ///
        /// assert_eq!(i32::from(Signal::SIGTERM), 15);
        /// assert_eq!(Signal::try_from(10), Ok(Signal::SIGUSR1));
        /// assert!(Signal::try_from(64).is_err()); // a real-time signal
        /// assert_eq!(Signal::SIGHUP.to_string(), "SIGHUP");
        /// assert_eq!("SIGWINCH".parse::<Signal>(), Ok(Signal::SIGWINCH));
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(i32)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Signal {
            $($(#[doc = $doc])* $(#[cfg($cfg)])? $name = libc::$number,)*
        }

        impl Signal {
            /// Every variant.
            pub const ALL: &'static [Signal] = &[$($(#[cfg($cfg)])? Signal::$name,)*];

            /// The signal's name, as in `<signal.h>` (`"SIGUSR1"`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($(#[cfg($cfg)])? Signal::$name => stringify!($name),)*
                }
            }

            /// The signal with this number, if it is one of Linux's standard signals.
            pub const fn from_raw(number: i32) -> Option<Signal> {
                match number {
                    $($(#[cfg($cfg)])? libc::$number => Some(Signal::$name),)*
                    _ => None,
                }
            }
        }
    };
}

signals! {
    /// Hang-up (terminal closed; conventionally "reload").
    SIGHUP = SIGHUP,
    /// Interrupt from the terminal (Ctrl-C).
    SIGINT = SIGINT,
    /// Quit from the terminal (Ctrl-\).
    SIGQUIT = SIGQUIT,
    /// Illegal instruction.
    SIGILL = SIGILL,
    /// Trace or breakpoint trap.
    SIGTRAP = SIGTRAP,
    /// Abort (`abort()`).
    SIGABRT = SIGABRT,
    /// Bus error (bad memory access).
    SIGBUS = SIGBUS,
    /// Floating-point (arithmetic) exception.
    SIGFPE = SIGFPE,
    /// Kill (cannot be caught or ignored).
    SIGKILL = SIGKILL,
    /// User-defined signal 1.
    SIGUSR1 = SIGUSR1,
    /// Invalid memory reference.
    SIGSEGV = SIGSEGV,
    /// User-defined signal 2.
    SIGUSR2 = SIGUSR2,
    /// Write to a pipe or socket with no reader.
    SIGPIPE = SIGPIPE,
    /// Timer (`alarm()`).
    SIGALRM = SIGALRM,
    /// Termination request.
    SIGTERM = SIGTERM,
    /// Stack fault on a coprocessor (unused; not on MIPS and SPARC).
    #[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
    SIGSTKFLT = SIGSTKFLT,
    /// A child stopped or exited.
    SIGCHLD = SIGCHLD,
    /// Continue if stopped.
    SIGCONT = SIGCONT,
    /// Stop (cannot be caught or ignored).
    SIGSTOP = SIGSTOP,
    /// Stop from the terminal (Ctrl-Z).
    SIGTSTP = SIGTSTP,
    /// Terminal input for a background process.
    SIGTTIN = SIGTTIN,
    /// Terminal output for a background process.
    SIGTTOU = SIGTTOU,
    /// Urgent condition on a socket.
    SIGURG = SIGURG,
    /// CPU time limit exceeded.
    SIGXCPU = SIGXCPU,
    /// File size limit exceeded.
    SIGXFSZ = SIGXFSZ,
    /// Virtual alarm clock.
    SIGVTALRM = SIGVTALRM,
    /// Profiling timer expired.
    SIGPROF = SIGPROF,
    /// The terminal window size changed.
    SIGWINCH = SIGWINCH,
    /// I/O is possible on a descriptor.
    SIGIO = SIGIO,
    /// Power failure.
    SIGPWR = SIGPWR,
    /// Bad system call.
    SIGSYS = SIGSYS,
}

impl Signal {
    /// Another name of [`SIGABRT`](Signal::SIGABRT).
    pub const SIGIOT: Signal = Signal::SIGABRT;
    /// Another name of [`SIGIO`](Signal::SIGIO).
    pub const SIGPOLL: Signal = Signal::SIGIO;
    /// Another name of [`SIGSYS`](Signal::SIGSYS).
    pub const SIGUNUSED: Signal = Signal::SIGSYS;

    /// The signal's number (`Signal::SIGKILL.as_raw() == 9`).
    pub const fn as_raw(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for Signal {
    /// The signal's name: `SIGTERM`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Signal> for i32 {
    fn from(signal: Signal) -> i32 {
        signal as i32
    }
}

impl TryFrom<i32> for Signal {
    type Error = UnknownSignal;

    fn try_from(number: i32) -> Result<Signal, UnknownSignal> {
        Signal::from_raw(number).ok_or(UnknownSignal(Unknown::Number(number)))
    }
}

impl FromStr for Signal {
    type Err = UnknownSignal;

    /// Parses a signal name as written in `<signal.h>` (`"SIGUSR1"`, or an alias such as
    /// `"SIGIOT"`).
    fn from_str(name: &str) -> Result<Signal, UnknownSignal> {
        let alias = match name {
            "SIGIOT" => Some(Signal::SIGIOT),
            "SIGPOLL" => Some(Signal::SIGPOLL),
            "SIGUNUSED" => Some(Signal::SIGUNUSED),
            _ => None,
        };
        alias
            .or_else(|| Signal::ALL.iter().copied().find(|s| s.as_str() == name))
            .ok_or_else(|| UnknownSignal(Unknown::Name(name.into())))
    }
}

/// A number or a name that is not one of the [`Signal`]s: what converting one fails with.
///
/// ```
/// let err = "SIGFOO".parse::<fdserver::Signal>().unwrap_err();
/// assert_eq!(err.to_string(), "unknown signal name \"SIGFOO\" (expected a name such as \"SIGUSR1\")");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSignal(Unknown);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Unknown {
    Number(i32),
    Name(Box<str>),
}

impl fmt::Display for UnknownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Unknown::Number(n) => write!(
                f,
                "{n} is not the number of a standard Linux signal (1 to 31; real-time signals \
                 are not supported)"
            ),
            Unknown::Name(name) => write!(
                f,
                "unknown signal name {name:?} (expected a name such as \"SIGUSR1\")"
            ),
        }
    }
}

impl std::error::Error for UnknownSignal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_round_trip() {
        let mut numbers: Vec<i32> = Signal::ALL.iter().map(|s| s.as_raw()).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), Signal::ALL.len());
        assert!(numbers.iter().all(|n| (1..=31).contains(n)));
        for &s in Signal::ALL {
            assert_eq!(Signal::try_from(s.as_raw()), Ok(s));
            assert_eq!(s.to_string().parse::<Signal>(), Ok(s));
        }
        assert!(Signal::try_from(0).is_err());
        assert!(Signal::try_from(32).is_err());
        assert_eq!("SIGPOLL".parse::<Signal>(), Ok(Signal::SIGIO));
    }
}
