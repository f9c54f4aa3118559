//! Namespaces: `unshare(2)` into new ones, before any privilege is dropped.

use std::fmt;

use super::{fail, privileges, write_small_file, Caller, Fail, Layer};
use crate::error::Error;

/// A new namespace for a sandboxed server.
///
/// | namespace | the server then | needs |
/// |---|---|---|
/// | `Network` | sees only a loopback interface, down: every `connect`/`bind` on IP fails (`ENETUNREACH`, `EADDRNOTAVAIL`); abstract UNIX sockets of the host are out of reach | root (`CAP_SYS_ADMIN`), or `User` |
/// | `Ipc` | cannot reach the host's System V shared memory, semaphores and message queues, nor POSIX message queues | root (`CAP_SYS_ADMIN`), or `User` |
/// | `User` | runs in a user namespace of its own, mapping only the parent's uid and gid to themselves; this is what lets an unprivileged parent create the other two | unprivileged user namespaces enabled (`kernel.unprivileged_userns_clone`, AppArmor on Ubuntu), and no [`Identity`](super::Identity) |
///
/// Not offered, because they protect nothing for a server on their own: a mount namespace (it
/// would need a new root to hide anything; Landlock restricts the filesystem instead), a PID
/// namespace (it applies to the server's children only; forbid those with
/// [`Preset::NoNewProcesses`](super::Preset::NoNewProcesses)), UTS, cgroup and time namespaces.
///
/// Creating a network namespace costs the kernel noticeably more than the other layers (see
/// BENCHMARKS.md), and its teardown happens asynchronously after the server exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Namespace {
    /// `CLONE_NEWNET`: no network.
    Network,
    /// `CLONE_NEWIPC`: no System V or POSIX message-queue IPC with the host.
    Ipc,
    /// `CLONE_NEWUSER`: a user namespace mapping the parent's own ids.
    User,
}

impl Namespace {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Namespace::Network => "network",
            Namespace::Ipc => "ipc",
            Namespace::User => "user",
        }
    }

    fn flag(self) -> libc::c_int {
        match self {
            Namespace::Network => libc::CLONE_NEWNET,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::User => libc::CLONE_NEWUSER,
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `unshare` call, and the id maps to write after it for a user namespace.
pub(crate) struct Unshare {
    flags: libc::c_int,
    maps: Option<(Vec<u8>, Vec<u8>)>,
}

pub(crate) fn prepare(list: &[Namespace], me: &Caller) -> Result<Option<Unshare>, Error> {
    if list.is_empty() {
        return Ok(None);
    }
    let user = list.contains(&Namespace::User);
    if !user && !me.has_cap(privileges::CAP_SYS_ADMIN) {
        let names: Vec<&str> = list.iter().map(|n| n.as_str()).collect();
        return Err(fail(
            Layer::Namespaces,
            format!(
                "creating a {} namespace needs CAP_SYS_ADMIN, which this process (uid {}) lacks: \
                 start the server as root, or add Namespace::User (where unprivileged user \
                 namespaces are enabled)",
                names.join(" and "),
                me.uid
            ),
        ));
    }
    let flags = list.iter().fold(0, |f, n| f | n.flag());
    let maps = user.then(|| {
        (
            format!("{0} {0} 1\n", me.uid).into_bytes(),
            format!("{0} {0} 1\n", me.gid).into_bytes(),
        )
    });
    Ok(Some(Unshare { flags, maps }))
}

impl Unshare {
    pub(crate) fn apply(&self) -> Result<(), Fail> {
        // SAFETY: unshare takes flags only. With CLONE_NEWUSER the user namespace is created
        // first and owns the others, so they need no privilege outside it.
        if unsafe { libc::unshare(self.flags) } != 0 {
            return Err(Fail::os(Layer::Namespaces, "unshare"));
        }
        if let Some((uid_map, gid_map)) = &self.maps {
            // A process that changed its ids (a parent that dropped root) is not dumpable, and
            // its /proc/self files then belong to root: it could not write its own maps. It is
            // made dumpable for these three writes only (the kernel's rule for who may write
            // them is unchanged), then restored.
            // SAFETY: prctl with integer arguments only.
            let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
            if dumpable == 0 {
                // SAFETY: as above.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
            }
            let written = write_maps(uid_map, gid_map);
            if dumpable == 0 {
                // SAFETY: as above.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
            }
            written?;
        }
        Ok(())
    }
}

fn write_maps(uid_map: &[u8], gid_map: &[u8]) -> Result<(), Fail> {
    // Writing a gid map without CAP_SETGID outside requires setgroups to be denied.
    write_small_file(c"/proc/self/setgroups", b"deny")
        .map_err(|e| Fail::errno(Layer::Namespaces, "writing /proc/self/setgroups", e))?;
    write_small_file(c"/proc/self/uid_map", uid_map)
        .map_err(|e| Fail::errno(Layer::Namespaces, "writing /proc/self/uid_map", e))?;
    write_small_file(c"/proc/self/gid_map", gid_map)
        .map_err(|e| Fail::errno(Layer::Namespaces, "writing /proc/self/gid_map", e))
}
