//! Issue 6, property tests of the codec (proptest):
//!
//! * any sequence of arrays, scalars and descriptors written is read back equal, whether the
//!   writer is a `Channel` or raw bytes cut at arbitrary points, over blocking or non-blocking
//!   sockets, with or without deadlines;
//! * any byte stream (with descriptors attached anywhere) fed to the reader yields messages or
//!   clean errors: no panic, no hang once the peer has closed, no allocation beyond the
//!   configured limits (measured with a counting allocator), no descriptor leaked;
//! * the frame decoder inverts the encoder.
//!
//! Every test here holds `serial()`: they count this process's descriptors.
//! `FDSERVER_SOAK=1` multiplies the number of cases by 20.

mod reliability_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use fdserver::wire::{encode_array, scalar_header, MAX_BODY};
use fdserver::{Channel, Error, MessageBuf, ProtocolError};
use fdserver_tests::{open_fds, serial};
use proptest::prelude::*;
use reliability_common::*;

// -------------------------------------------------------------------------------------------
// A counting allocator: per-thread live bytes and their peak, to check what a read allocates.
// -------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now)
            }
        });
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping only
// touches const-initialised thread-locals without destructors (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded: `ptr` was allocated by System with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded: `ptr` was allocated by System with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the peak of bytes it held allocated (on this thread)
/// above what was live when it started.
fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, (peak - start).max(0) as usize)
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: if soak() { n * 20 } else { n },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// -------------------------------------------------------------------------------------------
// Strategies
// -------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Item {
    Array(Vec<Vec<u8>>),
    Scalar(Vec<u8>),
    Fd,
}

fn element() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(1u8..=255, 0..24),
        1 => proptest::collection::vec(1u8..=255, 0..2000),
        1 => Just(Vec::new()),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => proptest::collection::vec(element(), 0..8).prop_map(Item::Array),
        2 => prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => proptest::collection::vec(any::<u8>(), 0..100_000),
        ]
        .prop_map(Item::Scalar),
        1 => Just(Item::Fd),
    ]
}

#[derive(Debug, Clone, Copy)]
struct SocketMode {
    nonblocking: bool,
    deadline: bool,
}

fn socket_mode() -> impl Strategy<Value = SocketMode> {
    (any::<bool>(), any::<bool>()).prop_map(|(nonblocking, deadline)| SocketMode {
        nonblocking,
        deadline,
    })
}

fn set_nonblocking(fd: impl AsFd) {
    let fd = fd.as_fd().as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an open descriptor.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert!(flags >= 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK), 0);
    }
}

fn channel(fd: OwnedFd, mode: SocketMode) -> Channel {
    if mode.nonblocking {
        set_nonblocking(&fd);
    }
    let mut ch = Channel::new(fd);
    if mode.deadline {
        ch.set_timeout(Some(Duration::from_secs(30)));
    }
    ch
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    (a.into(), b.into())
}

/// The descriptors sent for `Fd` items: pipes whose read end we keep, so the identity of what
/// arrives can be checked.
fn make_fds(items: &[Item]) -> Vec<(OwnedFd, OwnedFd)> {
    items
        .iter()
        .filter(|i| matches!(i, Item::Fd))
        .map(|_| pipe())
        .collect()
}

/// Reads `items` back from `reader` in order and checks each is what was written.
fn read_back(reader: &mut Channel, items: &[Item], fds: &[(OwnedFd, OwnedFd)]) {
    let mut buf = MessageBuf::new();
    let mut scalar = Vec::new();
    let mut fd_index = 0;
    for (n, item) in items.iter().enumerate() {
        match item {
            Item::Array(elements) => {
                assert!(
                    reader.read_into(&mut buf).unwrap(),
                    "item {n}: end of stream"
                );
                assert_eq!(&buf.message().to_vec(), elements, "item {n}");
            }
            Item::Scalar(data) => {
                assert!(
                    reader.read_scalar_into(&mut scalar).unwrap(),
                    "item {n}: end of stream"
                );
                assert!(scalar == *data, "item {n}: scalar differs");
            }
            Item::Fd => {
                let fd = reader.recv_fd().unwrap().expect("a descriptor");
                assert_eq!(file_id(&fd), file_id(&fds[fd_index].1), "item {n}");
                fd_index += 1;
            }
        }
    }
    // And then a clean end of stream.
    assert!(!reader.read_into(&mut buf).unwrap());
}

// -------------------------------------------------------------------------------------------
// Round trips
// -------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(64))]

    /// Written with `Channel`, read with `Channel`.
    #[test]
    fn channel_round_trip(items in proptest::collection::vec(item(), 0..24),
                          wmode in socket_mode(), rmode in socket_mode()) {
        let _s = serial();
        let before = open_fds();
        let fds = make_fds(&items);
        let (a, b) = socketpair();
        let mut writer = channel(a, wmode);
        let mut reader = channel(b, rmode);
        std::thread::scope(|s| {
            let items = &items;
            let fds = &fds;
            s.spawn(move || {
                let mut fd_index = 0;
                for item in items {
                    match item {
                        Item::Array(e) => writer.write_array(e).unwrap(),
                        Item::Scalar(d) => writer.write_scalar(d).unwrap(),
                        Item::Fd => {
                            writer.send_fd(&fds[fd_index].1).unwrap();
                            fd_index += 1;
                        }
                    }
                }
                drop(writer);
            });
            read_back(&mut reader, items, fds);
        });
        drop(reader);
        drop(fds);
        prop_assert_eq!(open_fds(), before);
    }

    /// Written as raw bytes cut at arbitrary points (descriptors with `sendmsg`), read with
    /// `Channel`: the reader reassembles partial reads and never reads past a message.
    #[test]
    fn raw_split_writes_round_trip(items in proptest::collection::vec(item(), 0..24),
                                   cuts in proptest::collection::vec(1usize..300, 1..16),
                                   rmode in socket_mode()) {
        let _s = serial();
        let before = open_fds();
        let fds = make_fds(&items);
        let (a, b) = socketpair();
        let mut reader = channel(b, rmode);
        std::thread::scope(|s| {
            let items = &items;
            let fds = &fds;
            let cuts = &cuts;
            s.spawn(move || {
                let mut fd_index = 0;
                let mut cut = cuts.iter().cycle();
                for item in items {
                    let mut bytes = Vec::new();
                    match item {
                        Item::Array(e) => encode_array(&mut bytes, e).unwrap(),
                        Item::Scalar(d) => {
                            bytes.extend_from_slice(&scalar_header(d.len()).unwrap());
                            bytes.extend_from_slice(d);
                        }
                        Item::Fd => {
                            send_with_fds(a.as_fd(), &[0], &[fds[fd_index].1.as_raw_fd()])
                                .unwrap();
                            fd_index += 1;
                            continue;
                        }
                    }
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        let n = (*cut.next().unwrap()).min(rest.len());
                        raw_write(a.as_fd(), &rest[..n]).unwrap();
                        rest = &rest[n..];
                    }
                }
                drop(a);
            });
            read_back(&mut reader, items, fds);
        });
        drop(reader);
        drop(fds);
        prop_assert_eq!(open_fds(), before);
    }

    /// The decoder inverts the encoder, for every message the encoder accepts.
    #[test]
    fn encode_decode_inverse(elements in proptest::collection::vec(element(), 0..40)) {
        let _s = serial();
        let mut out = Vec::new();
        match encode_array(&mut out, &elements) {
            Ok(()) => {
                let len = u16::from_be_bytes([out[0], out[1]]) as usize;
                prop_assert_eq!(len, out.len() - 2);
                let mut buf = MessageBuf::new();
                let msg = buf.decode_body(&out[2..]).unwrap();
                prop_assert_eq!(msg.to_vec(), elements);
            }
            Err(Error::MessageTooLarge { len }) => {
                prop_assert!(len > MAX_BODY);
                prop_assert!(out.is_empty());
            }
            Err(e) => prop_assert!(false, "{:?}", e),
        }
    }

    /// Arbitrary bodies: decoded, or refused for the missing final NUL; never a panic.
    #[test]
    fn decode_arbitrary_bodies(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _s = serial();
        let mut buf = MessageBuf::new();
        match buf.decode_body(&body) {
            Ok(msg) => {
                prop_assert!(body.is_empty() || body.last() == Some(&0));
                let mut again = Vec::new();
                encode_array(&mut again, msg.to_vec()).unwrap();
                prop_assert_eq!(&again[2..], &body[..]);
            }
            Err(e) => {
                prop_assert_eq!(e, ProtocolError::MissingTerminator);
                prop_assert!(body.last() != Some(&0));
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Hostile byte streams
// -------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Op {
    Array,
    Scalar,
    Fd,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Array), Just(Op::Scalar), Just(Op::Fd)]
}

/// A chunk of the stream: bytes (biased towards frame-like headers) with 0 to 6 descriptors.
fn chunk() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let bytes = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(prop_oneof![Just(0u8), Just(0xff), any::<u8>()], 0..512),
        // A header announcing a large array or scalar, with a few bytes after it.
        1 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(n, rest)| {
            let mut v = n.to_be_bytes().to_vec();
            v.extend(rest);
            v
        }),
    ];
    (bytes, prop_oneof![6 => Just(0usize), 1 => 1usize..=6])
}

fn max_scalar() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![Just(None), (0u64..200_000).prop_map(Some)]
}

proptest! {
    #![proptest_config(cases(256))]

    /// Any stream, any order of reads: messages or clean errors, every read loop ends once the
    /// peer has closed, allocation stays bounded, no descriptor leaks.
    #[test]
    fn hostile_stream(chunks in proptest::collection::vec(chunk(), 0..32),
                      ops in proptest::collection::vec(op(), 1..8),
                      limit in max_scalar(),
                      rmode in socket_mode()) {
        let _s = serial();
        let before = open_fds();
        let (a, b) = socketpair();
        let null = std::fs::File::open("/dev/null").unwrap();
        let stream_len = chunks.iter().map(|(b, _)| b.len().max(1)).sum::<usize>();
        std::thread::scope(|s| {
            let chunks = &chunks;
            let null = &null;
            s.spawn(move || {
                for (bytes, nfds) in chunks {
                    let fds = vec![null.as_raw_fd(); *nfds];
                    let data: &[u8] = if bytes.is_empty() { &[0] } else { bytes };
                    let n = if fds.is_empty() {
                        raw_write(a.as_fd(), data).map(|()| data.len())
                    } else {
                        send_with_fds(a.as_fd(), data, &fds)
                    };
                    // The reader may have stopped (and closed) early: stop writing then.
                    let rest_ok = match n {
                        Ok(n) if n < data.len() => raw_write(a.as_fd(), &data[n..]).is_ok(),
                        Ok(_) => true,
                        Err(_) => false,
                    };
                    if !rest_ok {
                        break;
                    }
                }
                drop(a);
            });
            let mut reader = channel(b, rmode);
            if let Some(max) = limit {
                reader.set_max_scalar_size(max);
            }
            let ((steps, _), peak) = peak_allocation(|| {
                let mut buf = MessageBuf::new();
                let mut scalar = Vec::new();
                let mut steps = 0usize;
                let mut outcomes = Vec::with_capacity(64);
                for op in ops.iter().cycle() {
                    steps += 1;
                    assert!(steps <= stream_len + 2, "read loop did not end");
                    let r = match op {
                        Op::Array => reader.read_into(&mut buf),
                        Op::Scalar => reader.read_scalar_into(&mut scalar),
                        Op::Fd => reader.recv_fd().map(|fd| fd.is_some()),
                    };
                    let broken = reader.is_broken();
                    match r {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(Error::Broken { .. }) => panic!("Broken without an earlier breaking error"),
                        Err(_) if broken => {
                            assert!(matches!(reader.read_into(&mut buf), Err(Error::Broken { .. })));
                            break;
                        }
                        Err(e) => {
                            if outcomes.len() < 64 {
                                outcomes.push(e.to_string().len());
                            }
                        }
                    }
                }
                (steps, outcomes)
            });
            let bound = 4 * (MAX_BODY + 1) + 16 * stream_len + (1 << 16);
            assert!(
                peak <= bound,
                "reading a {stream_len}-byte stream allocated {peak} bytes (bound {bound}, limit {limit:?})"
            );
            assert!(steps >= 1);
        });
        drop(null);
        prop_assert_eq!(open_fds(), before);
    }
}

/// The allocation bound is not vacuous: a scalar header announcing 60 MiB (under the default
/// 64 MiB limit) followed by 10 bytes and end of stream allocates about 64 KiB, not 60 MiB.
#[test]
fn announced_scalar_length_is_not_allocated_up_front() {
    let _s = serial();
    let (a, b) = socketpair();
    let mut stream = (60u32 << 20).to_be_bytes().to_vec();
    stream.extend_from_slice(b"ten bytes!");
    raw_write(a.as_fd(), &stream).unwrap();
    drop(a);
    let mut reader = Channel::new(b);
    let mut out = Vec::new();
    let (r, peak) = peak_allocation(|| reader.read_scalar_into(&mut out));
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::UnexpectedEof))),
        "{r:?}"
    );
    assert!(peak <= 1 << 17, "allocated {peak} bytes");

    // And a read that does get all 60 MiB works (the limit is about what is refused, not
    // what is possible).
    let (a, b) = socketpair();
    let data = pseudo_random(7, 60 << 20);
    std::thread::scope(|s| {
        let data = &data;
        s.spawn(move || {
            let mut w = Channel::new(a);
            w.write_scalar(data).unwrap();
        });
        let mut reader = Channel::new(b);
        let mut out = Vec::new();
        assert!(reader.read_scalar_into(&mut out).unwrap());
        assert!(out == *data);
    });
}

/// A closed peer never hangs a reader, at any point of any message, with any operation.
#[test]
fn closed_peer_at_every_cut_point() {
    let _s = serial();
    let before = open_fds();
    let mut stream = Vec::new();
    encode_array(&mut stream, ["hello", "world !!", ""]).unwrap();
    stream.extend_from_slice(&scalar_header(5).unwrap());
    stream.extend_from_slice(b"abcde");
    for cut in 0..=stream.len() {
        for op in [Op::Array, Op::Scalar, Op::Fd] {
            let (a, b) = socketpair();
            raw_write(a.as_fd(), &stream[..cut]).unwrap();
            drop(a);
            let mut reader = Channel::new(b);
            let mut buf = MessageBuf::new();
            let mut scalar = Vec::new();
            // Read until the end; each loop must finish.
            for _ in 0..=stream.len() + 1 {
                let r = match op {
                    Op::Array => reader.read_into(&mut buf),
                    Op::Scalar => reader.read_scalar_into(&mut scalar),
                    Op::Fd => reader.recv_fd().map(|f| f.is_some()),
                };
                if !matches!(r, Ok(true)) {
                    break;
                }
            }
        }
    }
    assert_eq!(open_fds(), before);
}
