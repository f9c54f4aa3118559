//! The MessageChannel wire format as pure functions over bytes (no I/O), plus the zero-copy
//! [`Message`] view. See the crate docs, "Wire format", for the bytes.

use crate::error::{Error, ProtocolError};

/// Largest array-message body: the length prefix is a `u16`.
pub const MAX_BODY: usize = u16::MAX as usize;

/// Appends the frame of an array message (`u16` BE body length, then every element followed by a
/// NUL) to `out`. On error `out` is left exactly as it was.
///
/// ```
/// let mut out = Vec::new();
/// fdserver::wire::encode_array(&mut out, ["hello", "world !!"]).unwrap();
/// assert_eq!(out, b"\x00\x0fhello\x00world !!\x00");
/// ```
pub fn encode_array<I, T>(out: &mut Vec<u8>, elements: I) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    for (index, e) in elements.into_iter().enumerate() {
        let e = e.as_ref();
        if e.contains(&0) {
            out.truncate(start);
            return Err(Error::ElementContainsNul { index });
        }
        out.extend_from_slice(e);
        out.push(0);
        let len = out.len() - start - 2;
        if len > MAX_BODY {
            // Count the rest so the error says how big the message would have been.
            out.truncate(start);
            return Err(Error::MessageTooLarge { len });
        }
    }
    let len = (out.len() - start - 2) as u16;
    out[start..start + 2].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The status of a success reply whose body is too large for an array message: the frame
/// `["ok_scalar"]` is followed by a scalar message holding the reply's whole body (`ok`, then
/// every value, each followed by a NUL byte), as an array body would, with a `u32` length.
pub const OK_SCALAR: &[u8] = b"ok_scalar";

/// Appends a success reply `["ok", elements...]` to `out`: an array message when its body fits
/// in 65535 bytes, else `["ok_scalar"]` and a scalar message holding that body (see
/// [`OK_SCALAR`]). An element containing NUL is an error and leaves `out` as it was.
pub(crate) fn encode_reply<I, T>(out: &mut Vec<u8>, elements: I) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    for (index, e) in elements.into_iter().enumerate() {
        let e = e.as_ref();
        if e.contains(&0) {
            out.truncate(start);
            return Err(Error::ElementContainsNul { index });
        }
        out.extend_from_slice(e);
        out.push(0);
    }
    let len = out.len() - start - 2;
    if len <= MAX_BODY {
        out[start..start + 2].copy_from_slice(&(len as u16).to_be_bytes());
        return Ok(());
    }
    // Rare: move the body behind the announcement and the scalar's header.
    let header = match scalar_header(len) {
        Ok(h) => h,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let mut head = Vec::with_capacity(2 + OK_SCALAR.len() + 1 + 4);
    head.extend_from_slice(&((OK_SCALAR.len() + 1) as u16).to_be_bytes());
    head.extend_from_slice(OK_SCALAR);
    head.push(0);
    head.extend_from_slice(&header);
    out.splice(start..start + 2, head);
    Ok(())
}

/// The 4-byte header of a scalar message of `len` bytes.
pub fn scalar_header(len: usize) -> Result<[u8; 4], Error> {
    u32::try_from(len)
        .map(u32::to_be_bytes)
        .map_err(|_| Error::ScalarTooLarge {
            len: len as u64,
            max: u32::MAX as u64,
        })
}

/// A reusable buffer that array messages are read into, so that reading a message allocates
/// nothing once the buffer has warmed up.
#[derive(Debug, Default, Clone)]
pub struct MessageBuf {
    pub(crate) body: Vec<u8>,
    /// End offset (exclusive, NUL not included) of every element.
    pub(crate) ends: Vec<u32>,
}

impl MessageBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer for bodies up to `bytes` long before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        MessageBuf {
            body: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(16),
        }
    }

    /// A buffer that can hold any message without growing (64 KiB body, 64 elements' offsets).
    pub fn with_max_capacity() -> Self {
        MessageBuf {
            body: Vec::with_capacity(MAX_BODY),
            ends: Vec::with_capacity(64),
        }
    }

    /// The message currently held.
    pub fn message(&self) -> Message<'_> {
        Message {
            body: &self.body,
            ends: &self.ends,
        }
    }

    /// Splits `self.body` into elements. On error the buffer holds an empty message.
    pub(crate) fn index(&mut self) -> Result<(), ProtocolError> {
        self.ends.clear();
        if self.body.is_empty() {
            return Ok(());
        }
        if self.body.last() != Some(&0) {
            self.body.clear();
            return Err(ProtocolError::MissingTerminator);
        }
        for (i, &b) in self.body.iter().enumerate() {
            if b == 0 {
                self.ends.push(i as u32);
            }
        }
        Ok(())
    }

    /// Decodes a complete body held in `body` (exposed for fuzzing and tests).
    pub fn decode_body(&mut self, body: &[u8]) -> Result<Message<'_>, ProtocolError> {
        self.body.clear();
        self.body.extend_from_slice(body);
        self.index()?;
        Ok(self.message())
    }
}

/// A received array message, borrowed from a [`MessageBuf`]: an ordered list of byte strings, the
/// first being the message's name.
///
/// ```
/// let mut buf = fdserver::MessageBuf::new();
/// let msg = buf.decode_body(b"hello\0Joe\0Dalton\0").unwrap();
/// assert_eq!(msg.name(), b"hello");
/// assert_eq!(msg.len(), 3);
/// assert_eq!(msg.str(2).unwrap(), "Dalton");
/// assert_eq!(msg.args().count(), 2);
/// ```
#[derive(Clone, Copy)]
pub struct Message<'a> {
    body: &'a [u8],
    ends: &'a [u32],
}

impl<'a> Message<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the message has no elements (a zero-length body).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Element `i`, if present.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize + 1
        };
        Some(&self.body[start..end])
    }

    /// The first element (the message name), or `b""` for an empty message.
    pub fn name(&self) -> &'a [u8] {
        self.get(0).unwrap_or(b"")
    }

    /// Element `i` as UTF-8: [`Error::MissingElement`] or [`Error::InvalidUtf8`] otherwise (both
    /// reach a client as `bad_arguments` when a handler returns them with `?`).
    pub fn str(&self, i: usize) -> Result<&'a str, Error> {
        let bytes = self.get(i).ok_or(Error::MissingElement {
            index: i,
            len: self.len(),
        })?;
        std::str::from_utf8(bytes).map_err(|error| Error::InvalidUtf8 { index: i, error })
    }

    /// All elements in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let this = *self;
        (0..this.len()).map(move |i| this.get(i).unwrap_or(b""))
    }

    /// The elements after the name.
    pub fn args(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().skip(1)
    }

    /// Copies the elements out.
    pub fn to_vec(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// Copies the elements out as strings, naming the first element that is not UTF-8.
    pub fn to_strings(&self) -> Result<Vec<String>, Error> {
        (0..self.len())
            .map(|i| self.str(i).map(str::to_owned))
            .collect()
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_array(&mut out, v).unwrap();
        out
    }

    #[test]
    fn passenger_vectors() {
        assert_eq!(
            enc(&["hello", "world !!"]),
            b"\x00\x0fhello\x00world !!\x00"
        );
        assert_eq!(enc(&[""]), b"\x00\x01\x00");
        assert_eq!(enc(&["", "foo"]), b"\x00\x05\x00foo\x00");
        assert_eq!(enc(&[]), b"\x00\x00");
    }

    #[test]
    fn nul_and_size_refused_without_writing() {
        let mut out = b"keep".to_vec();
        assert!(matches!(
            encode_array(&mut out, ["a", "b\0c"]),
            Err(Error::ElementContainsNul { index: 1 })
        ));
        assert_eq!(out, b"keep");
        let big = "x".repeat(MAX_BODY);
        assert!(matches!(
            encode_array(&mut out, [&big]),
            Err(Error::MessageTooLarge { .. })
        ));
        assert_eq!(out, b"keep");
        // Exactly at the limit is fine.
        let fits = "x".repeat(MAX_BODY - 1);
        encode_array(&mut out, [&fits]).unwrap();
        assert_eq!(out.len(), 4 + 2 + MAX_BODY);
    }

    #[test]
    fn decode() {
        let mut buf = MessageBuf::new();
        let m = buf.decode_body(b"\0foo\0").unwrap();
        assert_eq!(m.to_vec(), vec![b"".to_vec(), b"foo".to_vec()]);
        assert!(buf.decode_body(b"").unwrap().is_empty());
        assert_eq!(
            buf.decode_body(b"abc\0junk").unwrap_err(),
            ProtocolError::MissingTerminator
        );
        let m = buf.decode_body(b"\xff\0").unwrap();
        assert!(matches!(m.str(0), Err(Error::InvalidUtf8 { index: 0, .. })));
    }
}
