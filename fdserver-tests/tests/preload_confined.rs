//! The re-review of the preloader (findings N1, N2, N3): the server, not the client, decides
//! whether a process is confined where the server is not. Landlock shows nowhere in `/proc`; a
//! process that speaks the protocol itself (skipping the client's own checks) must get no
//! command run, no template started and no server stopped. A read-only preloader directory
//! runs the command in-process. A server started inside a Landlock domain is replaced by the
//! next normal command.
//!
//! The lying client is this test binary again ([`lying_client_helper`], which does nothing
//! unless `PRELOAD_LIAR_SOCK` is set), run in a Landlock domain.

mod preload_common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fdserver::Channel;
use preload_common::*;

/// `LANDLOCK_ACCESS_FS_MAKE_REG`: the one right the test domains handle (creating regular
/// files), so that everything else a process does is allowed.
const MAKE_REG: u64 = 1 << 8;

/// Whether the kernel offers Landlock (its ABI version, asked with a null ruleset).
fn landlock_available(test: &str) -> bool {
    const VERSION: u32 = 1;
    // SAFETY: the documented ABI query: null attributes, size 0, the version flag.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            VERSION,
        )
    };
    if abi < 1 {
        eprintln!("{test}: skipped: this kernel has no Landlock");
    }
    abi >= 1
}

/// `struct landlock_path_beneath_attr`.
#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// Puts `c` in a Landlock domain, applied before exec, that forbids creating regular files
/// except beneath `writable`; with `no_new_privs` (as an unprivileged process must), or
/// without (root may).
fn landlocked(c: &mut Command, nnp: bool, writable: Option<&Path>) {
    let beneath: Option<OwnedFd> = writable.map(|p| {
        std::fs::File::open(p)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
            .into()
    });
    let beneath = beneath.map(|fd| {
        let raw = fd.as_raw_fd();
        std::mem::forget(fd); // closed at exec (close-on-exec) in the child; leaked here
        raw
    });
    // SAFETY: raw syscalls and prctl with valid arguments; async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            let handled: u64 = MAKE_REG;
            let fd = libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &handled as *const u64,
                std::mem::size_of::<u64>(),
                0u32,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(dir) = beneath {
                let rule = PathBeneath {
                    allowed_access: MAKE_REG,
                    parent_fd: dir,
                };
                const RULE_PATH_BENEATH: u32 = 1;
                if libc::syscall(
                    libc::SYS_landlock_add_rule,
                    fd,
                    RULE_PATH_BENEATH,
                    &rule as *const PathBeneath,
                    0u32,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if nnp && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd as i32);
            Ok(())
        });
    }
}

fn verbose(c: &mut Command) {
    c.env("FDSERVER_PRELOAD_VERBOSE", "1");
}

/// `c` runs with `no_new_privs` (and so does a server it starts).
fn with_nnp(c: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A directory outside the test's private one (which some domains may write to), removed when
/// dropped.
struct Outside(PathBuf);

impl Outside {
    fn new(pl: &Pl) -> Outside {
        let p = PathBuf::from(format!("{}-out", pl.dir.display()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::DirBuilder::new().mode(0o700).create(&p).unwrap();
        Outside(p)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Not a test on its own: the lying client of the tests below, run as their child (this binary
/// again, in a Landlock domain) when `PRELOAD_LIAR_SOCK` is set. It speaks the protocol itself:
/// it skips every check the real client makes, tries to read the server's proof (and sends a
/// made-up one when it may not), and asks, by `PRELOAD_LIAR_MODE`, to `run` `create
/// $PRELOAD_LIAR_FILE` in a template of key `evil` (which does not exist yet: the server would
/// start one with the liar's environment), or to `stop` the server. It prints what it learns on
/// lines starting with `LIAR `.
#[test]
fn lying_client_helper() {
    let Some(sock) = std::env::var_os("PRELOAD_LIAR_SOCK") else {
        return;
    };
    let mode = std::env::var("PRELOAD_LIAR_MODE").unwrap();
    let mut ch = Channel::from(UnixStream::connect(sock).unwrap());
    ch.set_timeout(Some(RUN_LIMIT));
    let hello = ch.read_strings().unwrap().unwrap();
    let proof = match proof(ch.as_fd(), &hello) {
        Ok(p) => {
            println!("LIAR proof read");
            p
        }
        Err(e) => {
            println!("LIAR proof unreadable: {e}");
            b"0123456789abcdef0123456789abcdef".to_vec()
        }
    };
    if mode == "stop" {
        ch.write_array([b"stop".as_slice(), &proof]).unwrap();
    } else {
        let file = std::env::var("PRELOAD_LIAR_FILE").unwrap();
        ch.write_array([b"run".as_slice(), b"evil", &proof])
            .unwrap();
        let argv = format!("preload-app\0create\0{file}\0").into_bytes();
        // The environment a template of `evil` would preload with, and the loader variables of
        // the server's (cargo's `LD_LIBRARY_PATH`), so that nothing but the sandbox differs.
        let mut env =
            b"PATH=/usr/bin:/bin\0APP_ENV=evil\0APP_CONF=chosen-by-the-sandbox\0".to_vec();
        for (k, v) in std::env::vars_os() {
            let k = k.as_encoded_bytes();
            if k.starts_with(b"LD_") || k == b"GLIBC_TUNABLES" || k.starts_with(b"MALLOC_") {
                env.extend_from_slice(k);
                env.push(b'=');
                env.extend_from_slice(v.as_encoded_bytes());
                env.push(0);
            }
        }
        let mut body = Vec::new();
        body.extend_from_slice(&(argv.len() as u32).to_le_bytes());
        body.extend_from_slice(&argv);
        body.extend_from_slice(&(env.len() as u32).to_le_bytes());
        body.extend_from_slice(&env);
        let mut req = (body.len() as u32).to_le_bytes().to_vec();
        req.extend_from_slice(&body);
        let null = std::fs::File::open("/dev/null").unwrap();
        let root = std::fs::File::open("/").unwrap();
        let fds = [null.as_raw_fd(); 3];
        let fds = [fds[0], fds[1], fds[2], root.as_raw_fd()];
        // The server may have hung up already (it refuses at once): not sending is fine.
        let mut iov = libc::iovec {
            iov_base: req.as_ptr() as *mut libc::c_void,
            iov_len: req.len(),
        };
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(&fds) as u32) } as usize;
        let mut cmsg = vec![0u64; space.div_ceil(8)];
        // SAFETY: an all-zero msghdr is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes of 8-aligned storage, enough for one
        // header and four ints; msg describes live buffers during the call.
        let sent = unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(&fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(hdr).cast(), fds.len());
            libc::sendmsg(ch.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        println!("LIAR sent {sent}");
    }
    loop {
        match ch.read_strings() {
            Ok(Some(reply)) => println!("LIAR reply {reply:?}"),
            Ok(None) => break,
            Err(e) => {
                println!("LIAR read: {e}");
                break;
            }
        }
    }
}

/// Runs the lying client (see [`lying_client_helper`]) against `pl`'s server, in a Landlock
/// domain (`nnp`: with `no_new_privs`); what it printed.
fn lie(pl: &Pl, mode: &str, file: &Path, nnp: bool) -> Out {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "lying_client_helper",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PRELOAD_LIAR_SOCK", pl.files().sock)
    .env("PRELOAD_LIAR_MODE", mode)
    .env("PRELOAD_LIAR_FILE", file)
    .stdin(Stdio::null());
    landlocked(&mut c, nnp, None);
    let out = output(c, RUN_LIMIT);
    assert!(out.status.success(), "the lying client: {out:?}");
    out
}

/// N1. A process in a Landlock domain that speaks the protocol itself (so no client-side check
/// runs) gets no command run outside its domain, and no template started with its
/// environment: it cannot read the server's proof (`/proc/<server>/fd/<n>` needs a ptrace read
/// check, which Landlock denies out of the domain), and the server refuses it. Two cases the
/// template cannot see from `/proc`: an all-`no_new_privs` session (the server has it too),
/// and, as root, a domain made without `no_new_privs`.
#[test]
fn a_lying_landlocked_client_gets_nothing_run() {
    let _wd = wd("a_lying_landlocked_client_gets_nothing_run");
    if !landlock_available("a_lying_landlocked_client_gets_nothing_run") {
        return;
    }
    let root = as_root("a_lying_landlocked_client_gets_nothing_run (without no_new_privs)");
    for nnp in [true, false] {
        if !nnp && !root {
            continue;
        }
        let pl = Pl::new("liar");
        let out_dir = Outside::new(&pl);
        // The server starts with no_new_privs in the all-NNP case.
        let mut first = pl.cmd(["echo", "warm"]);
        if nnp {
            with_nnp(&mut first);
        }
        assert_eq!(output(first, RUN_LIMIT).stdout, "warm\n");
        let server = pl.server().server;

        let file = out_dir.0.join("made-by-the-liar");
        let out = lie(&pl, "run", &file, nnp);
        assert!(
            out.stdout.contains("LIAR proof unreadable"),
            "the domain may not read the proof: {out:?}"
        );
        assert!(
            !file.exists(),
            "the command ran outside the sandbox (no_new_privs {nnp}): {out:?}"
        );
        assert!(
            out.stdout.contains("\"confined\""),
            "refused as confined (the real client would run it in-process): {out:?}"
        );
        let st = pl.server();
        assert_eq!(st.server, server, "the same server");
        assert!(
            !st.templates.iter().any(|(k, _)| k == "evil"),
            "no template started for the liar: {:?}",
            st.templates
        );
        assert!(
            pl.log()
                .contains("refused a command from a client that gave no proof"),
            "{}",
            pl.log()
        );

        // Nor may it stop the server by asking (signals are the kernel's business: a domain
        // with Landlock's signal scoping may not send them either).
        let out = lie(&pl, "stop", &file, nnp);
        assert!(out.stdout.contains("\"confined\""), "{out:?}");
        assert_eq!(pl.server().server, server, "not stopped: {out:?}");

        // An honest command still runs preloaded.
        let mut c = pl.cmd(["echo", "honest"]);
        if nnp {
            with_nnp(&mut c);
        }
        verbose(&mut c);
        let out = output(c, RUN_LIMIT);
        assert_eq!(out.stdout, "honest\n", "{out:?}");
        assert!(out.stderr.contains("running preloaded"), "{out:?}");
    }
}

/// N3. The real client in a Landlock domain may not stop or restart the server: a server it
/// started again would run in its domain, where the user's other commands cannot use it. It
/// says so and exits 1; the server keeps serving.
#[test]
fn a_landlocked_client_may_not_stop_or_restart_the_server() {
    let _wd = wd("a_landlocked_client_may_not_stop_or_restart_the_server");
    if !landlock_available("a_landlocked_client_may_not_stop_or_restart_the_server") {
        return;
    }
    let pl = Pl::new("llstop");
    pl.ok(&["echo", "warm"]);
    let server = pl.server().server;
    for what in ["stop", "restart"] {
        let mut c = pl.cmd(["--preloader", what]);
        landlocked(&mut c, true, None);
        let out = output(c, RUN_LIMIT);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(
            out.stderr.contains("may not stop the preloader server"),
            "{what}: {out:?}"
        );
        assert_eq!(pl.server().server, server, "{what}: still serving");
    }
    assert_eq!(pl.ok(&["echo", "after"]), "after\n");
}

/// N2. A preloader directory this process may not write to (a sandbox that allows writing only
/// elsewhere; as root also a read-only bind mount), with no server running: the command runs
/// in-process, as with `FDSERVER_PRELOAD=0`, and says why under `FDSERVER_PRELOAD_VERBOSE`; it
/// used to fail ("cannot open the preloader's start lock", exit 1).
#[test]
fn a_read_only_preloader_directory_runs_the_command_in_process() {
    let _wd = wd("a_read_only_preloader_directory_runs_the_command_in_process");
    if landlock_available("a_read_only_preloader_directory_runs_the_command_in_process (Landlock)")
    {
        let mut pl = Pl::new("rodir");
        // The test application's preload appends to a counter: one that exists (the domain
        // forbids creating files), outside the preloader's directory.
        let out_dir = Outside::new(&pl);
        let counter = out_dir.0.join("counter");
        std::fs::write(&counter, "").unwrap();
        pl.set("APP_COUNTER", &counter);
        let mut c = pl.cmd(["echo", "in-landlock"]);
        landlocked(&mut c, true, None);
        verbose(&mut c);
        let out = output(c, RUN_LIMIT);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, "in-landlock\n");
        assert!(
            out.stderr.contains("running in-process") && out.stderr.contains("start lock"),
            "{out:?}"
        );
        assert!(pl.status().is_none(), "no server was started");
    }
    if as_root("a_read_only_preloader_directory_runs_the_command_in_process (bind mount)") {
        let mut pl = Pl::new("robind");
        let out_dir = Outside::new(&pl);
        pl.set("APP_COUNTER", out_dir.0.join("counter"));
        let dir = std::ffi::CString::new(pl.dir.as_os_str().as_encoded_bytes()).unwrap();
        let mut c = pl.cmd(["echo", "read-only"]);
        verbose(&mut c);
        // SAFETY: unshare and mount with valid arguments; async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                let none = std::ptr::null::<libc::c_char>();
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        none,
                        c"/".as_ptr(),
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        dir.as_ptr(),
                        dir.as_ptr(),
                        none,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        none,
                        dir.as_ptr(),
                        none,
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = output(c, RUN_LIMIT);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, "read-only\n");
        assert!(
            out.stderr.contains("running in-process") && out.stderr.contains("Read-only"),
            "{out:?}"
        );
        assert!(pl.status().is_none(), "no server was started");
    }
}

/// N3. A server started by a command inside a Landlock domain (made without `no_new_privs`, as
/// root may) may not inspect the user's normal commands, which used to run in-process until
/// it exited (up to the idle timeout). A normal command proves it may inspect that server, so
/// the server is the confined one: the command replaces it and runs preloaded. For a key with
/// a template, the template finds it so; for a new key, the server does, and preloads nothing.
#[test]
fn a_server_started_in_a_landlock_domain_is_replaced() {
    let _wd = wd("a_server_started_in_a_landlock_domain_is_replaced");
    if !landlock_available("a_server_started_in_a_landlock_domain_is_replaced")
        || !as_root("a_server_started_in_a_landlock_domain_is_replaced")
    {
        return;
    }
    let pl = Pl::new("llserver");
    let out_dir = Outside::new(&pl);
    for key in ["dev", "other"] {
        let mut c = pl.cmd(["echo", "first"]);
        landlocked(&mut c, false, Some(&pl.dir));
        let out = output(c, RUN_LIMIT);
        assert_eq!(out.stdout, "first\n", "{out:?}");
        let confined = pl.server().server;

        let file = out_dir.0.join(format!("made-{key}"));
        let mut c = pl.cmd(["create", file.to_str().unwrap()]);
        c.env("APP_ENV", key);
        verbose(&mut c);
        let out = output(c, RUN_LIMIT);
        assert!(out.status.success(), "{key}: {out:?}");
        assert!(file.exists(), "{key}");
        assert!(
            out.stderr.contains("replacing the preloader server")
                && !out.stderr.contains("in-process"),
            "{key}: {out:?}"
        );
        assert_ne!(pl.server().server, confined, "{key}: replaced");
        assert_gone(confined, "the server started in the domain");
        if key == "other" {
            // The confined server said so, and preloaded nothing for it.
            let log = pl.log();
            assert!(
                log.contains(&format!(
                    "[fdserver-preload {confined}] template \"other\" not started: this server \
                     is more confined than its client"
                )),
                "{log}"
            );
            assert!(
                !log.contains(&format!(
                    "[fdserver-preload {confined}] template \"other\" preloaded"
                )),
                "{log}"
            );
        }
        let mut c = pl.cmd(["echo", "again"]);
        c.env("APP_ENV", key);
        verbose(&mut c);
        let out = output(c, RUN_LIMIT);
        assert!(out.stderr.contains("running preloaded"), "{key}: {out:?}");
        pl.stop();
    }
}

/// `c` (and the server it may start, and that server's templates) runs under a seccomp filter
/// that makes `getsockopt(SO_PEERPIDFD)` fail as on a kernel before 6.5 (`ENOPROTOOPT`), with
/// `no_new_privs` (which an unprivileged filter needs). Every process of the test gets one
/// filter, so none is more confined than another.
#[cfg(target_arch = "x86_64")]
fn without_peerpidfd(c: &mut Command) {
    #[repr(C)]
    struct Insn {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct Prog {
        len: u16,
        filter: *const Insn,
    }
    // SAFETY: prctl with a valid program that outlives the call; async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            const LD_ABS_W: u16 = 0x20;
            const JEQ_K: u16 = 0x15;
            const RET_K: u16 = 0x06;
            const SO_PEERPIDFD: u32 = 77;
            let prog = [
                Insn {
                    code: LD_ABS_W,
                    jt: 0,
                    jf: 0,
                    k: 4,
                }, // arch
                Insn {
                    code: JEQ_K,
                    jt: 0,
                    jf: 5,
                    k: 0xc000_003e,
                }, // AUDIT_ARCH_X86_64
                Insn {
                    code: LD_ABS_W,
                    jt: 0,
                    jf: 0,
                    k: 0,
                }, // nr
                Insn {
                    code: JEQ_K,
                    jt: 0,
                    jf: 3,
                    k: libc::SYS_getsockopt as u32,
                },
                Insn {
                    code: LD_ABS_W,
                    jt: 0,
                    jf: 0,
                    k: 32,
                }, // args[2], low half
                Insn {
                    code: JEQ_K,
                    jt: 0,
                    jf: 1,
                    k: SO_PEERPIDFD,
                },
                Insn {
                    code: RET_K,
                    jt: 0,
                    jf: 0,
                    k: 0x0005_0000 | libc::ENOPROTOOPT as u32,
                },
                Insn {
                    code: RET_K,
                    jt: 0,
                    jf: 0,
                    k: 0x7fff_0000,
                }, // allow
            ];
            let fprog = Prog {
                len: prog.len() as u16,
                filter: prog.as_ptr(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, 2, &fprog as *const Prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// N4. Without `SO_PEERPIDFD` the template pins the client by the pid of `SO_PEERCRED` and
/// checks, through the kernel's socket diagnostics, that the process it judges holds the
/// client's end of the connection (a process whose pid was reused would not). A real client
/// does: its commands still run preloaded on such kernels (here simulated with a seccomp
/// filter).
#[cfg(target_arch = "x86_64")]
#[test]
fn without_peerpidfd_a_client_that_holds_its_connection_runs_preloaded() {
    let _wd = wd("without_peerpidfd_a_client_that_holds_its_connection_runs_preloaded");
    let pl = Pl::new("nopeerpidfd");
    for word in ["first", "second"] {
        let mut c = pl.cmd(["echo", word]);
        without_peerpidfd(&mut c);
        verbose(&mut c);
        let out = output(c, RUN_LIMIT);
        assert_eq!(out.stdout, format!("{word}\n"), "{out:?}");
        if word == "second" {
            assert!(out.stderr.contains("running preloaded"), "{out:?}");
        }
    }
}
