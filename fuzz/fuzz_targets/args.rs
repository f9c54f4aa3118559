//! The typed argument parsers (`fdserver::args`) on arbitrary elements, and the code
//! `#[fdserver]` generates for a server, fed arbitrary requests through `fdserver::serve` on a
//! socket pair.
//!
//! Input layout: `[selector] [body...]`. The body is split at NUL bytes into elements (as the
//! wire does).
//!
//! 1. Every element goes through `FromArg::from_arg` for each inline type (integers, floats,
//!    non-zero integers, addresses, `bool`, `char`, `String`, `PathBuf`, `OsString`, nested
//!    `Option`s). No panic; and whatever parses re-encodes (`ToArg`) to an element without NUL
//!    that parses back to the same value.
//! 2. `selector % 8` picks a handler of the `Typed` server below, the elements are its
//!    arguments; `selector / 8 % 4` picks what follows the array (nothing, a scalar made of the
//!    body, a descriptor, another array), then the writing end is shut. The server must answer
//!    `ok` or a typed error (`bad_arguments`, `protocol`, `unknown_message`), never `panicked`,
//!    and `serve` must return.
#![no_main]

use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::{NonZeroI64, NonZeroU32, NonZeroU8};
use std::os::fd::AsFd;
use std::path::PathBuf;

use fdserver::args::{Encoded, FromArg, Received, ToArg};
use fdserver::{Channel, MessageBuf};
use libfuzzer_sys::fuzz_target;

/// `from_arg`, then if it parsed: `to_arg` gives an element without NUL that parses back equal.
fn round_trip<T: for<'a> FromArg<'a> + ToArg + Debug>(element: &[u8], same: impl Fn(&T, &T) -> bool) {
    let Ok(v) = T::from_arg(Received::Element(element)) else {
        return;
    };
    let encoded = match v.to_arg() {
        Encoded::Element(e) => e.as_bytes().to_vec(),
        other => panic!("inline type encoded as {other:?}"),
    };
    assert!(
        !encoded.contains(&0),
        "{v:?} encodes to an element with NUL: {encoded:?}"
    );
    let back = T::from_arg(Received::Element(&encoded))
        .unwrap_or_else(|e| panic!("{v:?} encoded as {encoded:?} does not parse back: {e}"));
    assert!(same(&v, &back), "{v:?} -> {encoded:?} -> {back:?}");
}

fn eq<T: PartialEq>(a: &T, b: &T) -> bool {
    a == b
}

fn parsers(e: &[u8]) {
    round_trip::<i8>(e, eq);
    round_trip::<i16>(e, eq);
    round_trip::<i32>(e, eq);
    round_trip::<i64>(e, eq);
    round_trip::<i128>(e, eq);
    round_trip::<isize>(e, eq);
    round_trip::<u8>(e, eq);
    round_trip::<u16>(e, eq);
    round_trip::<u32>(e, eq);
    round_trip::<u64>(e, eq);
    round_trip::<u128>(e, eq);
    round_trip::<usize>(e, eq);
    round_trip::<f32>(e, |a: &f32, b: &f32| {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    });
    round_trip::<f64>(e, |a: &f64, b: &f64| {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    });
    round_trip::<NonZeroU8>(e, eq);
    round_trip::<NonZeroU32>(e, eq);
    round_trip::<NonZeroI64>(e, eq);
    round_trip::<IpAddr>(e, eq);
    round_trip::<Ipv4Addr>(e, eq);
    round_trip::<Ipv6Addr>(e, eq);
    round_trip::<SocketAddr>(e, eq);
    round_trip::<bool>(e, eq);
    round_trip::<char>(e, eq);
    round_trip::<String>(e, eq);
    round_trip::<PathBuf>(e, eq);
    round_trip::<OsString>(e, eq);
    round_trip::<Option<i32>>(e, eq);
    round_trip::<Option<String>>(e, eq);
    round_trip::<Option<Option<String>>>(e, eq);
    round_trip::<Option<Option<u8>>>(e, eq);
    round_trip::<Option<PathBuf>>(e, eq);
    round_trip::<Option<char>>(e, eq);
    round_trip::<Option<bool>>(e, eq);
}

struct Typed;

#[fdserver::fdserver]
impl Typed {
    fn ints(&mut self, a: i32, b: u64, c: i8, d: u128) -> (i32, u64, i8, u128) {
        (a, b, c, d)
    }
    fn floats(&mut self, a: f64, b: f32) -> (f64, f32) {
        (a, b)
    }
    fn text(&mut self, s: String, c: char, b: bool) -> (String, char, bool) {
        (s, c, b)
    }
    fn paths(&mut self, p: PathBuf, o: OsString) -> (PathBuf, OsString) {
        (p, o)
    }
    fn options(
        &mut self,
        a: Option<u16>,
        b: Option<String>,
        c: Option<Option<i64>>,
    ) -> (Option<u16>, Option<String>, Option<Option<i64>>) {
        (a, b, c)
    }
    fn addrs(
        &mut self,
        ip: IpAddr,
        sa: SocketAddr,
        nz: NonZeroU32,
    ) -> (IpAddr, SocketAddr, NonZeroU32) {
        (ip, sa, nz)
    }
    fn bytes(&mut self, n: u32, data: Vec<u8>) -> (u32, usize) {
        (n, data.len())
    }
    fn file(&mut self, f: File, tag: String) -> (String, bool) {
        (tag, f.metadata().is_ok())
    }
}

const NAMES: [&str; 8] = [
    "ints", "floats", "text", "paths", "options", "addrs", "bytes", "file",
];

fn through_server(selector: u8, elements: &[&[u8]], body: &[u8]) {
    let (mut client, mut ch) = Channel::pair().expect("socketpair");
    client.set_timeout(Some(std::time::Duration::from_secs(10)));
    let server = std::thread::spawn(move || {
        ch.set_max_scalar_size(1 << 16);
        fdserver::serve(&mut Typed, ch)
    });
    let name = NAMES[usize::from(selector % 8)];
    let mut request: Vec<&[u8]> = vec![name.as_bytes()];
    request.extend_from_slice(elements);
    let sent = client.write_array(&request).is_ok();
    // Bytes sent after the request: a handler that did not ask for them reads them as further
    // requests (each can get a reply, at most one per two bytes).
    let mut extra = 0;
    if sent {
        match selector / 8 % 4 {
            1 => {
                let _ = client.write_scalar(body);
                extra = 4 + body.len();
            }
            2 => {
                let f = File::open("/dev/null").expect("open /dev/null");
                let _ = client.send_fd(f.as_fd());
                extra = 1;
            }
            3 => {
                let _ = client.write_array(["text", "x", "y", "true"]);
                extra = 2 + 14;
            }
            _ => {}
        }
    }
    // SAFETY: shutdown(2) on our own socket: the server sees end of stream after our bytes.
    unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&client), libc::SHUT_WR) };
    let mut buf = MessageBuf::new();
    let mut replies = 0;
    loop {
        match client.read_into(&mut buf) {
            Ok(true) => {
                replies += 1;
                let m = buf.message();
                match m.name() {
                    b"ok" => {}
                    b"error" => {
                        let kind = m.get(1).unwrap_or(b"");
                        assert!(
                            matches!(
                                kind,
                                b"bad_arguments" | b"protocol" | b"unknown_message" | b"failed"
                            ),
                            "unexpected error reply {m:?} to {name} {elements:?}"
                        );
                    }
                    _ => panic!("reply {m:?} is neither ok nor error"),
                }
                assert!(replies <= 1 + extra.div_ceil(2), "{replies} replies");
            }
            Ok(false) => break,
            // Out-of-band reply values or a broken stream: stop reading.
            Err(_) => break,
        }
    }
    drop(client);
    let end = server.join().expect("serve panicked");
    assert!(end.is_ok(), "serve failed: {end:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let elements: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    for e in &elements {
        parsers(e);
    }
    if body.len() < 60_000 {
        through_server(selector, &elements, body);
    }
});
