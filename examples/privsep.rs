//! Privilege separation: a broker that may open files from one allow-listed directory hands
//! them to a parser that has no filesystem, no network and no way to start programs, and
//! parses untrusted input from the descriptor it is given.
//!
//! ```text
//! cargo run --example privsep            # sample files in a temporary directory
//! cargo run --example privsep -- DIR     # the files of DIR
//! sudo cargo run --example privsep       # as root the parser also runs as `nobody`, in a
//!                                        # network namespace of its own
//! ```
//!
//! ```text
//! client ──open("a.conf")──▶ broker   Landlock: DIR read-only; no network, no exec, no fork
//!        ◀────── File ──────          opens with O_NOFOLLOW, names without '/' only
//! client ──parse(File)─────▶ parser   Landlock: nothing; no network, no exec, no fork;
//!        ◀── (entries, ..) ─          limits; as root: user nobody, no network namespace
//! ```
//!
//! The parser never sees a path: if the parsing code were exploited, it could read only the
//! one file it was handed. The broker could open only what is in its directory.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::time::Duration;

use fdserver::sandbox::{Identity, Landlock, Limit, Namespace, Preset, Sandbox, Seccomp};

fn no_network_no_exec_no_fork() -> Seccomp {
    Seccomp::new()
        .preset(Preset::NoNetwork)
        .preset(Preset::NoExec)
        .preset(Preset::NoNewProcesses)
}

/// Opens files by name from one directory.
struct Broker {
    dir: PathBuf,
    /// The directory, opened in `initialize` (before the sandbox).
    dirfd: Option<File>,
}

#[fdserver::fdserver]
impl Broker {
    /// Opens `name`, a plain file name in the directory, read-only. Names with a `/`, `.` and
    /// `..`, symbolic links and anything but a regular file are refused.
    fn open(&mut self, name: String) -> io::Result<File> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a plain file name"),
            ));
        }
        let dir = self.dirfd.as_ref().expect("opened in initialize");
        let cname = std::ffi::CString::new(name.as_bytes())?;
        // SAFETY: a NUL-terminated name relative to a directory descriptor we own.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                cname.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a regular file"),
            ));
        }
        Ok(file)
    }

    #[fdserver(initialize)]
    fn init(&mut self) -> io::Result<()> {
        self.dirfd = Some(File::open(&self.dir)?);
        Ok(())
    }

    /// The broker itself may read its directory, and nothing else.
    #[fdserver(sandbox)]
    fn sandbox(&self) -> Sandbox {
        Sandbox::new()
            .landlock(Landlock::new().read_only(&self.dir))
            .seccomp(no_network_no_exec_no_fork())
    }
}

/// Parses untrusted `key = value` text: no filesystem, no network.
struct Parser {
    as_root: bool,
}

#[fdserver::fdserver]
impl Parser {
    /// Parses the file it is handed: the number of entries and the longest key, or the first
    /// malformed line.
    fn parse(&mut self, input: File) -> Result<(u32, String), String> {
        let mut entries = 0;
        let mut longest = String::new();
        // At most 1 MiB and 10,000 lines of untrusted input.
        let reader = BufReader::new(io::Read::take(input, 1 << 20));
        for (n, line) in reader.lines().enumerate().take(10_000) {
            let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, _value)) = line.split_once('=') else {
                return Err(format!("line {}: no '=' in {line:?}", n + 1));
            };
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("line {}: bad key {key:?}", n + 1));
            }
            entries += 1;
            if key.len() > longest.len() {
                longest = key.to_owned();
            }
        }
        Ok((entries, longest))
    }

    /// What a compromised parser would try: reading a file by path.
    fn steal(&mut self, path: PathBuf) -> io::Result<usize> {
        Ok(std::fs::read(path)?.len())
    }

    #[fdserver(sandbox)]
    fn sandbox(&self) -> Sandbox {
        let sandbox = Sandbox::new()
            .landlock(Landlock::new()) // no path at all
            .seccomp(no_network_no_exec_no_fork())
            .limit(Limit::OpenFiles(32))
            .limit(Limit::FileSize(0))
            .limit(Limit::CpuTime(Duration::from_secs(10)));
        if self.as_root {
            sandbox
                .identity(Identity::user("nobody"))
                .namespace(Namespace::Network)
        } else {
            sandbox
        }
    }
}

/// A directory removed when dropped, however `main` ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sample_dir() -> io::Result<TempDir> {
    let dir =
        TempDir(std::env::temp_dir().join(format!("fdserver-privsep-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    write_samples(&dir.0)?;
    Ok(dir)
}

fn write_samples(dir: &std::path::Path) -> io::Result<()> {
    std::fs::write(
        dir.join("good.conf"),
        "# a valid file\nname = fdserver\nlisten_backlog = 128\n",
    )?;
    std::fs::write(
        dir.join("bad.conf"),
        "name = x\nthis line has no equals sign\n",
    )?;
    // A link out of the directory: the broker refuses to follow it.
    let _ = std::fs::remove_file(dir.join("escape.conf"));
    std::os::unix::fs::symlink("/etc/passwd", dir.join("escape.conf"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, names, _temporary) = match std::env::args_os().nth(1) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let mut names: Vec<String> = std::fs::read_dir(&dir)?
                .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
                .collect();
            names.sort();
            (dir, names, None)
        }
        None => {
            let names = [
                "good.conf",
                "bad.conf",
                "escape.conf",
                "../etc/passwd",
                "missing",
            ];
            let temporary = sample_dir()?;
            (
                temporary.0.clone(),
                names.iter().map(|s| s.to_string()).collect(),
                Some(temporary),
            )
        }
    };
    // SAFETY: geteuid cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;

    let mut broker = Broker {
        dir: dir.clone(),
        dirfd: None,
    }
    .start()?;
    let mut parser = Parser { as_root }.start()?;
    println!(
        "broker (pid {}) {}",
        broker.pid(),
        broker.handle().sandbox().expect("sandboxed")
    );
    println!(
        "parser (pid {}) {}",
        parser.pid(),
        parser.handle().sandbox().expect("sandboxed")
    );

    println!("{}:", dir.display());
    for name in &names {
        match broker.open(name) {
            Ok(file) => match parser.parse(file) {
                Ok((entries, longest)) => {
                    println!("  {name}: {entries} entries, longest key {longest:?}")
                }
                Err(fdserver::Error::Remote(bad)) => {
                    println!("  {name}: rejected by the parser: {}", bad.message())
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => println!("  {name}: refused by the broker: {e}"),
        }
    }

    // What an exploited parser could do with a path: nothing.
    let secret = PathBuf::from("/etc/passwd");
    match parser.steal(&secret) {
        Ok(n) => println!("the parser read {n} bytes of {}!", secret.display()),
        Err(e) => println!("the parser cannot read {}: {e}", secret.display()),
    }

    broker.stop()?;
    parser.stop()?;
    Ok(())
}
