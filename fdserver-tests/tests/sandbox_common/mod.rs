//! Helpers shared by the `sandbox_*` test binaries (issue 15): a server that tries forbidden
//! things on request and reports the errno, and checks that a sandboxed server keeps serving.
#![allow(dead_code)]

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use fdserver::sandbox::Sandbox;
use fdserver::{Context, Error, Message, MessageBuf, RemoteError, Server, ServerHandle, Signal};
use fdserver_tests::{pipe, probe_handle, ProbeState};

/// A server that tries what a sandbox forbids, on request. Each "try" replies `["ok", n]`,
/// where `n` is 0 on success and the errno otherwise:
///
/// | request | tries |
/// |---|---|
/// | `open path` | `open(path, O_RDONLY)` |
/// | `create path` | `open(path, O_WRONLY \| O_CREAT \| O_TRUNC)` |
/// | `grow path n` | creates `path` and writes `n` bytes to it |
/// | `socket family` | `socket(family, SOCK_STREAM)` |
/// | `connect_tcp port` | connecting to 127.0.0.1:`port` |
/// | `connect_abstract name` | connecting to the abstract UNIX socket `@name` |
/// | `exec` | `execve("/bin/true")` |
/// | `fork` | `fork` (the child exits at once and is reaped) |
/// | `clone3` | a new process with the raw `clone3` system call (likewise) |
/// | `thread` | starting and joining a thread |
/// | `alloc n` | `Vec::try_reserve_exact(n)` (ENOMEM on failure) |
/// | `setuid n`, `setgid n` | `setuid(n)`, `setgid(n)` |
/// | `kill pid` | `kill(pid, 0)` |
/// | `dup_many n` | `dup` of the socket `n` times (all closed again); replies the errno and how many worked |
/// | `rlimit which` | `["ok", soft, hard]` of `as`, `nofile`, `cpu`, `fsize` or `nproc` |
/// | `ids` | `["ok", "ruid euid suid", "rgid egid sgid", "groups"]` |
/// | `caps` | `["ok", effective, permitted, inheritable (hex), bounding-set count, ambient count, no_new_privs]` |
/// | `pdeathsig` | `["ok", the parent-death signal]` |
/// | `io_uring` | `io_uring_setup` |
/// | `uname` | `uname` |
/// | `shmget key` | looking up the System V shared memory segment `key` |
/// | `spin` | replies `["ok"]`, then burns CPU forever |
///
/// Anything else goes to the probe protocol (`echo`, `fd_back`, `fd_write`, `scalar_echo`, ...;
/// see `fdserver_tests::probe_handle`). SIGUSR1 is handled (counted; `count` tells).
#[derive(Debug, Clone, Default)]
pub struct Jail {
    pub sandbox: Option<Sandbox>,
    /// `initialize_server` starts a thread that waits forever.
    pub thread_in_init: bool,
    /// `initialize_server` arms this parent-death signal.
    pub death_signal: Option<i32>,
    /// Started on a `SOCK_STREAM` pair (`Builder::seqpacket(false)`).
    pub stream: bool,
    /// `initialize_server` installs a seccomp filter of its own that fails these system calls
    /// with `EPERM` (see [`deny_on_this_thread`]).
    pub deny_in_init: Vec<libc::c_long>,
    pub state: ProbeState,
}

impl Jail {
    pub fn new(sandbox: Sandbox) -> Jail {
        Jail {
            sandbox: Some(sandbox),
            ..Jail::default()
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn result(r: libc::c_int) -> String {
    if r < 0 { errno() } else { 0 }.to_string()
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

impl Server for Jail {
    type Client = ServerHandle;
    const SIGNALS: &'static [Signal] = &[Signal::SIGUSR1];

    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        let arg = |i: usize| msg.str(i).map(str::to_owned);
        let num = |i: usize| -> Result<i64, RemoteError> {
            msg.str(i)?.parse().map_err(RemoteError::bad_arguments)
        };
        let out: Vec<String> = match msg.name() {
            b"open" => {
                let path = cstr(&arg(1)?);
                // SAFETY: a NUL-terminated path; the descriptor is closed at once.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                let r = result(fd);
                if fd >= 0 {
                    // SAFETY: opened above.
                    unsafe { libc::close(fd) };
                }
                vec![r]
            }
            b"create" => {
                let path = cstr(&arg(1)?);
                // SAFETY: as above.
                let fd = unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                let r = result(fd);
                if fd >= 0 {
                    // SAFETY: opened above.
                    unsafe { libc::close(fd) };
                }
                vec![r]
            }
            b"grow" => {
                let mut f = std::fs::File::create(arg(1)?)?;
                let data = vec![b'x'; num(2)? as usize];
                let r = match f.write_all(&data) {
                    Ok(()) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                vec![r.to_string()]
            }
            b"socket" => {
                // SAFETY: socket takes integers; the descriptor is closed at once.
                let fd = unsafe {
                    libc::socket(num(1)? as i32, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
                };
                let r = result(fd);
                if fd >= 0 {
                    // SAFETY: opened above.
                    unsafe { libc::close(fd) };
                }
                vec![r]
            }
            b"connect_tcp" => {
                let port = num(1)? as u16;
                let r = match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(_) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                vec![r.to_string()]
            }
            b"connect_abstract" => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(arg(1)?)?;
                let r = match std::os::unix::net::UnixStream::connect_addr(&addr) {
                    Ok(_) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                vec![r.to_string()]
            }
            b"exec" => {
                let prog = cstr("/bin/true");
                let argv = [prog.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                // SAFETY: NUL-terminated program and null-terminated argv/envp. If it succeeds
                // this process becomes /bin/true (and the test sees the server exit).
                let r = unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
                vec![result(r)]
            }
            b"fork" => {
                // SAFETY: the child only calls _exit.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(0) };
                }
                let r = result(pid);
                if pid > 0 {
                    let mut status = 0;
                    // SAFETY: reaps the child just forked.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                }
                vec![r]
            }
            b"clone3" => {
                // clone_args, version 0 (64 bytes): a plain child process.
                let mut args = [0u64; 8];
                args[4] = libc::SIGCHLD as u64; // exit_signal
                                                // SAFETY: clone3 with a valid clone_args; a child returns 0 and exits at once
                                                // (it shares nothing with this process but copies of its memory).
                let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), 64usize) };
                if pid == 0 {
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(0) };
                }
                let r = result(pid as i32);
                if pid > 0 {
                    let mut status = 0;
                    // SAFETY: reaps the child just created.
                    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
                }
                vec![r]
            }
            b"thread" => {
                let r = match std::thread::Builder::new().spawn(|| 7) {
                    Ok(t) => match t.join() {
                        Ok(7) => 0,
                        _ => -1,
                    },
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                vec![r.to_string()]
            }
            b"alloc" => {
                let mut v: Vec<u8> = Vec::new();
                let r = match v.try_reserve_exact(num(1)? as usize) {
                    Ok(()) => {
                        // Touch one byte per page of a bit of it, to use it for real.
                        v.resize(v.capacity().min(1 << 20), 1);
                        0
                    }
                    Err(_) => libc::ENOMEM,
                };
                vec![r.to_string()]
            }
            b"setuid" => {
                // SAFETY: plain integer argument.
                vec![result(unsafe { libc::setuid(num(1)? as u32) })]
            }
            b"setgid" => {
                // SAFETY: plain integer argument.
                vec![result(unsafe { libc::setgid(num(1)? as u32) })]
            }
            b"kill" => {
                // SAFETY: signal 0 only checks permission.
                vec![result(unsafe { libc::kill(num(1)? as i32, 0) })]
            }
            b"dup_many" => {
                let n = num(1)?;
                let sock = ctx.channel().as_raw_fd();
                let mut fds = Vec::new();
                let mut err = 0;
                for _ in 0..n {
                    // SAFETY: duplicates our own socket; every copy is closed below.
                    let fd = unsafe { libc::fcntl(sock, libc::F_DUPFD_CLOEXEC, 0) };
                    if fd < 0 {
                        err = errno();
                        break;
                    }
                    fds.push(fd);
                }
                let count = fds.len();
                for fd in fds {
                    // SAFETY: duplicated above, closed once.
                    unsafe { libc::close(fd) };
                }
                vec![err.to_string(), count.to_string()]
            }
            b"rlimit" => {
                let which = match msg.str(1)? {
                    "as" => libc::RLIMIT_AS,
                    "nofile" => libc::RLIMIT_NOFILE,
                    "cpu" => libc::RLIMIT_CPU,
                    "fsize" => libc::RLIMIT_FSIZE,
                    "nproc" => libc::RLIMIT_NPROC,
                    other => return Err(RemoteError::bad_arguments(other)),
                };
                let mut r = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: writes one rlimit.
                unsafe { libc::getrlimit(which, &mut r) };
                vec![r.rlim_cur.to_string(), r.rlim_max.to_string()]
            }
            b"ids" => {
                let (mut a, mut b, mut c) = (0, 0, 0);
                // SAFETY: three valid out-pointers.
                unsafe { libc::getresuid(&mut a, &mut b, &mut c) };
                let uids = format!("{a} {b} {c}");
                // SAFETY: as above.
                unsafe { libc::getresgid(&mut a, &mut b, &mut c) };
                let gids = format!("{a} {b} {c}");
                let mut groups = vec![0; 256];
                // SAFETY: room for 256 gids.
                let n = unsafe { libc::getgroups(256, groups.as_mut_ptr()) };
                groups.truncate(n.max(0) as usize);
                let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
                vec![uids, gids, groups.join(",")]
            }
            b"caps" => {
                #[repr(C)]
                struct Header {
                    version: u32,
                    pid: i32,
                }
                let mut header = Header {
                    version: 0x2008_0522,
                    pid: 0,
                };
                let mut data = [[0u32; 3]; 2];
                // SAFETY: capget v3 writes two {effective, permitted, inheritable} triples.
                unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
                let set =
                    |i: usize| format!("{:x}", u64::from(data[0][i]) | u64::from(data[1][i]) << 32);
                let (mut bounding, mut ambient) = (0, 0);
                for cap in 0..64 {
                    // SAFETY: prctl with integer arguments.
                    unsafe {
                        if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1 {
                            bounding += 1;
                        }
                        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_IS_SET, cap, 0, 0)
                            == 1
                        {
                            ambient += 1;
                        }
                    }
                }
                // SAFETY: as above.
                let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
                vec![
                    set(0),
                    set(1),
                    set(2),
                    bounding.to_string(),
                    ambient.to_string(),
                    nnp.to_string(),
                ]
            }
            b"pdeathsig" => {
                let mut sig: libc::c_int = 0;
                // SAFETY: PR_GET_PDEATHSIG writes one int.
                unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut sig as *mut libc::c_int) };
                vec![sig.to_string()]
            }
            b"io_uring" => {
                // SAFETY: io_uring_setup(1, params) with a zeroed params struct (120 bytes);
                // the descriptor, if any, is closed at once.
                let mut params = [0u8; 120];
                let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
                let r = result(fd as i32);
                if fd >= 0 {
                    // SAFETY: opened above.
                    unsafe { libc::close(fd as i32) };
                }
                vec![r]
            }
            b"uname" => {
                // SAFETY: an all-zero utsname is a valid out-value.
                let mut u: libc::utsname = unsafe { std::mem::zeroed() };
                // SAFETY: writes one utsname.
                vec![result(unsafe { libc::uname(&mut u) })]
            }
            b"shmget" => {
                // SAFETY: looks up an existing segment only.
                vec![result(unsafe {
                    libc::shmget(num(1)? as libc::key_t, 0, 0)
                })]
            }
            b"spin" => {
                ctx.reply([""; 0])?;
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            _ => return probe_handle(&mut self.state, ctx, msg),
        };
        ctx.reply(&out)?;
        Ok(())
    }

    fn handle_signal(&mut self, _ctx: &mut Context<'_>, signal: Signal) {
        self.state.on_signal(signal);
    }

    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        if let Some(sig) = self.death_signal {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) };
        }
        if !self.deny_in_init.is_empty() {
            deny_on_this_thread(&self.deny_in_init)?;
        }
        if self.thread_in_init {
            let (rd, wr) = pipe();
            std::mem::forget(wr);
            std::thread::spawn(move || {
                let mut f = std::fs::File::from(rd);
                let _ = f.read(&mut [0]);
            });
        }
        Ok(())
    }

    fn finalize_server(&mut self) {
        self.state.on_finalize();
    }

    fn sandbox(&self) -> Option<Sandbox> {
        self.sandbox.clone()
    }
}

/// Installs a seccomp filter on the calling thread (no `TSYNC`) that fails `syscalls` with
/// `EPERM`: a server's own filter, as user code could install one in `initialize_server`,
/// outside fdserver's sandbox. Sets `no_new_privs`, which an unprivileged filter needs.
pub fn deny_on_this_thread(syscalls: &[libc::c_long]) -> std::io::Result<()> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // Load seccomp_data.nr (offset 0); each listed number jumps to the final EPERM.
    let n = syscalls.len();
    let mut prog = vec![insn(LD_W_ABS, 0, 0, 0)];
    for (i, &nr) in syscalls.iter().enumerate() {
        prog.push(insn(JEQ_K, (n - i) as u8, 0, nr as u32));
    }
    prog.push(insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    prog.push(insn(
        RET_K,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
    ));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments, then with a pointer to a valid filter program that
    // outlives the call (the kernel copies it).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends a "try" request and returns its errno (0: it worked).
pub fn try_errno(server: &mut ServerHandle, request: &[&str]) -> i32 {
    let reply = server
        .call(request)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"));
    reply[0]
        .parse()
        .unwrap_or_else(|_| panic!("{request:?}: bad reply {reply:?}"))
}

/// Whether this process is root; if not, says which test is skipped and why.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root (run the suite as root, as CI does)");
    false
}

/// Checks that the server still answers, and still passes descriptors and scalars both ways.
pub fn assert_serves(server: &mut ServerHandle) {
    assert_eq!(
        server.call(["echo", "still", "here"]).unwrap(),
        ["still", "here"]
    );
    let mut buf = MessageBuf::new();
    // A descriptor from the server.
    let fd = server
        .with_channel(|ch| {
            ch.write_array(["fd_back", "from server"])?;
            ch.read_reply(&mut buf)?;
            ch.recv_fd()
        })
        .unwrap()
        .expect("a descriptor");
    let mut got = String::new();
    std::fs::File::from(fd).read_to_string(&mut got).unwrap();
    assert_eq!(got, "from server");
    // A reply and its descriptor in one write.
    let fd = server
        .with_channel(|ch| {
            ch.write_array(["fd_with_reply", "with the reply"])?;
            Ok(ch.read_reply_with_fd(&mut buf)?.1)
        })
        .unwrap();
    let mut got = String::new();
    std::fs::File::from(fd).read_to_string(&mut got).unwrap();
    assert_eq!(got, "with the reply");
    // A descriptor to the server.
    let (rd, wr) = pipe();
    server
        .with_channel(|ch| {
            ch.write_array(["fd_write", "to server"])?;
            ch.send_fd(&wr)?;
            ch.read_reply(&mut buf).map(drop)
        })
        .unwrap();
    drop(wr);
    let mut got = String::new();
    std::fs::File::from(rd).read_to_string(&mut got).unwrap();
    assert_eq!(got, "to server");
    // A scalar both ways.
    let back = server
        .with_channel(|ch| {
            ch.write_array(["scalar_echo"])?;
            ch.write_scalar(b"bytes")?;
            ch.read_reply(&mut buf)?;
            ch.read_scalar()
        })
        .unwrap();
    assert_eq!(back.as_deref(), Some(&b"bytes"[..]));
}

/// The sandbox layer named by a failed `start`.
pub fn sandbox_layer(e: &Error) -> fdserver::sandbox::Layer {
    match e {
        Error::Sandbox(s) => s.layer(),
        other => panic!("expected Error::Sandbox, got {other:?}"),
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("fdserver-sandbox-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A started [`Jail`] with its report pipe (handled signals write `S<n>;`, `finalize_server`
/// writes `F`).
pub struct Started {
    pub server: ServerHandle,
    pub report: std::os::fd::OwnedFd,
}

/// Starts a [`Jail`] in `sandbox` (declared by the server), with a report pipe.
pub fn start(sandbox: Sandbox) -> Result<Started, Error> {
    start_jail(Jail::new(sandbox))
}

/// Starts `jail` with a report pipe.
pub fn start_jail(mut jail: Jail) -> Result<Started, Error> {
    let (rd, wr) = pipe();
    jail.state.report = Some(wr.as_raw_fd());
    let server = fdserver::Builder::new()
        .keep_fd(&wr)
        .seqpacket(!jail.stream)
        .start(&mut jail)?;
    Ok(Started { server, report: rd })
}

impl Started {
    /// The runtime works in the sandbox: messages, descriptors and scalars both ways, a handled
    /// signal.
    pub fn assert_runtime_works(&mut self) {
        assert_serves(&mut self.server);
        self.server.signal(Signal::SIGUSR1).unwrap();
        assert_eq!(
            fdserver_tests::read_n(std::os::fd::AsFd::as_fd(&self.report), 4),
            b"S10;"
        );
        assert_serves(&mut self.server);
    }

    /// Stops the server and checks it ended cleanly: `finalize_server` ran, exit status 0.
    pub fn stop_cleanly(self) {
        let stopped = self.server.stop().unwrap();
        assert!(stopped.status.success(), "{stopped}");
        assert_eq!(
            fdserver_tests::read_n(std::os::fd::AsFd::as_fd(&self.report), 1),
            b"F"
        );
    }
}
