//! Message framing of the xenstore protocol (`io/xs_wire.h`,
//! `docs/misc/xenstore.txt`): encoding requests, reassembling messages from
//! a byte stream, and parsing payloads.
//!
//! Every message is a 16-byte `struct xsd_sockmsg` header in native byte
//! order followed by `len` payload bytes, `len <= XENSTORE_PAYLOAD_MAX` in
//! both directions. Nothing here trusts the other side: an oversize header,
//! a missing NUL or invalid UTF-8 becomes an [`XsError::Malformed`], never a
//! panic.

use alloc::string::String;
use alloc::vec::Vec;

use super::XsError;
use crate::abi::xs_wire::{msg_type, XsdSockmsg, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE};
use crate::error::{XsErrno, XsMalformed};
use crate::Result;

/// One complete message: its header and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The header as received (`len` equals `payload.len()`).
    pub header: XsdSockmsg,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// A watch event (`XS_WATCH_EVENT`, payload `<epath>|<token>|`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The path that changed (relative iff the watch was registered with a
    /// relative path).
    pub path: String,
    /// The token given when the watch was registered.
    pub token: String,
}

/// Serialises a header into its 16 wire bytes (native byte order, as the
/// C struct is laid out in the shared page).
pub fn encode_header(h: &XsdSockmsg) -> [u8; XSD_SOCKMSG_SIZE] {
    let mut out = [0u8; XSD_SOCKMSG_SIZE];
    out[0..4].copy_from_slice(&h.ty.to_ne_bytes());
    out[4..8].copy_from_slice(&h.req_id.to_ne_bytes());
    out[8..12].copy_from_slice(&h.tx_id.to_ne_bytes());
    out[12..16].copy_from_slice(&h.len.to_ne_bytes());
    out
}

/// Parses 16 wire bytes into a header (no validation).
pub fn decode_header(b: &[u8; XSD_SOCKMSG_SIZE]) -> XsdSockmsg {
    let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    XsdSockmsg {
        ty: word(0),
        req_id: word(4),
        tx_id: word(8),
        len: word(12),
    }
}

/// Builds a complete message: header followed by the concatenated `parts`.
///
/// # Errors
///
/// [`XsError::PayloadTooLarge`] if the parts add up to more than
/// `XENSTORE_PAYLOAD_MAX` bytes (xenstored kills connections that send
/// more, `xenstore.txt`).
pub fn encode(ty: u32, req_id: u32, tx_id: u32, parts: &[&[u8]]) -> Result<Vec<u8>, XsError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > XENSTORE_PAYLOAD_MAX {
        return Err(XsError::PayloadTooLarge);
    }
    let header = XsdSockmsg {
        ty,
        req_id,
        tx_id,
        len: len as u32,
    };
    let mut out = Vec::new();
    out.try_reserve_exact(XSD_SOCKMSG_SIZE + len)
        .map_err(|_| XsError::OutOfMemory)?;
    out.extend_from_slice(&encode_header(&header));
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(out)
}

/// Checks that a path (or token, or other string argument) may be sent as a
/// NUL-terminated protocol string.
///
/// # Errors
///
/// [`XsError::InvalidPath`] if it contains a NUL byte or is empty.
pub fn check_string(s: &str) -> Result<(), XsError> {
    if s.is_empty() || s.as_bytes().contains(&0) {
        return Err(XsError::InvalidPath);
    }
    Ok(())
}

/// Reassembles messages from a byte stream that may arrive in pieces of any
/// size (one byte at a time included).
///
/// After it has returned an error the decoder stays failed: the stream has
/// lost its framing and cannot be resynchronised.
#[derive(Debug, Default)]
pub struct Decoder {
    header: [u8; XSD_SOCKMSG_SIZE],
    header_len: usize,
    current: Option<XsdSockmsg>,
    payload: Vec<u8>,
    failed: Option<XsError>,
}

impl Decoder {
    /// A decoder at a message boundary.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether no partial message is buffered.
    pub fn is_at_boundary(&self) -> bool {
        self.header_len == 0 && self.current.is_none()
    }

    /// Consumes bytes from the front of `input` and returns how many were
    /// used plus a message if one was completed. Call again with the rest
    /// of `input` while it is not empty.
    ///
    /// # Errors
    ///
    /// [`XsError::Malformed`]`(`[`XsMalformed::Oversize`]`)` as soon as a
    /// header announces more than `XENSTORE_PAYLOAD_MAX` bytes; the same
    /// error on every later call.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<Message>), XsError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut used = 0;
        if self.current.is_none() {
            let want = XSD_SOCKMSG_SIZE - self.header_len;
            let n = want.min(input.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
            self.header_len += n;
            used += n;
            if self.header_len < XSD_SOCKMSG_SIZE {
                return Ok((used, None));
            }
            let h = decode_header(&self.header);
            if h.len as usize > XENSTORE_PAYLOAD_MAX {
                let e = XsError::Malformed(XsMalformed::Oversize);
                self.failed = Some(e);
                return Err(e);
            }
            self.header_len = 0;
            self.payload = Vec::new();
            if self.payload.try_reserve_exact(h.len as usize).is_err() {
                self.failed = Some(XsError::OutOfMemory);
                return Err(XsError::OutOfMemory);
            }
            self.current = Some(h);
        }
        let Some(h) = self.current else {
            return Ok((used, None));
        };
        let rest = &input[used..];
        let want = h.len as usize - self.payload.len();
        let n = want.min(rest.len());
        self.payload.extend_from_slice(&rest[..n]);
        used += n;
        if self.payload.len() == h.len as usize {
            self.current = None;
            let payload = core::mem::take(&mut self.payload);
            return Ok((used, Some(Message { header: h, payload })));
        }
        Ok((used, None))
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, XsError> {
    core::str::from_utf8(bytes).map_err(|_| XsError::Malformed(XsMalformed::NotUtf8))
}

/// Splits a payload made of NUL-terminated strings (`<foo>|*`).
///
/// # Errors
///
/// [`XsMalformed::MissingTerminator`] if the payload does not end in NUL,
/// [`XsMalformed::NotUtf8`] for invalid UTF-8.
pub fn split_strings(payload: &[u8]) -> Result<Vec<&str>, XsError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let Some((&0, body)) = payload.split_last() else {
        return Err(XsError::Malformed(XsMalformed::MissingTerminator));
    };
    body.split(|&b| b == 0).map(utf8).collect()
}

/// Parses a single NUL-terminated string payload (`<foo>|`).
///
/// # Errors
///
/// [`XsMalformed::MissingTerminator`] without the final NUL,
/// [`XsMalformed::BadPayload`] if there is a NUL before it,
/// [`XsMalformed::NotUtf8`].
pub fn parse_single_string(payload: &[u8]) -> Result<&str, XsError> {
    let Some((&0, body)) = payload.split_last() else {
        return Err(XsError::Malformed(XsMalformed::MissingTerminator));
    };
    if body.contains(&0) {
        return Err(XsError::Malformed(XsMalformed::BadPayload));
    }
    utf8(body)
}

/// Parses a `DIRECTORY` reply (`<child-leaf-name>|*`) into the child names.
///
/// # Errors
///
/// As for [`split_strings`], plus [`XsMalformed::BadPayload`] for an empty
/// name or a name containing `/`.
pub fn parse_directory(payload: &[u8]) -> Result<Vec<String>, XsError> {
    split_strings(payload)?
        .into_iter()
        .map(|s| {
            if s.is_empty() || s.contains('/') {
                Err(XsError::Malformed(XsMalformed::BadPayload))
            } else {
                Ok(String::from(s))
            }
        })
        .collect()
}

/// Parses a `READ` reply: the value, without terminator (`<value|>`).
///
/// # Errors
///
/// [`XsMalformed::NotUtf8`] if the value is not UTF-8.
pub fn parse_value(payload: &[u8]) -> Result<String, XsError> {
    utf8(payload).map(String::from)
}

/// Checks an `OK|` acknowledgement.
///
/// # Errors
///
/// [`XsMalformed::BadPayload`] for anything but exactly `"OK\0"`.
pub fn parse_ok(payload: &[u8]) -> Result<(), XsError> {
    if payload == b"OK\0" {
        Ok(())
    } else {
        Err(XsError::Malformed(XsMalformed::BadPayload))
    }
}

/// Parses a `TRANSACTION_START` reply (`<transid>|`, unsigned decimal).
///
/// # Errors
///
/// As for [`parse_single_string`], plus [`XsMalformed::BadPayload`] if it is
/// not a decimal `u32` other than 0 (0 means "no transaction").
pub fn parse_tx_id(payload: &[u8]) -> Result<u32, XsError> {
    let s = parse_single_string(payload)?;
    let bad = XsError::Malformed(XsMalformed::BadPayload);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(bad),
        Ok(id) => Ok(id),
    }
}

/// Parses an `ERROR` reply (`E<something>|`) into its errno.
///
/// # Errors
///
/// As for [`parse_single_string`].
pub fn parse_error(payload: &[u8]) -> Result<XsErrno, XsError> {
    parse_single_string(payload).map(XsErrno::from_name)
}

/// Parses a `WATCH_EVENT` payload: exactly `<epath>|<token>|`.
///
/// # Errors
///
/// [`XsMalformed::MissingTerminator`], [`XsMalformed::NotUtf8`], or
/// [`XsMalformed::BadPayload`] when there are not exactly two strings or the
/// path is empty.
pub fn parse_watch_event(payload: &[u8]) -> Result<WatchEvent, XsError> {
    let parts = split_strings(payload)?;
    match parts.as_slice() {
        [path, token] if !path.is_empty() => Ok(WatchEvent {
            path: String::from(*path),
            token: String::from(*token),
        }),
        _ => Err(XsError::Malformed(XsMalformed::BadPayload)),
    }
}

/// Whether `ty` is a message type a xenstored may send to a client.
pub fn is_reply_type(ty: u32) -> bool {
    ty <= msg_type::XS_DIRECTORY_PART && ty != 20
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn msg(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        encode(ty, req_id, 0, &[payload]).unwrap()
    }

    #[test]
    fn header_round_trips() {
        let h = XsdSockmsg {
            ty: 7,
            req_id: 0x1234_5678,
            tx_id: 9,
            len: 4096,
        };
        assert_eq!(decode_header(&encode_header(&h)), h);
    }

    #[test]
    fn encode_enforces_the_payload_limit() {
        let big = vec![b'a'; XENSTORE_PAYLOAD_MAX];
        assert_eq!(
            encode(msg_type::XS_WRITE, 1, 0, &[&big]).unwrap().len(),
            16 + 4096
        );
        assert_eq!(
            encode(msg_type::XS_WRITE, 1, 0, &[&big, b"x"]),
            Err(XsError::PayloadTooLarge)
        );
    }

    #[test]
    fn decoder_reassembles_at_every_split() {
        let mut stream = msg(msg_type::XS_READ, 3, b"value");
        stream.extend(msg(msg_type::XS_WATCH_EVENT, 0, b"a/b\0tok\0"));
        stream.extend(msg(msg_type::XS_WRITE, 4, b""));
        for chunk in 1..=stream.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let (n, m) = d.push(rest).unwrap();
                    assert!(n > 0 || m.is_some());
                    got.extend(m);
                    rest = &rest[n..];
                }
            }
            assert!(d.is_at_boundary());
            let kinds: Vec<_> = got.iter().map(|m| (m.header.ty, m.header.req_id)).collect();
            assert_eq!(kinds, [(2, 3), (15, 0), (11, 4)], "chunk {chunk}");
            assert_eq!(got[0].payload, b"value");
            assert!(got[2].payload.is_empty());
        }
    }

    #[test]
    fn decoder_rejects_oversize_and_stays_failed() {
        let h = XsdSockmsg {
            ty: msg_type::XS_READ,
            req_id: 1,
            tx_id: 0,
            len: XENSTORE_PAYLOAD_MAX as u32 + 1,
        };
        let mut d = Decoder::new();
        let bytes = encode_header(&h);
        assert_eq!(d.push(&bytes[..15]).unwrap(), (15, None));
        let oversize = Err(XsError::Malformed(XsMalformed::Oversize));
        assert_eq!(d.push(&bytes[15..]), oversize);
        assert_eq!(d.push(&msg(2, 1, b"x")), oversize);
    }

    #[test]
    fn strings_need_terminators_and_utf8() {
        assert_eq!(split_strings(b"").unwrap(), Vec::<&str>::new());
        assert_eq!(split_strings(b"a\0bc\0").unwrap(), ["a", "bc"]);
        assert_eq!(
            split_strings(b"a\0bc"),
            Err(XsError::Malformed(XsMalformed::MissingTerminator))
        );
        assert_eq!(
            split_strings(b"\xff\0"),
            Err(XsError::Malformed(XsMalformed::NotUtf8))
        );
        assert_eq!(parse_single_string(b"x\0").unwrap(), "x");
        assert_eq!(
            parse_single_string(b"x\0y\0"),
            Err(XsError::Malformed(XsMalformed::BadPayload))
        );
        assert_eq!(
            parse_single_string(b""),
            Err(XsError::Malformed(XsMalformed::MissingTerminator))
        );
    }

    #[test]
    fn directory_replies() {
        assert_eq!(parse_directory(b"").unwrap(), Vec::<String>::new());
        assert_eq!(parse_directory(b"768\x005632\0").unwrap(), ["768", "5632"]);
        for bad in [&b"a\0\0"[..], b"a/b\0", b"\0"] {
            assert_eq!(
                parse_directory(bad),
                Err(XsError::Malformed(XsMalformed::BadPayload)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn small_replies() {
        assert_eq!(parse_ok(b"OK\0"), Ok(()));
        for bad in [&b"OK"[..], b"OK\0\0", b"NO\0", b""] {
            assert!(parse_ok(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_tx_id(b"42\0"), Ok(42));
        for bad in [&b"0\0"[..], b"-1\0", b"4294967296\0", b"\0", b" 1\0", b"1"] {
            assert!(parse_tx_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_error(b"EAGAIN\0"), Ok(XsErrno::EAGAIN));
        assert_eq!(parse_error(b"EWEIRD\0"), Ok(XsErrno::Unknown));
        assert!(parse_error(b"EAGAIN").is_err());
        assert_eq!(parse_value(b"abc").unwrap(), "abc");
        assert_eq!(
            parse_value(b"\xc3"),
            Err(XsError::Malformed(XsMalformed::NotUtf8))
        );
    }

    #[test]
    fn watch_events_are_exactly_path_and_token() {
        let ev = parse_watch_event(b"/local/domain/1/x\0t1\0").unwrap();
        assert_eq!(
            (ev.path.as_str(), ev.token.as_str()),
            ("/local/domain/1/x", "t1")
        );
        assert_eq!(parse_watch_event(b"p\0\0").unwrap().token, "");
        for bad in [&b"p\0"[..], b"p\0t\0x\0", b"\0t\0", b"p\0t", b""] {
            assert!(parse_watch_event(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn strings_to_send_are_checked() {
        assert_eq!(check_string("device/vbd"), Ok(()));
        assert_eq!(check_string("a\0b"), Err(XsError::InvalidPath));
        assert_eq!(check_string(""), Err(XsError::InvalidPath));
    }
}
