//! [`Signal`]: the signals a server handles.

/// A signal a server can handle (re-exported from `nix`).
pub use nix::sys::signal::Signal;
