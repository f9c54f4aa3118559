//! # fdserver: fork-based helper servers over a UNIX socket pair
//!
//! A process forks a **server** child connected to it, and only to it, by a UNIX socket pair.
//! The two talk in **messages** (ordered lists of strings whose first element is the message
//! name), **scalars** (opaque byte strings of any size) and **file descriptors**, in the exact
//! wire format of Phusion Passenger's `MessageChannel`, so Ruby and C++ peers that speak it can
//! talk to an fdserver server.
//!
//! Write the server as an ordinary `impl` block: [`#[fdserver]`](macro@fdserver) makes each
//! method a message handler and generates a typed client for the parent.
//!
//! ```
//! struct MyServer;
//!
//! #[fdserver::fdserver]
//! impl MyServer {
//!     fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
//!         (format!("Hello {first_name} {last_name}, how are you?"), 1234)
//!     }
//! }
//!
//! let mut server = MyServer.start()?; // forks the server; returns its client, MyServerClient
//! let (reply, pointless_number) = server.hello("Joe", "Dalton")?;
//! assert_eq!(reply, "Hello Joe Dalton, how are you?");
//! assert_eq!(pointless_number, 1234);
//! server.stop()?; // closes the connection, then SIGTERM, then SIGKILL; always reaps
//! # Ok::<(), fdserver::Error>(())
//! ```
//!
//! `server.hello("Joe", "Dalton")` sends the array message `["hello", "Joe", "Dalton"]`; the
//! server parses each element into the parameter's type, calls the method and answers
//! `["ok", "Hello Joe Dalton, how are you?", "1234"]`. Any peer that speaks `MessageChannel`
//! can send the same message.
//!
//! The macro implements the [`Server`] trait, which can also be written by hand: match on the
//! message name and reply through the [`Context`]. [`ServerHandle`] is then the client:
//!
//! ```
//! use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
//!
//! struct Hello;
//!
//! impl Server for Hello {
//!     type Client = ServerHandle;
//!     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
//!         match msg.name() {
//!             b"hello" => {
//!                 let reply = format!("Hello {} {}, how are you?", msg.str(1)?, msg.str(2)?);
//!                 ctx.reply([reply.as_str(), "1234"])?;
//!                 Ok(())
//!             }
//!             other => Err(RemoteError::unknown_message(other)),
//!         }
//!     }
//! }
//!
//! let mut server = Hello.start()?;
//! let reply = server.call(["hello", "Joe", "Dalton"])?;
//! assert_eq!(reply, ["Hello Joe Dalton, how are you?", "1234"]);
//! server.stop()?;
//! # Ok::<(), fdserver::Error>(())
//! ```
//!
//! The pieces:
//!
//! * [`fdserver`](macro@fdserver): the attribute that turns an `impl` block into a server with a
//!   typed client (start here).
//! * [`Server`]: what a server is; [`Server::start`] (or [`Builder`], for options) forks one and
//!   returns its client, [`serve`] runs one in the current process (e.g. on an inherited fd 3).
//! * [`ServerHandle`]: the parent's handle: `pid`, `call`, raw channel, `stop`.
//! * [`Spawn`]: start a server *program* (`exec`, no fork) on an inherited socket, with the same
//!   client; [`Connection`]: a generated client also drives any [`Channel`] peer.
//! * [`args`]: how each type travels ([`Json`] for serde values, feature `serde`);
//!   [`WireError`] and [`CallError`]: error types that come back to the client as themselves.
//! * [`Channel`]: the message channel (arrays, scalars, descriptors, deadlines).
//! * [`Error`]: everything that can fail, in one enum.
//! * [`preload`]: a Spring-style preloader built on all of the above.
//!
//! ## Platforms
//!
//! Linux only. fdserver is built on Linux system calls (`pidfd_open`, `close_range`,
//! `SO_PEERCRED`, `MSG_CMSG_CLOEXEC`, the preloader's `signalfd`...); on any other target the
//! crate does not build, with one `compile_error!` that says so. It runs on every kernel Rust's standard
//! library supports (Linux 3.2 and later, glibc 2.17 or later, or musl), and uses newer kernel
//! features where the running kernel has them:
//!
//! | Feature | Since | Where the kernel lacks it |
//! |---|---|---|
//! | `pidfd_open`, `pidfd_send_signal`: wait on and signal a server through a descriptor | Linux 5.3 | a watcher thread per server waits with `waitid(WNOWAIT)`; signals go to the pid of the still-unreaped child (also used where a seccomp profile or valgrind refuses pidfds) |
//! | `close_range`: in a forked server, the final sweep that closes descriptors the parent's listing missed (opened by other threads after it) and the tombstones' source; the listed inherited ones are tombstones by then (`dup3`, any kernel; see "Descriptors"), or, without `/dev/null`, all closed by this sweep | Linux 5.9 | closed one by one, up to the descriptor limit |
//! | `MADV_COLLAPSE`: huge pages for a preloaded heap ([`preload`]) | Linux 6.1 | skipped (`MADV_HUGEPAGE` alone) |
//! | `SO_PEERPIDFD`: the [`preload`] client stops a server through the kernel's pidfd of it | Linux 6.5 | a pidfd of the `SO_PEERCRED` pid, kept only while the connection shows that process alive |
//! | `pidfd_send_signal` with `PIDFD_SIGNAL_PROCESS_GROUP`: the [`preload`] client signals a worker's process group | Linux 6.9 | `kill(-pid)`, only while the worker's pidfd shows it running |
//! | `close_range` with `CLOSE_RANGE_CLOEXEC`: the [`preload`] server and templates keep nothing their first client inherited | Linux 5.11 | not done: such descriptors stay open in the server |
//!
//! Everything else it uses (`SOCK_CLOEXEC`, `MSG_CMSG_CLOEXEC`, `pipe2`, the preloader's
//! `signalfd` flags, `sendmmsg`, `PR_SET_PDEATHSIG`, `SO_PEERCRED`, and for tombstones `O_PATH`
//! and `dup3`) is older than Linux 3.2.
//!
//! ## Cargo features
//!
//! All off by default; the default build brings no dependency beyond `libc`, `inotify` and the
//! macros (`fdserver-macros`).
//!
//! * `sandbox`: the `fdserver::sandbox` module (identity, capabilities, limits, namespaces,
//!   Landlock, seccomp; see "Sandboxing" below); brings `landlock` and `seccompiler`.
//! * `serde`: [`Json<T>`](Json) parameters and results (any serde type, as JSON in a scalar
//!   message); brings `serde` and `serde_json`.
//! * `tokio`: the async clients and pools (`AsyncChannel`, `AsyncServerHandle`, `AsyncPool`,
//!   the generated `MyServerAsyncClient` and `MyServerAsyncPool`, `Builder::start_async`; see
//!   "Threads and async"); brings `tokio` without starting a runtime (the program brings its
//!   own).
//! * `tracing`: spans and events through `tracing`, under the target `fdserver`:
//!
//! | what | kind, level | fields |
//! |---|---|---|
//! | a client call | span `call`, DEBUG; then an event: DEBUG, or WARN when the server must be replaced | `message`, `pid` (for a started server), `outcome` (`ok`, the error the caller gets, or `cancelled` for an async call whose future was dropped), `micros` |
//! | a handled message (in the server) | span `handle`, DEBUG; then a DEBUG event | `message`, `pid`, `outcome` (`ok`, `error`, `panicked`), `micros` |
//! | a server started | event, DEBUG | `pid`, `server` (its type) |
//! | a start that failed | event, WARN | `server`, `error` |
//! | a server stopped (or found exited and reaped) | event, DEBUG (WARN when it had to be killed) | `pid`, `how`, `status` |
//! | a pool's server restarted, or given up on | event, INFO / WARN | `index`, `pid`, `restarts`, `reason` |
//!
//! Without `tracing`, nothing of it is compiled, and calls cost nothing more.
//!
//! ## Wire format
//!
//! Byte-for-byte Passenger's `MessageChannel`, on a UNIX socket: `SOCK_STREAM` for the channels
//! Passenger and any other peer use, `SOCK_SEQPACKET` by default for the pair [`Server::start`]
//! creates, whose both ends are fdserver's (see [`Builder::seqpacket`]):
//!
//! * **Array message**: `u16` big-endian body length, then every element followed by a NUL
//!   byte: `["hello", "world !!"]` is `00 0F 68 65 6C 6C 6F 00 77 6F 72 6C 64 20 21 21 00`.
//!   Elements cannot contain NUL; the body is at most 65535 bytes. Writing either is an error
//!   and writes nothing. A zero-length body is the empty message. A body that does not end in NUL
//!   is a [`ProtocolError::MissingTerminator`] (Passenger silently dropped the trailing bytes).
//! * **Scalar message**: `u32` big-endian length, then the bytes. Reads refuse lengths over a
//!   limit (default 64 MiB), which breaks the channel; a client's call reads its own reply
//!   without it (see [`args`](crate::args#large-results)).
//! * **File descriptor**: one `sendmsg` of exactly one data byte `00` with an `SCM_RIGHTS`
//!   control message holding one descriptor.
//! * **End of stream** at a message boundary reads as "no message" (`None` / `Ok(false)`); in the
//!   middle of a message it is [`ProtocolError::UnexpectedEof`].
//! * **Reading**: a channel built from a stream descriptor takes exactly the bytes a message
//!   still lacks, never more, so descriptors sent between messages are never swallowed and the
//!   socket can be handed on between messages. The two ends of a started server's pair read
//!   ahead (one `recvmsg` per message; on `SOCK_SEQPACKET` one record per `recvmsg`, which the
//!   writer keeps under 68 KiB), keep each descriptor with the byte it came with, and refuse to
//!   lend or give up their socket while they hold something read ahead (`Channel::as_fd`,
//!   [`Channel::into_parts`]). The socket of a started server's pair is `SOCK_SEQPACKET` unless
//!   [`Builder::seqpacket(false)`](Builder::seqpacket): hand it only to a reader that takes whole
//!   records ([`Channel::new`] on a `SOCK_SEQPACKET` socket is one).
//!
//! ## Replies and errors
//!
//! fdserver adds one convention on top: every reply to a request is an array message whose first
//! element is a status.
//!
//! * `["ok", value, ...]`: success; scalars and descriptors the handler sends follow it.
//! * `["ok_scalar"]` then a scalar message holding the body of `["ok", value, ...]`: success,
//!   for a reply too large for an array message (over 65535 bytes); read as the plain form.
//! * `["error", kind, message, details...]`: failure, where `kind` is one of `unknown_message`,
//!   `bad_arguments`, `failed`, `panicked`, `protocol` (a malformed request), `initialize`,
//!   `sandbox` (the server's sandbox could not be applied), `io` (an `io::Error`, details: its
//!   kind and OS error number) or the code of a handler's own [`WireError`] type (details: its
//!   fields); see [`RemoteErrorKind`] and [`args`](crate::args#errors). A peer that knows only
//!   `["error", kind, message]` ignores the details. After any of these the server keeps
//!   serving, except when a handler had already begun writing its reply: a second reply would
//!   answer the client's next request, so instead the server closes the stream and exits, with
//!   status 101 after a panic and 1 after an `Err`. A request is answered by exactly one reply.
//! * A request that leaves the incoming stream impossible to resynchronise (a scalar over the
//!   server's limit, data where a descriptor was due, a descriptor glued to a message's bytes)
//!   is answered with a last `["error", "protocol", text]` saying why, then the server closes the
//!   connection and exits with status 1, so a peer in any language reads the reason instead of a
//!   bare end of stream.
//!
//! A forked server sends `["ready"]` once `initialize_server` succeeded (or
//! `["error", "initialize", message]`); [`Server::start`] consumes it. [`serve`] on an inherited
//! socket sends nothing unprompted.
//!
//! ## Signals
//!
//! A forked server leads a process group of its own (in its parent's session), so the signals
//! a terminal sends to the parent's job (Ctrl-C, Ctrl-\, Ctrl-Z, window resizes) do not reach
//! it: an interactive program that handles Ctrl-C keeps its servers. Outside the foreground job,
//! it ignores SIGTTIN and SIGTTOU unless it declares them, so reading the terminal fails with
//! `EIO` instead of stopping it. [`Builder::same_process_group`] keeps it in the parent's job
//! instead (for `#[fdserver]` servers too: `Builder::new().same_process_group(true).start(&mut
//! server)`).
//!
//! A forked server resets every signal disposition to its default and ignores SIGHUP, unless it
//! declares a SIGHUP handler. The signals it declares in [`Server::SIGNALS`], plus SIGTERM and
//! SIGINT, go to a handler that only records them and wakes the loop; the server's own handlers
//! then run on the loop with `&mut self`, between messages, never in signal context. A signal
//! that arrives while a handler runs is handled before the next message. SIGTERM and SIGINT
//! without a declared handler end the loop cleanly: `finalize_server` runs and the server exits
//! with status 0.
//!
//! They end it promptly in every state of the loop's channel, as Passenger's servers did: a
//! message half read (the rest is abandoned), a handler waiting on [`Context::channel`] for more
//! from the client, a reply blocked because the client does not read it. Every wait of the
//! loop's channel watches for them, and the operation cut short fails with an `Interrupted`
//! [`Error::Io`] that ends the loop (no reply is sent). Your own code in a handler (a loop, a
//! blocking call on another descriptor) is not interrupted: the signal is handled when the
//! handler returns, and [`ServerHandle::stop`] ends a handler that never does with SIGKILL.
//!
//! Those signals are not blocked while your handlers run, and their recording handler is
//! installed with `SA_RESTART`: blocking reads and writes in your code are restarted, but calls
//! the kernel never restarts (`poll`, `epoll_wait`, `nanosleep`, socket calls with a timeout)
//! may fail with `EINTR` when one arrives, as in any program that handles signals. Threads you
//! start need not block them either: a caught signal delivered to another thread is forwarded
//! to the loop's thread (and that thread's own non-restartable calls may see `EINTR` too).
//!
//! ## Descriptors
//!
//! Every descriptor fdserver creates is close-on-exec; received ones too (`MSG_CMSG_CLOEXEC`).
//! Sends use `MSG_NOSIGNAL`, so a dead peer is an error, not a SIGPIPE. A truncated control
//! message is an error and the descriptors that did arrive are closed. Reads leave room for the
//! control data a socket option set by anyone adds to every read (`SO_PASSCRED` credentials,
//! `SO_PASSPIDFD` pidfds, `SO_PASSSEC` labels): descriptor passing keeps working, and a pidfd
//! that arrives that way is closed at once.
//!
//! A forked server releases every inherited descriptor except 0, 1, 2, its socket and those
//! given to [`Builder::keep_fd`], so **open files and sockets in `initialize_server`, not before
//! `start`**. The server value may own some of them (a `File` opened before `start`), and safe
//! code must never reach another file through it. So each released descriptor is replaced by a
//! *tombstone*, an `O_PATH` descriptor of `/dev/null` (close-on-exec): the original file is
//! released all the same (a socket's peer sees end of stream), the number stays taken (the
//! server's own `open`s get other numbers), and every `read`, `write`, `ioctl` or `mmap` through
//! it fails with `EBADF`. Calls that work on any `O_PATH` descriptor still answer, for
//! `/dev/null`: `metadata()` (`fstat`) describes a character device of length 0, not the
//! released file. Dropping the owner closes the tombstone. The parent lists its open
//! descriptors in `/proc/self/fd` (one `poll` over the descriptor table where procfs is
//! missing); descriptors other threads open after that cannot belong to the server value (which
//! `start` borrows) and are simply closed. Without `/dev/null` (an unusual chroot) the server falls back to closing them.
//! This costs about 30 µs of CPU time per start, plus about 0.5 µs per inherited descriptor (see
//! BENCHMARKS.md, rows 4t, 4t100).
//!
//! ## A server ends with its client
//!
//! A forked server runs a small thread, its *hang-up watch*, that waits for its connection to
//! end, however it ends: [`ServerHandle::stop`] or a dropped handle, a parent that exited, crashed
//! or was SIGKILLed. From then on the server follows `stop`'s schedule by itself: SIGTERM
//! `after_close` later, SIGKILL `after_term` after that (3 s and 3 s unless
//! [`Builder::stop_timeouts`] says otherwise), unless it has exited first, as it does at once
//! when its loop is waiting for a message. So a handler that never returns cannot keep a server
//! alive past its client, and this does not depend on anyone being able to signal the server:
//! [`ServerHandle::stop`] still ends and reaps it after the parent dropped the privileges to
//! signal it. The watch asks `poll` for no event on the socket, so calls never wake it; a client
//! that only half-closes (`shutdown(SHUT_WR)`, still reading) is not a hang-up. A program
//! started by [`Spawn`] runs the same watch: `serve` starts it on the socket `Spawn` handed
//! over (named in the environment variable `FDSERVER_HANGUP_WATCH`), with `Spawn`'s grace
//! periods. `serve` on any other socket starts no watch (it runs in your process, which may
//! have to outlive its peer).
//!
//! ## Threads and async
//!
//! A connection carries one call at a time (the protocol has no request ids), so a client's
//! calls take `&mut self`; sharing work between threads or tasks is a pool's job.
//!
//! | type | `Send` | `Sync` | share it |
//! |---|---|---|---|
//! | [`ServerHandle`], `MyServerClient`, [`Channel`] | yes | yes | one caller at a time (`&mut self`); move it to any thread |
//! | [`Pool`], `MyServerPool` | yes | yes | any number of threads at once (`&self`, `Clone`) |
//! | [`Pooled`] (a checked-out server) | yes | yes | its caller's, until dropped |
//! | `AsyncServerHandle`, `MyServerAsyncClient`, `AsyncChannel` (feature `tokio`) | yes | yes | one task at a time |
//! | `AsyncPool`, `MyServerAsyncPool` (feature `tokio`) | yes | yes | any number of tasks at once |
//! | [`Builder`], [`PoolOptions`], [`Error`], [`CallError`] | yes | yes | |
//!
//! (`fdserver-tests/tests/api_threads.rs` checks each line at compile time; the async futures
//! are `Send`, and `start_async`'s is `'static`: spawn them on any runtime.)
//!
//! **From threads**: one client per thread, or a [`Pool`] that all threads share: a call goes to
//! an idle server, waits (with a bound) when all are busy, and a server that died, timed out or
//! broke its connection is replaced on the next use that needs it. Not a client behind a
//! `Mutex`: its callers would queue behind its slowest call.
//!
//! **From tokio** (feature `tokio`): `MyServer.start_async().await` gives `MyServerAsyncClient`,
//! whose methods are the handlers' as `async fn` (`client.hello("Joe", "Dalton").await`); every
//! wait goes through the runtime (its I/O driver and timers), never a blocking call on a runtime
//! thread; `MyServerAsyncPool` is the pool for tasks. The blocking client on a runtime thread
//! would block that thread for each call's whole length: use it only inside `spawn_blocking`.
//! Starting is a fork done inline (it blocks the calling thread for the fork: well under a
//! millisecond for a small process, about 100 ms for one with a 1 GiB heap; see
//! `Builder::start_async`) and an asynchronous wait for `initialize`. A call's future may be
//! dropped at any `.await` (`tokio::time::timeout`, `select!`), raw calls
//! (`AsyncServerHandle::call`) as typed ones: its client stays usable and never hands a call
//! another's reply (see `MyServerAsyncClient`'s docs for the exact rules); a pool replaces a
//! server whose call was dropped.
//!
//! **Starting and stopping anywhere**: `start` works on any thread, including a tokio worker,
//! inside `block_on`, in `spawn_blocking` and in thread pools: servers are forked from a thread
//! of fdserver's own, so a server starts with none of its parent's runtime context and can build
//! and use runtimes of its own (in `initialize_server` or in a handler; see "Fork safety" for
//! tokio's `parking_lot` feature). Dropping any client returns at once: the stop is finished by
//! fdserver's reaper thread. Every call has a deadline for the whole call
//! ([`DEFAULT_CALL_TIMEOUT`], 30 s) unless told otherwise, and [`Error::needs_restart`] says whether a failed call's server must be
//! replaced.
//!
//! ## Fork safety
//!
//! [`Server::start`] calls `fork`. In a multi-threaded process (every `cargo test` binary is one)
//! only the forking thread exists in the child, and whatever locks other threads held at that
//! moment stay locked forever there. `start` forks from a thread of fdserver's own, a *fork
//! thread* (one per server type, started on first use; a caller whose `no_new_privs` or seccomp
//! mode differs from it is forked on its own thread: see [`Builder::fork_on_calling_thread`]), so
//! that the server starts with fresh thread-locals, not a copy of the calling thread's (an async
//! runtime's context among them); [`Builder::fork_on_calling_thread`] forks from the calling
//! thread instead. fdserver's own path from `fork` to your `initialize_server` makes only
//! async-signal-safe system calls (everything it needs, buffers, descriptor lists, signal sets,
//! the watch thread's stack, is prepared in the parent, and all signals are blocked across the
//! `fork`), with two exceptions, both safe in the child: it releases std's stdout and stderr locks, which the calling thread
//! took for the fork (below), and it starts one thread of its own, the hang-up watch, with
//! `pthread_create` (glibc resets its own locks at `fork`, as it must for the threads you start
//! in `initialize_server`). That thread takes no lock and allocates nothing, so a server may
//! itself fork (the preloader's templates do). Before anything else, the child moves the server
//! value off the calling thread's stack onto its own: glibc gives the stacks of the threads a
//! forked process lacks to the next threads it creates.
//!
//! **Standard output and error.** std's `stdout()` and `stderr()` are locks; one held by another
//! thread at the fork would stay locked forever in the child, where every `println!`, every panic
//! message and the final flush would block. So `start` takes both locks across the `fork` and the
//! child releases them first thing. What the runtime guarantees:
//!
//! * In the server, `println!`, `eprintln!` and panic messages work from every thread (the loop's
//!   and the ones you start), and the server's stdout is flushed when it exits.
//! * Not covered: std's panic hook takes a process-wide lock of its own while it prints. A server
//!   forked while another thread of the parent is printing a panic inherits that lock held, and
//!   its own first panic then blocks for good (the hang-up watch still ends the server once its
//!   client goes). Do not start servers while other threads may be panicking, or install a panic
//!   hook that takes no lock (`std::panic::set_hook`).
//! * Output the parent had buffered but not flushed (a partial line) is written once, by the
//!   parent: the server drops its copy. `start` does not flush stdout, so a full stdout pipe does
//!   not block it.
//! * The price: `start` waits while *another* thread of the parent holds `stdout` or `stderr`
//!   locked: for the length of a print in progress, normally microseconds, but for as long as a
//!   thread keeps a `stdout().lock()` guard (a render loop holding it for seconds delays every
//!   `start` as long). A thread that holds such a guard **while waiting for a thread that calls
//!   `start`** (joining it, or waiting on a channel it answers after `start`) deadlocks the
//!   program: release the guard first. std offers no `try_lock` for these locks, so no design
//!   can both never wait for them and never hand the server a lock that stays locked forever;
//!   fdserver gives the server working stdio and documents the wait.
//! * A guard held by the thread that calls `start` does not block `start` (the locks are
//!   reentrant), but the server, forked from the fork thread, finds that lock held by a thread it
//!   does not have, and its prints to that stream block: release the guard before `start`, or
//!   use [`Builder::fork_on_calling_thread`] (the server is then a copy of the calling thread,
//!   which owns the lock there).
//! * `std::io::stdin()` is not covered: its lock is held by a thread blocked reading it (an
//!   interactive prompt), and taking it would make `start` wait for the user to type. Do not read
//!   std's stdin in a server whose parent reads it from another thread.
//!
//! Your code in the child (`initialize_server`, handlers, `finalize_server`) runs under these
//! rules when the parent has other threads:
//!
//! * **Safe**: system calls; allocation with the system allocator (glibc resets its malloc locks
//!   in the child) or with an allocator that registers fork handlers (jemalloc, mimalloc do);
//!   everything owned by the server value itself, except descriptors it opened before `start`
//!   (they fail with `EBADF` in the server: see "Descriptors"); `stdout()`/`stderr()` and
//!   `println!` (see above); threads you start in `initialize_server`.
//! * **Not safe**: any other lock another thread might have held at the fork: a `static Mutex`,
//!   a logger's own lock, `std::env::set_var`; thread pools and async runtimes created before the
//!   fork (their threads do not exist in the child: build new ones in the server, see "Threads
//!   and async"); `parking_lot` (and tokio with its `parking_lot` feature, part of `full`),
//!   whose process-wide table of parked threads the child inherits listing the parent's threads,
//!   whose memory the child's new threads reuse (parking_lot issue #515); data on another
//!   thread's stack (the server value may borrow from the heap and statics, not from a stack).
//! * **Reseed** random number generators in `initialize_server`: the child starts with a copy of
//!   the parent's state (Passenger 2.2 learned this the hard way).
//! * The server value is copied into the child by `fork`. The child never drops it (it ends with
//!   `_exit` after `finalize_server`); the parent keeps its own copy, which `start` borrows.
//!
//! ## Sandboxing
//!
//! With the `sandbox` feature, a server carries a description of what it may no longer do
//! (`Builder::sandbox`, `Server::sandbox`, or `#[fdserver(sandbox)]` on a method): a user and
//! groups to run as, no capabilities, `no_new_privs`, resource limits, new namespaces, Landlock
//! rules for the filesystem and a seccomp filter. It is prepared in the parent and applied in
//! the server after `initialize_server` and before the first message; each layer takes effect
//! or `start` fails naming it. The `fdserver::sandbox` module documents what each layer protects
//! against, the order they are applied in, what needs root, what the kernel must support and
//! what a sandbox does not protect against; `examples/privsep.rs` is a privileged broker and a
//! sandboxed parser.
//!
//! ## Compared with Passenger's `AbstractServer`
//!
//! Unknown messages and failing handlers reach the client as typed errors and the server keeps
//! serving; a user's SIGHUP handler runs; `stop` escalates close → SIGTERM → SIGKILL waiting on
//! a pidfd (no sleeps, no polling loops) and always reaps, so no zombie is left; clean shutdowns
//! exit 0; a dead server makes the next call fail at once with its exit status instead of hanging.
//! Where there are no pidfds (Linux before 5.3, valgrind, seccomp profiles that refuse the
//! call), a watcher thread per server waits with `waitid(WNOWAIT)` instead; the server then stays
//! unreaped until its handle reaps it, so signalling it by pid is safe unless something else in
//! the program reaps children it does not own (`waitpid(-1)`).

#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "fdserver supports Linux only: it is built on Linux system calls (pidfd_open, close_range, \
     SO_PEERCRED, MSG_CMSG_CLOEXEC...). See \"Platforms\" in the crate docs."
);

// Every item is for Linux only, so that another target fails with the one `compile_error!`
// above instead of a cascade of missing `libc` symbols.
#[cfg(target_os = "linux")]
pub mod args;
#[cfg(all(target_os = "linux", feature = "tokio"))]
mod asyncio;
#[cfg(target_os = "linux")]
mod channel;
#[cfg(target_os = "linux")]
mod client;
#[cfg(target_os = "linux")]
mod connection;
#[cfg(target_os = "linux")]
mod error;
#[cfg(target_os = "linux")]
mod fork_thread;
#[cfg(target_os = "linux")]
mod io_kind;
#[cfg(target_os = "linux")]
mod pool;
#[cfg(target_os = "linux")]
pub mod preload;
#[cfg(target_os = "linux")]
mod reaper;
#[cfg(all(target_os = "linux", feature = "sandbox"))]
pub mod sandbox;
#[cfg(target_os = "linux")]
mod serve;
#[cfg(target_os = "linux")]
mod server;
#[cfg(target_os = "linux")]
mod server_loop;
#[cfg(target_os = "linux")]
mod signal;
#[cfg(target_os = "linux")]
mod spawn;
#[cfg(target_os = "linux")]
mod start;
#[cfg(target_os = "linux")]
mod sys;
#[cfg(target_os = "linux")]
mod trace;
#[cfg(target_os = "linux")]
pub mod wire;
#[cfg(target_os = "linux")]
mod wire_error;

#[cfg(target_os = "linux")]
#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

#[cfg(target_os = "linux")]
/// Turns an inherent impl block into a server: a dispatch table over its methods, typed argument
/// parsing, a typed client, signal handlers and lifecycle hooks.
///
/// ```
/// struct MyServer;
///
/// #[fdserver::fdserver]
/// impl MyServer {
///     fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
///         (format!("Hello {first_name} {last_name}, how are you?"), 1234)
///     }
/// }
///
/// let mut server = MyServer.start()?; // forks; returns the generated `MyServerClient`
/// let (reply, pointless_number) = server.hello("Joe", "Dalton")?;
/// assert_eq!(reply, "Hello Joe Dalton, how are you?");
/// assert_eq!(pointless_number, 1234);
/// server.stop()?;
/// # Ok::<(), fdserver::Error>(())
/// ```
///
/// # What it generates
///
/// For `#[fdserver] impl MyServer { ... }`, next to the impl block (re-emitted without the
/// `#[fdserver(...)]` helper attributes):
///
/// * `impl fdserver::Server for MyServer`: [`Server::handle`] matches the
///   message name (no allocation), decodes the arguments, calls the method and sends its reply;
///   [`SIGNALS`](crate::Server::SIGNALS), [`handle_signal`](crate::Server::handle_signal) and the
///   hooks come from the marked methods.
/// * `MyServer::start(&mut self) -> Result<MyServerClient, fdserver::Error>`, an inherent method,
///   so `MyServer.start()` works without importing the trait. For options use
///   [`Builder`]: `Builder::new().timeout(...).start(&mut server)`.
/// * `pub struct MyServerClient<C = ServerHandle>`: one method per handler, with the handler's
///   parameters (minus the context), returning `Result<T, fdserver::Error>` where `T` is what
///   the handler returns (its `Ok` type for a `Result`), or `Result<T, fdserver::CallError<E>>`
///   for a `typed_errors` handler returning `Result<T, E>` (see [`WireError`]). `C` is what it
///   talks through ([`Connection`]): for a server fdserver started ([`Server::start`],
///   [`Spawn`]) the [`ServerHandle`], with `pid()`, `stop()`, `stop_with(options)`,
///   `signal(sig)`, `handle()` / `handle_mut()` / `into_handle()`; or any [`Channel`]
///   (`MyServerClient::from(channel)`: a server another program started, a Ruby peer). Both
///   have `set_timeout(deadline)`, `channel()` (the raw [`Channel`]), `into_connection()`,
///   `From` and `Debug`. Dropping a `ServerHandle` client stops the server in the background
///   (it returns at once; see [`ServerHandle`]). It implements [`Client`].
/// * `pub struct MyServerPool`: a [`Pool`] of `MyServerClient`s that threads share (`Clone`,
///   `Send`, `Sync`), with one method per handler taking `&self`
///   (`pool.hello("Joe", "Dalton")`): each call goes to an idle server, and a server that failed
///   is replaced on the next use. `MyServerPool::start(PoolOptions::new(4), MyServer)` starts
///   it; it derefs to [`Pool`] (`get`, `status`, `revive`, ...). A handler marked
///   `#[fdserver(idempotent)]` is run once more, on another server, when its server fails.
///
/// The handler's doc comments and `#[cfg]` attributes are copied onto its client method (and the
/// `#[cfg]` onto its dispatch arm). [`serve`] runs a macro server on an inherited
/// socket like any other server (see `examples/hello.rs`, `--serve-fd`).
///
/// # Handlers
///
/// Every method with a `&mut self` or `&self` receiver is a handler, unless marked
/// `#[fdserver(skip)]` or marked as a signal handler or hook. The message name is the method
/// name (`r#type` is `"type"`), or `#[fdserver(name = "...")]`.
///
/// A function without a receiver cannot be a handler, and is a compile error (whose help
/// shows the signature with `&mut self`), so that a forgotten `self` is not found only as "no
/// method named `add`" at the call site. Two kinds are left alone: constructors, recognised
/// by a return type that names `Self` or the server type (`fn new() -> Self`,
/// `fn open(path: PathBuf) -> io::Result<MyServer>`), and functions marked
/// `#[fdserver(skip)]` (helpers such as `fn parse(line: &str) -> u32`):
///
/// ```
/// # struct Calc { base: i32 }
/// #[fdserver::fdserver]
/// impl Calc {
///     fn new(base: i32) -> Self {      // a constructor: no mark needed
///         Calc { base }
///     }
///
///     #[fdserver(skip)]                // a helper: marked
///     fn clamp(x: i32) -> i32 {
///         x.clamp(-100, 100)
///     }
///
///     fn add(&mut self, a: i32) -> i32 { // a handler
///         Self::clamp(self.base + a)
///     }
/// }
/// # let mut calc = Calc::new(1).start()?;
/// # assert_eq!(calc.add(2)?, 3);
/// # Ok::<(), fdserver::Error>(())
/// ```
///
/// Parameters are `name: Type` pairs, or `_: Type` for a value the handler ignores (the
/// client still sends it; its stub parameter and error messages call it `argN`, N counting
/// the client's parameters from 1). Each type decides how the value travels (see
/// [`args`] for the table): strings, numbers, `bool`, `char`, paths and `Option`s
/// of those are elements of the array message; `Vec<u8>`, lists (`Vec<T>` of those) and
/// [`Json<T>`](Json) (any serde type, feature `serde`) are scalar messages and `File`,
/// `OwnedFd`, `UnixStream` etc. are passed descriptors, both sent after the array.
/// `&str`, `&[u8]`, `&Path` and `&OsStr` parameters borrow from the received message (no
/// allocation). The client method takes `&str` for `String`, `&[u8]` for `Vec<u8>`,
/// `impl AsRef<Path>` for `PathBuf` and `&Path`, `impl AsRef<OsStr>` for `OsString` and
/// `&OsStr`, `&[impl AsRef<str>]` for `Vec<String>`, `&T` for `Json<T>`, `impl AsFd` for
/// descriptors and the type itself otherwise. Your own `FromStr + Display` types need one line,
/// [`display_fromstr_arg!`](crate::display_fromstr_arg).
///
/// A parameter of type `&mut fdserver::Context<'_>` (anywhere in the list) is not sent by the
/// client: it gives the handler [`Context::quit`] (end the loop after
/// this reply), [`Context::pid`] and the raw channel.
///
/// What the client method returns, for the common handler return types:
///
/// | handler returns | client method returns | a handler `Err(e)` arrives as |
/// |---|---|---|
/// | `T` | `Result<T, fdserver::Error>` | (none) |
/// | `Result<T, String>`, any `Result<T, E: Display>` | `Result<T, fdserver::Error>` | `Error::Remote`, kind `failed`, `e.to_string()` |
/// | `io::Result<T>` | `Result<T, fdserver::Error>` | `Error::Remote`, kind `io`; `io::Error::from(err)` has the server's `kind()` and `raw_os_error()` |
/// | `Result<T, MyError>`, `MyError: WireError` | `Result<T, fdserver::Error>` | `Error::Remote` with `MyError`'s code; [`CallError::from_error`] rebuilds it |
/// | the same, with `#[fdserver(typed_errors)]` (also for `String` and `io::Error`) | `Result<T, fdserver::CallError<MyError>>` | `CallError::Handler(e)`, matchable; fdserver's own errors in `CallError::Fdserver` |
///
/// A handler returns `()`, a value, a tuple of up to 12 values, or a `Result` of those whose
/// error implements `Display` (`io::Result<File>`, `Result<u32, String>`, your own `Result<T>`
/// alias...). Descriptors, `Vec<u8>`, lists and `Json` values may appear in any of these, and
/// a result of any size arrives (see [`args`](crate::args#large-results)). An `io::Error` comes
/// back with its kind and OS error number; a [`WireError`] type comes back as itself (see
/// [`args`](crate::args#errors) for the error mapping).
///
/// ## On the wire
///
/// ```text
/// fn put(&mut self, key: String, data: Vec<u8>, log: File, n: u32) -> io::Result<(u64, File)>
///
/// request:  ["put", key, n]      then the scalar `data`, then the descriptor `log`
/// reply:    ["ok", u64]          then the descriptor
/// or:       ["error", "io", "No such file or directory (os error 2)", "not_found", "2"]
/// ```
///
/// When the request is wrong the reply is `["error", kind, message]` and the server keeps
/// serving:
///
/// | Situation | kind | message |
/// |---|---|---|
/// | no handler by that name | `unknown_message` | `unknown message "nope"` |
/// | wrong number of array elements | `bad_arguments` | `hello: expected 2 arguments (first_name, last_name), got 1` |
/// | an element does not parse | `bad_arguments` | ``add: parameter `a`: invalid digit found in string (got "x")`` |
/// | the handler returned `Err(e)` | `failed` (`io`, or the code of a [`WireError`]) | `e.to_string()` |
/// | the handler panicked | `panicked` | the panic message |
///
/// Out-of-band arguments are always read before the server answers, even when the inline ones
/// are wrong, so the stream stays in step (see [`args`](crate::args#keeping-the-stream-in-sync)).
///
/// ```
/// struct Calc;
///
/// #[fdserver::fdserver]
/// impl Calc {
///     fn add(&mut self, a: i32, b: i32) -> i32 {
///         a + b
///     }
///
///     fn checked_div(&mut self, a: i32, b: i32) -> Result<i32, String> {
///         a.checked_div(b).ok_or_else(|| format!("cannot divide {a} by {b}"))
///     }
/// }
///
/// let mut calc = Calc.start()?;
/// assert_eq!(calc.add(2, 3)?, 5);
/// let err = calc.checked_div(1, 0).unwrap_err();
/// assert_eq!(err.to_string(), "server error: failed: cannot divide 1 by 0");
///
/// // What a client in another language sees, through the raw handle:
/// let raw = calc.handle_mut();
/// assert_eq!(raw.call(["add", "40", "2"])?, ["42"]);
/// let err = raw.call(["add", "x", "2"]).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"server error: bad_arguments: add: parameter `a`: invalid digit found in string (got "x")"#
/// );
/// # Ok::<(), fdserver::Error>(())
/// ```
///
/// # Signal handlers and hooks
///
/// ```
/// use std::io::{BufRead, BufReader, Write};
/// use std::os::unix::net::UnixStream;
/// use fdserver::{Context, Signal};
///
/// #[derive(Default)]
/// struct Worker {
///     reloads: u32,
///     events: Option<UnixStream>,
///     initialized: bool,
/// }
///
/// #[fdserver::fdserver]
/// impl Worker {
///     fn watch(&mut self, events: UnixStream) {
///         self.events = Some(events);
///     }
///
///     fn report(&self) -> (u32, bool) {
///         (self.reloads, self.initialized)
///     }
///
///     /// Runs on the server loop, between messages, never in signal context.
///     #[fdserver(signal = "SIGHUP")]
///     fn reload(&mut self) {
///         self.reloads += 1;
///         if let Some(e) = &mut self.events {
///             let _ = writeln!(e, "reloaded");
///         }
///     }
///
///     #[fdserver(signal = "SIGUSR1", signal = "SIGUSR2")]
///     fn on_user_signal(&mut self, signal: Signal, ctx: &mut Context<'_>) {
///         if signal == Signal::SIGUSR2 {
///             ctx.quit();
///         }
///     }
///
///     /// In the child, before the loop: open files, reseed RNGs, start threads here.
///     #[fdserver(initialize)]
///     fn init(&mut self) -> std::io::Result<()> {
///         self.initialized = true;
///         Ok(())
///     }
/// }
///
/// let mut worker = Worker::default().start()?;
/// let (events, theirs) = UnixStream::pair()?;
/// worker.watch(theirs)?;
/// worker.signal(Signal::SIGHUP)?;
/// let mut line = String::new();
/// BufReader::new(events).read_line(&mut line)?; // the handler has run
/// assert_eq!(worker.report()?, (1, true));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A signal handler takes `&mut self` (or `&self`) and optionally `&mut Context<'_>` and/or
/// [`Signal`], and returns nothing. Signals are named as strings or identifiers
/// (`signal = "SIGUSR1"`, `signal = SIGUSR1`); SIGKILL and SIGSTOP (uncatchable), SIGSEGV,
/// SIGBUS, SIGFPE and SIGILL (raised by faulting instructions) and unknown names are compile
/// errors. A handled SIGHUP is no longer ignored; a handled SIGTERM or SIGINT no longer ends the
/// loop by itself (call `ctx.quit()`). A signal is handled on the loop, between messages:
/// observe a handler's effect through something it writes (as above), not through timing.
///
/// Hooks (at most one of each) take `&mut self` or `&self` and nothing else:
/// `#[fdserver(before_fork)]` runs in the parent just before the fork;
/// `#[fdserver(initialize)]` runs in the child before the loop and returns `()` or
/// `Result<(), E>` with `E: Into<Box<dyn Error + Send + Sync>>` (an error makes `start` fail
/// with [`RemoteErrorKind::Initialize`]);
/// `#[fdserver(finalize)]` runs in the child after the loop, however it ended.
///
/// With the `sandbox` feature, `#[fdserver(sandbox)]` marks a method that describes the
/// server's sandbox: it takes `&self` only and returns a `Sandbox` or an `Option<Sandbox>`
/// (`None`: no sandbox); it runs in the parent before each fork, and the sandbox takes effect
/// in the server after the `initialize` hook (see the `fdserver::sandbox` module). Without the
/// feature the attribute is a compile error that names it.
///
/// # Attributes
///
/// | On | Attribute | Effect |
/// |---|---|---|
/// | the impl | `#[fdserver(client = "Name")]` | name of the client type (default: the server's name + `Client`) |
/// | the impl | `#[fdserver(client_vis = "pub(crate)")]` | visibility of the client (default `pub`; at least that of the server type) |
/// | the impl or a method | `#[fdserver(typed_errors)]` | client methods of handlers returning `Result<T, E>` return `Result<T, CallError<E>>` (`E: WireError`) |
/// | a method | `#[fdserver(idempotent)]` | the typed pool may run a call of this handler once more, on another server, when its server fails |
/// | a method | `#[fdserver(name = "msg")]` | the message name |
/// | a method | `#[fdserver(skip)]` | not a handler |
/// | a method | `#[fdserver(signal = "SIGxxx")]` (repeatable) | a signal handler |
/// | a method | `#[fdserver(before_fork)]`, `#[fdserver(initialize)]`, `#[fdserver(finalize)]` | a lifecycle hook |
/// | a method | `#[fdserver(sandbox)]` | the server's sandbox (feature `sandbox`) |
///
/// # Compile-time errors
///
/// Misuse is reported at the offending tokens, with the impl block still emitted (and the rest
/// of the server generated) so that one mistake does not cascade: unknown attribute keys; a
/// receiver other than `&mut self` / `&self` (`self`, `self: Box<Self>`); generic, `async`,
/// `unsafe` or `extern` handlers; a function without a receiver that is neither a constructor
/// nor `#[fdserver(skip)]`; parameters that are patterns other than a name or `_`; parameter or
/// return types that cannot travel (references other than `&str`, `&[u8]`, `&Path`, `&OsStr`
/// parameters, any reference in a result, slices, arrays, tuples as parameters, nested
/// tuples, `impl Trait`, `dyn Trait`, pointers, `Self`, `Option` of a descriptor, a byte
/// payload, a list or a `Json`; a `Json<T>` without the `serde` feature, which says how to
/// enable it; in a `typed_errors` server, an error type that is not a [`WireError`];
/// other types without [`FromArg`](crate::args::FromArg) / [`ToArg`](crate::args::ToArg) are
/// reported by the compiler with a note on what is supported); two handlers with the same
/// message name; a handler whose name collides with a client method (`pid`, `stop`,
/// `stop_with`, `channel`, `handle`, `handle_mut`, `into_handle`, `set_timeout`, `signal`,
/// `from`, `into_connection`), or with a method of the generated pools (`get`, `call`,
/// `call_idempotent`, `call_retrying`, `status`, `size`, `revive`, `stop`, `start`,
/// `start_with`, `clone`, `deref`; the error says how to keep the message name with
/// `#[fdserver(name = "...")]`), or a method named `start` (or `start_async`); invalid,
/// uncatchable or duplicate signals;
/// hooks with parameters or the wrong return type; a `sandbox` hook taking `&mut self`; two hooks
/// of one kind; generic or trait impl blocks.
///
/// The generated code names everything by absolute path (`::fdserver::...`, `::core::...`) and
/// prefixes its locals with `__fdserver_`, so it compiles under `#![no_implicit_prelude]` and
/// next to your own `Result` alias.
pub use fdserver_macros::fdserver;

#[cfg(target_os = "linux")]
pub use args::Json;
#[cfg(all(target_os = "linux", feature = "tokio"))]
pub use asyncio::{
    AsyncChannel, AsyncClient, AsyncConnection, AsyncPool, AsyncPooled, AsyncServerHandle,
};
#[cfg(target_os = "linux")]
pub use channel::{Channel, DEFAULT_MAX_SCALAR};
#[cfg(target_os = "linux")]
pub use client::{ServerHandle, Shutdown, StopOptions, Stopped};
#[cfg(target_os = "linux")]
pub use connection::Connection;
#[cfg(target_os = "linux")]
pub use error::{BrokenCause, Error, Operation, ProtocolError, RemoteError, RemoteErrorKind};
#[cfg(target_os = "linux")]
/// Derives [`WireError`](trait@WireError) for an error enum or struct: see the trait.
pub use fdserver_macros::WireError;
#[cfg(target_os = "linux")]
pub use pool::{
    CallFailure, Client, Pool, PoolError, PoolOptions, Pooled, RestartPolicy, ServerState,
    ServerStatus,
};
#[cfg(all(target_os = "linux", feature = "sandbox"))]
pub use sandbox::Sandbox;
#[cfg(target_os = "linux")]
pub use serve::serve;
#[cfg(target_os = "linux")]
pub use server::{BoxError, Context, LoopEnd, Server};
#[cfg(target_os = "linux")]
pub use signal::{Signal, UnknownSignal};
#[cfg(target_os = "linux")]
pub use spawn::Spawn;
#[cfg(target_os = "linux")]
pub use start::{Builder, DEFAULT_CALL_TIMEOUT};
#[cfg(target_os = "linux")]
pub use wire::{Message, MessageBuf};
#[cfg(target_os = "linux")]
pub use wire_error::{CallError, WireError};
