//! Identity: the user, group and supplementary groups the server runs as.
//!
//! The only safe order is groups, then gid, then uid: each call needs a capability
//! (`CAP_SETGID`, `CAP_SETUID`) that the later ones take away, and a uid changed first would
//! leave the process unable to drop root's groups. `setresuid`/`setresgid` set the real,
//! effective and saved ids together, so no saved root id remains to switch back to; glibc's
//! wrappers apply them to every thread (the sandbox requires one anyway).

use std::ffi::CString;

use super::{fail, privileges, Caller, Fail, Layer};
use crate::error::Error;

/// The user and groups a sandboxed server runs as. Changing them needs root in the parent.
///
/// Supplementary groups are cleared unless given with [`groups`](Self::groups).
///
/// ```
/// use fdserver::sandbox::Identity;
///
/// let by_name = Identity::user("nobody");                      // uid and group from /etc/passwd
/// let by_ids = Identity::new(65534, 65534).groups([65533]);    // explicit ids, one extra group
/// # let _ = (by_name, by_ids);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    user: User,
    group: Option<u32>,
    groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum User {
    Id(u32, u32),
    Name(String),
}

impl Identity {
    /// Runs as `uid`, with primary group `gid`.
    pub fn new(uid: u32, gid: u32) -> Self {
        Identity {
            user: User::Id(uid, gid),
            group: None,
            groups: Vec::new(),
        }
    }

    /// Runs as the user called `name`, with its primary group, both looked up in the user
    /// database (`getpwnam_r`) by `start`, in the parent.
    pub fn user(name: impl Into<String>) -> Self {
        Identity {
            user: User::Name(name.into()),
            group: None,
            groups: Vec::new(),
        }
    }

    /// Uses `gid` as the primary group instead.
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self
    }

    /// Sets the supplementary groups (default: none).
    pub fn groups(mut self, groups: impl IntoIterator<Item = u32>) -> Self {
        self.groups = groups.into_iter().collect();
        self
    }

    /// The numeric ids, checked against what the parent may do.
    pub(crate) fn resolve(&self, me: &Caller) -> Result<Ids, Error> {
        let (uid, mut gid) = match &self.user {
            User::Id(u, g) => (*u, *g),
            User::Name(name) => lookup(name)?,
        };
        if let Some(g) = self.group {
            gid = g;
        }
        if !me.has_cap(privileges::CAP_SETUID) || !me.has_cap(privileges::CAP_SETGID) {
            return Err(fail(
                Layer::Identity,
                format!(
                    "running the server as uid {uid}, gid {gid} needs CAP_SETUID and CAP_SETGID, \
                     which this process (uid {}) lacks: start it as root",
                    me.uid
                ),
            ));
        }
        let mut groups = self.groups.clone();
        groups.sort_unstable();
        groups.dedup();
        let scratch = vec![0; groups.len() + 1];
        Ok(Ids {
            uid,
            gid,
            groups,
            scratch,
        })
    }
}

/// `getpwnam_r`: the uid and primary gid of `name`.
fn lookup(name: &str) -> Result<(u32, u32), Error> {
    let cname = CString::new(name).map_err(|_| {
        fail(
            Layer::Identity,
            format!("user name {name:?} contains a NUL byte"),
        )
    })?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid out-value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` holds `buf.len()` bytes.
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            let len = buf.len() * 2;
            buf.resize(len, 0);
            continue;
        }
        if r != 0 {
            return Err(fail(
                Layer::Identity,
                format!(
                    "looking up user {name:?}: {}",
                    std::io::Error::from_raw_os_error(r)
                ),
            ));
        }
        if result.is_null() {
            return Err(fail(
                Layer::Identity,
                format!("there is no user {name:?} in the user database"),
            ));
        }
        return Ok((pwd.pw_uid, pwd.pw_gid));
    }
}

/// The resolved identity, with room to read the groups back in the child without allocating.
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Sorted, without duplicates.
    pub(crate) groups: Vec<u32>,
    scratch: Vec<libc::gid_t>,
}

/// Sets the groups, then the gid, then the uid.
pub(crate) fn apply(ids: &Ids) -> Result<(), Fail> {
    // SAFETY: the pointer and length describe `ids.groups` (an empty list is a valid argument).
    if unsafe { libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) } != 0 {
        return Err(Fail::os(Layer::Identity, "setgroups"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresgid(ids.gid, ids.gid, ids.gid) } != 0 {
        return Err(Fail::os(Layer::Identity, "setresgid"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresuid(ids.uid, ids.uid, ids.uid) } != 0 {
        return Err(Fail::os(Layer::Identity, "setresuid"));
    }
    Ok(())
}

/// Checks that the ids are what was asked, and that the change cannot be undone. Runs after
/// every capability is gone.
pub(crate) fn verify(ids: &mut Ids) -> Result<(), Fail> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } != 0 || [r, e, s] != [ids.uid; 3] {
        return Err(Fail::check(
            Layer::Identity,
            "the real, effective and saved user ids are not all the requested uid",
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::getresgid(&mut r, &mut e, &mut s) } != 0 || [r, e, s] != [ids.gid; 3] {
        return Err(Fail::check(
            Layer::Identity,
            "the real, effective and saved group ids are not all the requested gid",
        ));
    }
    let scratch = &mut ids.scratch;
    // SAFETY: `scratch` has room for `scratch.len()` gids.
    let n = unsafe { libc::getgroups(scratch.len() as libc::c_int, scratch.as_mut_ptr()) };
    if n < 0 || n as usize != ids.groups.len() {
        return Err(Fail::check(
            Layer::Identity,
            "the supplementary groups are not the requested ones",
        ));
    }
    let got = &mut scratch[..n as usize];
    got.sort_unstable();
    if got != ids.groups.as_slice() {
        return Err(Fail::check(
            Layer::Identity,
            "the supplementary groups are not the requested ones",
        ));
    }
    // Going back must be impossible: no saved root id, no CAP_SETUID/CAP_SETGID.
    if ids.uid != 0 {
        // SAFETY: plain integer argument; expected to fail.
        let r = unsafe { libc::setuid(0) };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            return Err(Fail::check(
                Layer::Identity,
                "setuid(0) did not fail with EPERM after the user was changed",
            ));
        }
    }
    if ids.gid != 0 {
        // SAFETY: plain integer argument; expected to fail.
        let r = unsafe { libc::setgid(0) };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            return Err(Fail::check(
                Layer::Identity,
                "setgid(0) did not fail with EPERM after the group was changed",
            ));
        }
    }
    Ok(())
}
