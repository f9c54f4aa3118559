//! The array-message frame decoder: `MessageBuf::decode_body` on arbitrary bytes.
//!
//! Properties checked on every input:
//! * no panic, whatever the bytes;
//! * `Err` only for `MissingTerminator`, exactly when the body is non-empty and does not end in
//!   NUL, and the buffer then holds the empty message;
//! * on `Ok`, every accessor agrees with every other (`len`, `get`, `iter`, `args`, `name`,
//!   `str`, `to_vec`, `to_strings`, `Debug`), no element contains NUL, and re-encoding the
//!   elements gives back exactly the input (the decoder is the encoder's inverse);
//! * a buffer reused across inputs (one per thread, kept between runs) never leaks state from
//!   the previous message.
#![no_main]

use std::cell::RefCell;

use fdserver::wire::{encode_array, MAX_BODY};
use fdserver::{MessageBuf, ProtocolError};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static REUSED: RefCell<MessageBuf> = RefCell::new(MessageBuf::new());
}

fn check(buf: &mut MessageBuf, data: &[u8]) {
    match buf.decode_body(data) {
        Ok(msg) => {
            assert!(data.is_empty() || data.last() == Some(&0));
            let elems = msg.to_vec();
            assert_eq!(elems.len(), msg.len());
            assert_eq!(msg.is_empty(), data.is_empty());
            assert_eq!(msg.len(), data.iter().filter(|&&b| b == 0).count());
            assert_eq!(msg.iter().len(), msg.len());
            assert_eq!(msg.args().count(), msg.len().saturating_sub(1));
            assert_eq!(msg.name(), elems.first().map(Vec::as_slice).unwrap_or(b""));
            assert!(msg.get(msg.len()).is_none());
            for (i, e) in elems.iter().enumerate() {
                assert!(!e.contains(&0));
                assert_eq!(msg.get(i), Some(e.as_slice()));
                match msg.str(i) {
                    Ok(s) => assert_eq!(s.as_bytes(), e.as_slice()),
                    Err(fdserver::Error::InvalidUtf8 { index, .. }) => {
                        assert_eq!(index, i);
                        assert!(std::str::from_utf8(e).is_err());
                    }
                    Err(other) => panic!("str({i}) failed with {other:?}"),
                }
            }
            match msg.to_strings() {
                Ok(v) => assert!(v
                    .iter()
                    .map(String::as_bytes)
                    .eq(elems.iter().map(Vec::as_slice))),
                Err(e) => assert!(matches!(e, fdserver::Error::InvalidUtf8 { .. })),
            }
            let _ = format!("{msg:?}");

            let mut out = Vec::new();
            match encode_array(&mut out, &elems) {
                Ok(()) => {
                    assert_eq!(&out[2..], data, "decode/encode round trip");
                    assert_eq!(
                        usize::from(u16::from_be_bytes([out[0], out[1]])),
                        data.len()
                    );
                }
                Err(fdserver::Error::MessageTooLarge { .. }) => assert!(data.len() > MAX_BODY),
                Err(e) => panic!("re-encoding decoded elements failed: {e:?}"),
            }
        }
        Err(e) => {
            assert_eq!(e, ProtocolError::MissingTerminator);
            assert!(!data.is_empty() && data.last() != Some(&0));
            assert!(buf.message().is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(&mut MessageBuf::new(), data);
    REUSED.with(|b| {
        let mut b = b.borrow_mut();
        check(&mut b, data);
        // And a prefix, decoded into the same buffer right after: nothing may carry over.
        check(&mut b, &data[..data.len() / 2]);
    });
});
