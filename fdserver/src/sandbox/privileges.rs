//! Privileges: `no_new_privs` and capabilities (effective, permitted, inheritable, ambient and
//! the bounding set), with the raw `capget`/`capset`/`prctl` calls they need.
//!
//! Every one of these is per thread in the kernel; the sandbox runs them on the server's only
//! thread, and threads started later inherit the result.

use super::{Fail, Layer};

// Capability numbers (linux/capability.h), which the libc crate does not define.
pub(crate) const CAP_SETGID: u32 = 6;
pub(crate) const CAP_SETUID: u32 = 7;
pub(crate) const CAP_SETPCAP: u32 = 8;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_SYS_RESOURCE: u32 = 24;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit halves.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> std::io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a version-3 header reads two CapData structs into `data`.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(data)
}

/// This thread's effective capabilities, as a 64-bit set.
pub(crate) fn effective() -> std::io::Result<u64> {
    let data = capget()?;
    Ok(u64::from(data[0].effective) | u64::from(data[1].effective) << 32)
}

/// Sets `no_new_privs` and checks that it is set.
pub(crate) fn set_no_new_privs() -> Result<(), Fail> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Fail::os(Layer::NoNewPrivs, "prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
        return Err(Fail::check(
            Layer::NoNewPrivs,
            "no_new_privs is not set after PR_SET_NO_NEW_PRIVS",
        ));
    }
    Ok(())
}

/// Clears the ambient set, and empties the bounding set if `bounding` (needs `CAP_SETPCAP`, so
/// it runs before the identity change).
pub(crate) fn drop_ambient_and_bounding(bounding: bool) -> Result<(), Fail> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel before 4.3, which has no ambient set to clear.
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(Fail::os(Layer::Capabilities, "clearing the ambient set"));
    }
    if !bounding {
        return Ok(());
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } {
            0 => continue,
            1 => {}
            // EINVAL: past the last capability this kernel knows.
            _ => break,
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return Err(Fail::os(
                Layer::Capabilities,
                "emptying the bounding set (PR_CAPBSET_DROP)",
            ));
        }
    }
    Ok(())
}

/// Empties the effective, permitted and inheritable sets.
pub(crate) fn drop_all() -> Result<(), Fail> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset with a version-3 header reads two CapData structs from `data`.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r != 0 {
        return Err(Fail::os(Layer::Capabilities, "capset"));
    }
    Ok(())
}

/// Checks that no capability is left: none effective, permitted or inheritable (so none
/// ambient), and that `setgroups` is refused.
pub(crate) fn verify_none() -> Result<(), Fail> {
    match capget() {
        Ok(data) if data == [CapData::default(); 2] => {}
        Ok(_) => {
            return Err(Fail::check(
                Layer::Capabilities,
                "capabilities are left in the effective, permitted or inheritable set",
            ))
        }
        Err(e) => {
            return Err(Fail::errno(
                Layer::Capabilities,
                "capget",
                e.raw_os_error().unwrap_or(libc::EIO),
            ))
        }
    }
    // The ambient set needs no check: the kernel keeps it within permitted ∩ inheritable, both
    // empty now. The bounding set was emptied one PR_CAPBSET_DROP at a time, each checked.
    // Without CAP_SETGID even clearing the groups must be refused.
    // SAFETY: an empty group list is a valid argument; expected to fail.
    let r = unsafe { libc::setgroups(0, std::ptr::null()) };
    if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return Err(Fail::check(
            Layer::Capabilities,
            "setgroups did not fail with EPERM after every capability was dropped",
        ));
    }
    Ok(())
}

/// The parent-death signal currently armed (0: none).
pub(crate) fn parent_death_signal() -> libc::c_int {
    let mut sig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer.
    unsafe {
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut sig as *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    sig
}

/// Re-arms the parent-death signal that a change of user cleared.
pub(crate) fn restore_parent_death_signal(sig: libc::c_int) -> Result<(), Fail> {
    if sig == 0 {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(Fail::os(
            Layer::Identity,
            "re-arming the parent-death signal after the change of user",
        ));
    }
    Ok(())
}
