//! The xenstore client's reply and watch-event parsing on arbitrary bytes:
//! the stream decoder fed in pieces of any size, every payload parser, and
//! a `XenStore` whose fake daemon answers each request with bytes the input
//! chooses (a well-framed reply with a hostile payload, a reply with the
//! wrong id or type, a watch event, raw garbage, or nothing at all).
//! Nothing may panic or hang; a connection that was declared broken stays
//! broken.

use std::collections::VecDeque;

use xenblk::abi::xs_wire::msg_type::*;
use xenblk::abi::xs_wire::XsdSockmsg;
use xenblk::hal::XsTransport;
use xenblk::xenstore::wire::{self, Decoder};
use xenblk::xenstore::{TxId, XenStore, XsError};

use crate::hostile::Input;

/// Decodes `data` in pieces whose sizes come from `sizes`, running every
/// payload parser on each message.
fn decode_stream(data: &[u8], sizes: &mut Input<'_>) {
    let mut d = Decoder::new();
    let mut rest = data;
    while !rest.is_empty() {
        let piece = (usize::from(sizes.u8()) % 64 + 1).min(rest.len());
        let mut chunk = &rest[..piece];
        rest = &rest[piece..];
        while !chunk.is_empty() {
            match d.push(chunk) {
                Ok((used, msg)) => {
                    assert!(used <= chunk.len() && (used > 0 || msg.is_some()));
                    chunk = &chunk[used..];
                    if let Some(m) = msg {
                        assert_eq!(m.payload.len(), m.header.len as usize);
                        let p = &m.payload;
                        let _ = wire::split_strings(p);
                        let _ = wire::parse_single_string(p);
                        let _ = wire::parse_directory(p);
                        let _ = wire::parse_value(p);
                        let _ = wire::parse_ok(p);
                        let _ = wire::parse_tx_id(p);
                        let _ = wire::parse_error(p);
                        if let Ok(ev) = wire::parse_watch_event(p) {
                            assert!(!ev.path.contains('\0') && !ev.token.contains('\0'));
                        }
                        let _ = wire::is_reply_type(m.header.ty);
                    }
                }
                Err(_) => {
                    // Framing is lost for good.
                    assert!(d.push(b"x").is_err());
                    return;
                }
            }
        }
    }
}

/// A daemon whose answers come from the fuzz input.
struct Puppet<'a> {
    inp: Input<'a>,
    decoder: Decoder,
    inbox: VecDeque<u8>,
    now: u64,
    chunk: usize,
}

impl Puppet<'_> {
    fn answer(&mut self, req: XsdSockmsg) {
        let how = self.inp.u8();
        let ty = match how & 0x0f {
            0..=7 => req.ty,
            8 | 9 => XS_ERROR,
            10 | 11 => XS_WATCH_EVENT,
            12 => u32::from(self.inp.u8()),
            13 => req.ty,
            _ => {
                // Raw garbage, or nothing (the request times out).
                let raw = self.inp.bytes(64).to_vec();
                self.inbox.extend(raw);
                return;
            }
        };
        let req_id = if how & 0x0f == 13 {
            req.req_id.wrapping_add(u32::from(self.inp.u8()))
        } else {
            req.req_id
        };
        let payload: Vec<u8> = match how >> 4 {
            0 => b"OK\0".to_vec(),
            1 => b"EAGAIN\0".to_vec(),
            2 => b"ENOENT\0".to_vec(),
            3 => b"a\0b\0c\0".to_vec(),
            4 => b"42\0".to_vec(),
            5 => b"some/path\0tok\0".to_vec(),
            6 => vec![0xff, 0xfe, 0],
            _ => self.inp.bytes(255).to_vec(),
        };
        let h = XsdSockmsg {
            ty,
            req_id,
            tx_id: req.tx_id,
            len: if how >> 4 == 15 {
                self.inp.u32()
            } else {
                payload.len() as u32
            },
        };
        self.inbox.extend(wire::encode_header(&h));
        self.inbox.extend(payload);
    }
}

impl XsTransport for Puppet<'_> {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        let n = bytes.len().min(self.chunk);
        let mut rest = &bytes[..n];
        while !rest.is_empty() {
            let (used, m) = self
                .decoder
                .push(rest)
                .expect("the client frames its requests");
            rest = &rest[used..];
            if let Some(m) = m {
                self.answer(m.header);
            }
        }
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let n = buf.len().min(self.inbox.len()).min(self.chunk);
        for b in &mut buf[..n] {
            *b = self.inbox.pop_front().unwrap_or(0);
        }
        Ok(n)
    }

    fn wait(&mut self, deadline: Option<u64>) -> Result<(), XsError> {
        self.now += 1_000_000;
        if self.inp.u8() == 0xee {
            // Unsolicited bytes: an event, or garbage.
            let raw = self.inp.bytes(48).to_vec();
            self.inbox.extend(raw);
        }
        match deadline {
            Some(d) if self.now >= d => Err(XsError::Timeout),
            _ => Ok(()),
        }
    }

    fn now_ns(&self) -> u64 {
        self.now
    }
}

/// Runs one input. Panics on a broken invariant.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let split = usize::from(inp.u8());
    let (stream, rest) = data.split_at(split.min(data.len()));
    decode_stream(stream, &mut Input::new(rest));

    let chunk = usize::from(inp.u8() % 16) * 16 + 1;
    let mut xs = XenStore::new(Puppet {
        inp: Input::new(rest),
        decoder: Decoder::new(),
        inbox: VecDeque::new(),
        now: 0,
        chunk,
    });
    xs.set_timeout_ns(5_000_000);
    for _ in 0..32 {
        let was_broken = xs.is_broken();
        let op = xs.transport_mut().inp.u8();
        let r: Result<(), XsError> = match op % 12 {
            0 => xs.read("device/vbd/51712/state").map(drop),
            1 => xs.read_opt("backend").map(drop),
            2 => xs
                .directory("device/vbd")
                .map(|d| assert!(d.iter().all(|n| !n.contains('\0') && !n.is_empty()))),
            3 => xs.write("device/vbd/51712/state", "4"),
            4 => xs.watch("backend/vbd", "tok"),
            5 => xs.unwatch("backend/vbd", "tok"),
            6 => xs.transaction_start().and_then(|t| {
                assert_ne!(t, TxId::NONE);
                xs.transaction_end(t, true)
            }),
            7 => xs
                .transaction(3, |xs, tx| xs.write_tx(tx, "a", "b"))
                .map(drop),
            8 => xs.get_perms("device").map(drop),
            // Events queued before the connection broke are still handed out.
            9 => match xs.poll_watch_event() {
                Ok(Some(_)) | Err(XsError::Malformed(_)) if was_broken => continue,
                r => r.map(drop),
            },
            10 => xs.mkdir("data").and_then(|()| xs.rm("data")),
            _ => xs.get_domain_path(xenblk::hal::DomId(1)).map(drop),
        };
        if was_broken {
            assert_eq!(
                r,
                Err(XsError::Connection),
                "op {}: a broken connection came back",
                op % 12
            );
        }
        if !xs.transport_mut().inp.more() {
            break;
        }
    }
}
