//! Names for [`io::ErrorKind`] on the wire (the `kind` detail of an `["error", "io", ...]` reply).
//!
//! The names are the kinds' names in snake case. Kinds that the oldest supported Rust cannot
//! name (stabilised in 1.83 and later) are recognised through an OS error number the standard
//! library maps to them, so the table works on every Rust version: on an older standard library
//! those numbers map to no stable kind and simply are not found.

use std::io::{self, ErrorKind};

/// Kinds that can be named on every supported Rust version.
const NAMED: &[(&str, ErrorKind)] = &[
    ("not_found", ErrorKind::NotFound),
    ("permission_denied", ErrorKind::PermissionDenied),
    ("connection_refused", ErrorKind::ConnectionRefused),
    ("connection_reset", ErrorKind::ConnectionReset),
    ("connection_aborted", ErrorKind::ConnectionAborted),
    ("not_connected", ErrorKind::NotConnected),
    ("addr_in_use", ErrorKind::AddrInUse),
    ("addr_not_available", ErrorKind::AddrNotAvailable),
    ("broken_pipe", ErrorKind::BrokenPipe),
    ("already_exists", ErrorKind::AlreadyExists),
    ("would_block", ErrorKind::WouldBlock),
    ("invalid_input", ErrorKind::InvalidInput),
    ("invalid_data", ErrorKind::InvalidData),
    ("timed_out", ErrorKind::TimedOut),
    ("write_zero", ErrorKind::WriteZero),
    ("interrupted", ErrorKind::Interrupted),
    ("unsupported", ErrorKind::Unsupported),
    ("unexpected_eof", ErrorKind::UnexpectedEof),
    ("out_of_memory", ErrorKind::OutOfMemory),
    ("other", ErrorKind::Other),
];

/// Newer kinds, each by an OS error number that the standard library maps to it.
const BY_ERRNO: &[(&str, i32)] = &[
    ("host_unreachable", libc::EHOSTUNREACH),
    ("network_unreachable", libc::ENETUNREACH),
    ("network_down", libc::ENETDOWN),
    ("not_a_directory", libc::ENOTDIR),
    ("is_a_directory", libc::EISDIR),
    ("directory_not_empty", libc::ENOTEMPTY),
    ("read_only_filesystem", libc::EROFS),
    ("stale_network_file_handle", libc::ESTALE),
    ("storage_full", libc::ENOSPC),
    ("not_seekable", libc::ESPIPE),
    ("quota_exceeded", libc::EDQUOT),
    ("file_too_large", libc::EFBIG),
    ("resource_busy", libc::EBUSY),
    ("executable_file_busy", libc::ETXTBSY),
    ("deadlock", libc::EDEADLK),
    ("crosses_devices", libc::EXDEV),
    ("too_many_links", libc::EMLINK),
    ("invalid_filename", libc::ENAMETOOLONG),
    ("argument_list_too_long", libc::E2BIG),
    ("in_progress", libc::EINPROGRESS),
];

fn errno_kind(errno: i32) -> ErrorKind {
    io::Error::from_raw_os_error(errno).kind()
}

/// Whether `errno` stands for a kind of its own (not the catch-all the standard library uses
/// for numbers it does not know).
fn distinct(errno: i32) -> bool {
    let kind = errno_kind(errno);
    // A standard library older than the kind maps the number to `Uncategorized` (unstable,
    // unnameable, shared by many numbers): only its `Debug` text tells.
    !NAMED.iter().any(|(_, k)| *k == kind) && format!("{kind:?}") != "Uncategorized"
}

/// The wire name of `kind` (`"other"` for kinds this table does not know).
pub(crate) fn name(kind: ErrorKind) -> &'static str {
    if let Some((name, _)) = NAMED.iter().find(|(_, k)| *k == kind) {
        return name;
    }
    BY_ERRNO
        .iter()
        .find(|(_, errno)| distinct(*errno) && errno_kind(*errno) == kind)
        .map_or("other", |(name, _)| name)
}

/// The kind a wire name stands for (`Other` for names this table does not know).
pub(crate) fn from_name(name: &str) -> ErrorKind {
    if let Some((_, kind)) = NAMED.iter().find(|(n, _)| *n == name) {
        return *kind;
    }
    BY_ERRNO
        .iter()
        .find(|(n, errno)| *n == name && distinct(*errno))
        .map_or(ErrorKind::Other, |(_, errno)| errno_kind(*errno))
}

/// Every wire name, for the docs' table and tests.
#[cfg(test)]
pub(crate) fn all_names() -> impl Iterator<Item = &'static str> {
    NAMED
        .iter()
        .map(|(n, _)| *n)
        .chain(BY_ERRNO.iter().map(|(n, _)| *n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for name in all_names() {
            let kind = from_name(name);
            if kind == ErrorKind::Other && name != "other" {
                // A kind this standard library does not have: it stays `other`.
                continue;
            }
            assert_eq!(super::name(kind), name, "{kind:?}");
        }
        assert_eq!(from_name("no such kind"), ErrorKind::Other);
        for errno in [
            libc::ENOENT,
            libc::EACCES,
            libc::EISDIR,
            libc::ENOSPC,
            libc::EEXIST,
        ] {
            let kind = errno_kind(errno);
            assert_eq!(from_name(name(kind)), kind, "errno {errno}");
        }
    }
}
