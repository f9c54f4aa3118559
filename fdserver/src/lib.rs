//! # fdserver: fork-based helper servers over a UNIX socket pair
//!
//! A process forks a **server** child connected to it, and only to it, by a UNIX socket pair.
//! The two talk in **messages** (ordered lists of strings whose first element is the message
//! name), **scalars** (opaque byte strings of any size) and **file descriptors**, in the exact
//! wire format of Phusion Passenger's `MessageChannel`, so Ruby and C++ peers that speak it can
//! talk to an fdserver server.
//!
//! * [`Channel`]: the message channel (arrays, scalars, descriptors, deadlines).
//! * [`Server`]: what a server is; [`Server::start`] forks one and returns its client,
//!   [`serve`] runs one in the current process (e.g. on an inherited fd 3).
//! * [`ServerHandle`]: the parent's handle: `pid`, `call`, raw channel, `stop`.
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
//! ## Wire format
//!
//! Byte-for-byte Passenger's `MessageChannel`, on a `SOCK_STREAM` socket:
//!
//! * **Array message**: `u16` big-endian body length, then every element followed by a NUL
//!   byte: `["hello", "world !!"]` is `00 0F 68 65 6C 6C 6F 00 77 6F 72 6C 64 20 21 21 00`.
//!   Elements cannot contain NUL; the body is at most 65535 bytes. Writing either is an error
//!   and writes nothing. A zero-length body is the empty message. A body that does not end in NUL
//!   is a [`ProtocolError::MissingTerminator`] (Passenger silently dropped the trailing bytes).
//! * **Scalar message**: `u32` big-endian length, then the bytes. Reads refuse lengths over a
//!   limit (default 64 MiB), which breaks the channel.
//! * **File descriptor**: one `sendmsg` of exactly one data byte `00` with an `SCM_RIGHTS`
//!   control message holding one descriptor.
//! * **End of stream** at a message boundary reads as "no message" (`None` / `Ok(false)`); in the
//!   middle of a message it is [`ProtocolError::UnexpectedEof`].
//!
//! ## Replies and errors
//!
//! fdserver adds one convention on top: every reply to a request is an array message whose first
//! element is a status.
//!
//! * `["ok", value, ...]`: success; scalars and descriptors the handler sends follow it.
//! * `["error", kind, message]`: failure, where `kind` is one of `unknown_message`,
//!   `bad_arguments`, `failed`, `panicked`, `protocol` (a malformed request) or `initialize`
//!   (see [`RemoteErrorKind`]). After any of these the server keeps serving, except after a
//!   handler panicked part-way through writing its reply: then the stream cannot be repaired, so
//!   the server closes it and exits with status 101.
//!
//! A forked server sends `["ready"]` once `initialize_server` succeeded (or
//! `["error", "initialize", message]`); [`Server::start`] consumes it. [`serve`] on an inherited
//! socket sends nothing unprompted.
//!
//! ## Signals
//!
//! A forked server resets every signal disposition to its default and ignores SIGHUP, unless it
//! declares a SIGHUP handler. The signals it declares in [`Server::SIGNALS`], plus SIGTERM and
//! SIGINT, are blocked except while the loop waits for a message (`ppoll`), so their handlers run
//! on the loop with `&mut self`, between messages, never in signal context. SIGTERM and SIGINT
//! without a declared handler end the loop cleanly: `finalize_server` runs and the server exits
//! with status 0.
//!
//! ## Descriptors
//!
//! Every descriptor fdserver creates is close-on-exec; received ones too (`MSG_CMSG_CLOEXEC`).
//! Sends use `MSG_NOSIGNAL`, so a dead peer is an error, not a SIGPIPE. A truncated control
//! message is an error and the descriptors that did arrive are closed. A forked server closes
//! every inherited descriptor except 0, 1, 2, its socket and those given to
//! [`Builder::keep_fd`], so **open files and sockets in `initialize_server`, not before `start`**.
//!
//! ## Fork safety
//!
//! [`Server::start`] calls `fork`. In a multi-threaded process (every `cargo test` binary is one)
//! only the calling thread exists in the child, and whatever locks other threads held at that
//! moment stay locked forever there. fdserver's own path from `fork` to the server loop makes only
//! async-signal-safe system calls: everything it needs (buffers, descriptor lists, signal sets) is
//! prepared in the parent, and all signals are blocked across the `fork`.
//!
//! Your code in the child (`initialize_server`, handlers, `finalize_server`) runs under these
//! rules when the parent has other threads:
//!
//! * **Safe**: system calls; allocation with the system allocator (glibc resets its malloc locks
//!   in the child) or with an allocator that registers fork handlers (jemalloc, mimalloc do);
//!   everything owned by the server value itself; threads you start in `initialize_server`.
//! * **Not safe**: any lock another thread might have held at the fork: a `static Mutex`, a
//!   logger's lock, `std::io::stdout()`/`stderr()` if another thread prints concurrently (the child
//!   flushes them at exit), `std::env::set_var`; thread pools and async runtimes created before
//!   the fork (their threads do not exist in the child).
//! * **Reseed** random number generators in `initialize_server`: the child starts with a copy of
//!   the parent's state (Passenger 2.2 learned this the hard way).
//! * The server value is copied into the child by `fork`. The child never drops it (it ends with
//!   `_exit` after `finalize_server`); the parent keeps its own copy, which `start` borrows.
//!
//! ## Compared with Passenger's `AbstractServer`
//!
//! Unknown messages and failing handlers reach the client as typed errors and the server keeps
//! serving; a user's SIGHUP handler runs; `stop` escalates close → SIGTERM → SIGKILL waiting on
//! a pidfd (no sleeps, no polling loops) and always reaps, so no zombie is left; clean shutdowns
//! exit 0; a dead server makes the next call fail at once with its exit status instead of hanging.

#![warn(missing_docs)]

mod channel;
mod client;
mod error;
mod server;
mod sys;
pub mod wire;

pub use channel::{Channel, DEFAULT_MAX_SCALAR};
pub use client::{ServerHandle, Shutdown, StopOptions, Stopped};
pub use error::{Error, ProtocolError, RemoteError, RemoteErrorKind};
pub use server::{serve, BoxError, Builder, Context, LoopEnd, Server, Signal};
pub use wire::{Message, MessageBuf};
