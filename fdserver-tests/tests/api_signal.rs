//! `fdserver::Signal` is fdserver's own type (issue 10, item 13): it was `nix`'s, re-exported,
//! which made nix's major version part of fdserver's public API. User code written against the
//! re-export keeps working: same variant names, `as i32`, `as_str()`.

use fdserver::{Signal, UnknownSignal};

#[test]
fn signal_is_fdserver_own_type() {
    // Was "nix::sys::signal::Signal".
    let name = std::any::type_name::<Signal>();
    assert!(name.starts_with("fdserver::"), "{name}");
    assert!(std::any::type_name::<UnknownSignal>().starts_with("fdserver::"));
}

#[test]
fn signal_converts_to_and_from_numbers_and_names() {
    assert_eq!(Signal::SIGUSR1 as i32, libc::SIGUSR1);
    assert_eq!(i32::from(Signal::SIGTERM), libc::SIGTERM);
    assert_eq!(Signal::SIGKILL.as_raw(), libc::SIGKILL);
    assert_eq!(Signal::try_from(libc::SIGHUP), Ok(Signal::SIGHUP));
    assert_eq!(Signal::from_raw(libc::SIGCHLD), Some(Signal::SIGCHLD));
    assert_eq!(Signal::from_raw(0), None);

    let err = Signal::try_from(libc::SIGRTMIN()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not the number of a standard Linux signal (1 to 31; real-time signals are \
             not supported)",
            libc::SIGRTMIN()
        )
    );

    assert_eq!(Signal::SIGWINCH.to_string(), "SIGWINCH");
    assert_eq!(Signal::SIGWINCH.as_str(), "SIGWINCH");
    assert_eq!("SIGUSR2".parse::<Signal>(), Ok(Signal::SIGUSR2));
    assert_eq!("SIGIOT".parse::<Signal>(), Ok(Signal::SIGABRT));
    assert_eq!(Signal::SIGPOLL, Signal::SIGIO);
    assert!("sigusr2".parse::<Signal>().is_err());

    // Every standard signal number maps to exactly one variant and back.
    for n in 1..=31 {
        let s = Signal::try_from(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(s as i32, n);
        assert_eq!(s.as_str().parse::<Signal>(), Ok(s));
    }
    assert_eq!(Signal::ALL.len(), 31);
}
