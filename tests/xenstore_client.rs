//! The xenstore client against a scripted fake transport: request encoding,
//! reply matching, watch-event queueing, malformed replies, timeouts and
//! transaction retries. Bytes are also delivered one at a time and in every
//! chunk size.

use std::collections::VecDeque;

use xenblk::abi::xs_wire::msg_type::*;
use xenblk::abi::xs_wire::XsdSockmsg;
use xenblk::error::{XsErrno, XsMalformed};
use xenblk::hal::{DomId, XsTransport};
use xenblk::xenbus::XenbusError;
use xenblk::xenstore::wire::{self, Decoder, Message};
use xenblk::xenstore::{TxId, XenStore, XsError};

type Responder = Box<dyn FnMut(&Message) -> Vec<Vec<u8>>>;

/// A fake daemon: decodes what the client sends and answers through a
/// closure; delivers at most `recv_chunk` bytes per `recv` and accepts at
/// most `send_chunk` per `send`. Time advances 1 ms per `wait`.
struct Fake {
    decoder: Decoder,
    requests: Vec<Message>,
    inbox: VecDeque<u8>,
    respond: Responder,
    recv_chunk: usize,
    send_chunk: usize,
    now: u64,
    waits: u64,
}

impl Fake {
    fn new(respond: impl FnMut(&Message) -> Vec<Vec<u8>> + 'static) -> Fake {
        Fake {
            decoder: Decoder::new(),
            requests: Vec::new(),
            inbox: VecDeque::new(),
            respond: Box::new(respond),
            recv_chunk: usize::MAX,
            send_chunk: usize::MAX,
            now: 0,
            waits: 0,
        }
    }
}

impl XsTransport for Fake {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        let n = bytes.len().min(self.send_chunk);
        let mut rest = &bytes[..n];
        while !rest.is_empty() {
            let (used, m) = self.decoder.push(rest).expect("client sent bad framing");
            rest = &rest[used..];
            if let Some(m) = m {
                for r in (self.respond)(&m) {
                    self.inbox.extend(r);
                }
                self.requests.push(m);
            }
        }
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let n = buf.len().min(self.recv_chunk).min(self.inbox.len());
        for b in &mut buf[..n] {
            *b = self.inbox.pop_front().unwrap();
        }
        Ok(n)
    }

    fn wait(&mut self, deadline: Option<u64>) -> Result<(), XsError> {
        self.waits += 1;
        self.now += 1_000_000;
        match deadline {
            Some(d) if self.now >= d => Err(XsError::Timeout),
            _ => Ok(()),
        }
    }

    fn now_ns(&self) -> u64 {
        self.now
    }
}

fn msg(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
    wire::encode(ty, req_id, 0, &[payload]).unwrap()
}

fn event(path: &str, token: &str) -> Vec<u8> {
    msg(XS_WATCH_EVENT, 0, format!("{path}\0{token}\0").as_bytes())
}

/// A tiny in-memory daemon good enough to check encodings: answers READ
/// with "v:<path>", DIRECTORY with two names, everything else with OK or
/// the obvious payload; every reply is preceded by a watch event.
fn echo_daemon(m: &Message) -> Vec<Vec<u8>> {
    let h = m.header;
    let arg = String::from_utf8_lossy(&m.payload).into_owned();
    let first = arg.split('\0').next().unwrap_or("").to_string();
    let payload: Vec<u8> = match h.ty {
        XS_READ => format!("v:{first}").into_bytes(),
        XS_DIRECTORY => b"a\0b\0".to_vec(),
        XS_GET_DOMAIN_PATH => format!("/local/domain/{first}\0").into_bytes(),
        XS_TRANSACTION_START => b"17\0".to_vec(),
        XS_GET_PERMS => b"n0\0r1\0".to_vec(),
        _ => b"OK\0".to_vec(),
    };
    vec![
        event(&format!("/ev/{}", h.req_id), "t"),
        msg(h.ty, h.req_id, &payload),
    ]
}

#[test]
fn every_operation_encodes_its_request_and_parses_its_reply() {
    let mut xs = XenStore::new(Fake::new(echo_daemon));
    assert_eq!(
        xs.read("device/vbd/768/state").unwrap(),
        "v:device/vbd/768/state"
    );
    xs.write("a/b", "hello").unwrap();
    xs.mkdir("a/c").unwrap();
    xs.rm("a/c").unwrap();
    assert_eq!(xs.directory("a").unwrap(), ["a", "b"]);
    xs.watch("a", "tok").unwrap();
    xs.unwatch("a", "tok").unwrap();
    assert_eq!(xs.get_domain_path(DomId(7)).unwrap(), "/local/domain/7");
    let tx = xs.transaction_start().unwrap();
    assert_eq!(tx, TxId(17));
    xs.write_tx(tx, "x", "1").unwrap();
    xs.transaction_end(tx, true).unwrap();
    assert_eq!(xs.get_perms("x").unwrap(), ["n0", "r1"]);
    xs.set_perms("x", &["n0", "r1"]).unwrap();

    let reqs = &xs.transport().requests;
    let got: Vec<(u32, u32, u32, &[u8])> = reqs
        .iter()
        .map(|m| (m.header.ty, m.header.req_id, m.header.tx_id, &m.payload[..]))
        .collect();
    let want: Vec<(u32, u32, u32, &[u8])> = vec![
        (XS_READ, 1, 0, b"device/vbd/768/state\0"),
        (XS_WRITE, 2, 0, b"a/b\0hello"),
        (XS_MKDIR, 3, 0, b"a/c\0"),
        (XS_RM, 4, 0, b"a/c\0"),
        (XS_DIRECTORY, 5, 0, b"a\0"),
        (XS_WATCH, 6, 0, b"a\0tok\0"),
        (XS_UNWATCH, 7, 0, b"a\0tok\0"),
        (XS_GET_DOMAIN_PATH, 8, 0, b"7\0"),
        (XS_TRANSACTION_START, 9, 0, b"\0"),
        (XS_WRITE, 10, 17, b"x\x001"),
        (XS_TRANSACTION_END, 11, 17, b"T\0"),
        (XS_GET_PERMS, 12, 0, b"x\0"),
        (XS_SET_PERMS, 13, 0, b"x\0n0\0r1\0"),
    ];
    assert_eq!(got, want);

    // Every reply was preceded by an event: all queued, in order.
    for id in 1..=13 {
        let ev = xs.poll_watch_event().unwrap().unwrap();
        assert_eq!((ev.path, ev.token), (format!("/ev/{id}"), "t".to_string()));
    }
    assert_eq!(xs.poll_watch_event().unwrap(), None);
}

#[test]
fn replies_and_events_survive_every_split() {
    for chunk in 1..=40 {
        let mut fake = Fake::new(echo_daemon);
        fake.recv_chunk = chunk;
        fake.send_chunk = chunk;
        let mut xs = XenStore::new(fake);
        assert_eq!(xs.read("some/key").unwrap(), "v:some/key", "chunk {chunk}");
        assert_eq!(xs.directory("d").unwrap(), ["a", "b"]);
        let ev = xs.poll_watch_event().unwrap().unwrap();
        assert_eq!(ev.path, "/ev/1");
        assert_eq!(xs.poll_watch_event().unwrap().unwrap().path, "/ev/2");
        assert!(!xs.is_broken());
    }
}

/// A daemon that answers the first request with `reply(req_id)` and every
/// later one normally.
fn scripted(reply: impl Fn(u32) -> Vec<u8> + 'static) -> Fake {
    let mut first = true;
    Fake::new(move |m: &Message| {
        if std::mem::take(&mut first) {
            vec![reply(m.header.req_id)]
        } else {
            echo_daemon(m)
        }
    })
}

fn oversize_header(id: u32) -> Vec<u8> {
    wire::encode_header(&XsdSockmsg {
        ty: XS_READ,
        req_id: id,
        tx_id: 0,
        len: 4097,
    })
    .to_vec()
}

#[test]
fn framing_errors_break_the_connection() {
    type Script = fn(u32) -> Vec<u8>;
    let cases: [(Script, XsMalformed); 3] = [
        (oversize_header, XsMalformed::Oversize),
        (|id| msg(XS_READ, id + 1, b"x"), XsMalformed::UnexpectedId),
        (|id| msg(XS_WRITE, id, b"OK\0"), XsMalformed::UnexpectedType),
    ];
    for (script, kind) in cases {
        for chunk in [1, 3, 1000] {
            let mut fake = scripted(script);
            fake.recv_chunk = chunk;
            let mut xs = XenStore::new(fake);
            assert_eq!(xs.read("k"), Err(XsError::Malformed(kind)), "{kind:?}");
            assert!(xs.is_broken());
            assert_eq!(xs.read("k"), Err(XsError::Connection));
            assert_eq!(xs.poll_watch_event(), Err(XsError::Connection));
            assert_eq!(xs.transport().requests.len(), 1, "nothing sent after");
        }
    }
}

#[test]
fn bad_payloads_fail_only_their_call() {
    type Case = (u32, &'static [u8], XsMalformed);
    let cases: [Case; 6] = [
        (XS_READ, b"\xff\xfe", XsMalformed::NotUtf8),
        (XS_DIRECTORY, b"a\0b", XsMalformed::MissingTerminator),
        (XS_DIRECTORY, b"a\0\0", XsMalformed::BadPayload),
        (XS_WRITE, b"OK", XsMalformed::BadPayload),
        (XS_TRANSACTION_START, b"0\0", XsMalformed::BadPayload),
        (XS_ERROR, b"EACCES", XsMalformed::MissingTerminator),
    ];
    for (ty, payload, kind) in cases {
        let mut xs = XenStore::new(scripted(move |id| msg(ty, id, payload)));
        let got = match ty {
            XS_DIRECTORY => xs.directory("d").map(drop),
            XS_WRITE => xs.write("k", "v"),
            XS_TRANSACTION_START => xs.transaction_start().map(drop),
            _ => xs.read("k").map(drop),
        };
        assert_eq!(got, Err(XsError::Malformed(kind)), "{ty} {payload:?}");
        assert!(!xs.is_broken());
        assert_eq!(xs.read("next").unwrap(), "v:next");
    }
}

#[test]
fn error_replies_map_to_errnos() {
    let mut xs = XenStore::new(Fake::new(|m: &Message| {
        let name = String::from_utf8_lossy(&m.payload)
            .split('\0')
            .next()
            .unwrap()
            .to_string();
        vec![msg(
            XS_ERROR,
            m.header.req_id,
            format!("{name}\0").as_bytes(),
        )]
    }));
    assert_eq!(xs.read("ENOENT"), Err(XsError::Errno(XsErrno::ENOENT)));
    assert_eq!(xs.read_opt("ENOENT"), Ok(None));
    assert_eq!(xs.read_opt("EACCES"), Err(XsError::Errno(XsErrno::EACCES)));
    assert_eq!(xs.mkdir("EWHAT"), Err(XsError::Errno(XsErrno::Unknown)));
    assert!(!xs.is_broken());
}

#[test]
fn malformed_watch_events_are_reported_once_in_order() {
    let mut xs = XenStore::new(Fake::new(|m: &Message| {
        vec![
            event("/a", "1"),
            msg(XS_WATCH_EVENT, 0, b"/only-path\0"),
            msg(XS_WATCH_EVENT, 0, b"/p\0t\0extra\0"),
            msg(XS_WATCH_EVENT, 0, b"/p\0\xff\0"),
            event("/b", "2"),
            msg(m.header.ty, m.header.req_id, b"OK\0"),
        ]
    }));
    xs.write("k", "v").unwrap();
    assert_eq!(xs.poll_watch_event().unwrap().unwrap().path, "/a");
    let bad = XsError::Malformed(XsMalformed::BadPayload);
    assert_eq!(xs.poll_watch_event(), Err(bad));
    assert_eq!(xs.poll_watch_event(), Err(bad));
    assert_eq!(
        xs.poll_watch_event(),
        Err(XsError::Malformed(XsMalformed::NotUtf8))
    );
    assert_eq!(xs.poll_watch_event().unwrap().unwrap().path, "/b");
    assert_eq!(xs.poll_watch_event(), Ok(None));
    assert!(!xs.is_broken());
}

#[test]
fn a_silent_daemon_times_out_and_its_late_reply_is_discarded() {
    let mut held: Option<Vec<u8>> = None;
    let mut xs = XenStore::new(Fake::new(move |m: &Message| {
        // Hold the first reply back; release it ahead of the second.
        let reply = msg(m.header.ty, m.header.req_id, b"OK\0");
        match held.take() {
            None if m.header.req_id == 1 => {
                held = Some(reply);
                vec![]
            }
            Some(late) => vec![late, reply],
            None => vec![reply],
        }
    }));
    xs.set_timeout_ns(50_000_000);
    assert_eq!(xs.mkdir("slow"), Err(XsError::Timeout));
    assert!(xs.transport().waits >= 50, "waited until the deadline");
    assert!(!xs.is_broken());
    xs.mkdir("fast").unwrap();
    assert!(!xs.is_broken());
}

#[test]
fn waiting_for_events() {
    let mut xs = XenStore::new(Fake::new(|m: &Message| {
        vec![
            msg(m.header.ty, m.header.req_id, b"OK\0"),
            event("/x", "other"),
            event("/y", "mine"),
        ]
    }));
    xs.watch("/y", "mine").unwrap();
    let ev = xs.wait_watch_event_for("mine", 1_000_000_000).unwrap();
    assert_eq!(ev.path, "/y");
    assert_eq!(xs.wait_watch_event(1_000_000_000).unwrap().token, "other");
    let deadline = xs.transport().now + 5_000_000;
    assert_eq!(xs.wait_watch_event(deadline), Err(XsError::Timeout));
}

#[test]
fn arguments_are_checked_before_sending() {
    let mut xs = XenStore::new(Fake::new(echo_daemon));
    assert_eq!(xs.read("a\0b"), Err(XsError::InvalidPath));
    assert_eq!(xs.write("", "v"), Err(XsError::InvalidPath));
    assert_eq!(xs.write("k", "v\0"), Err(XsError::InvalidPath));
    assert_eq!(xs.watch("k", ""), Err(XsError::InvalidPath));
    let big = "x".repeat(4096);
    assert_eq!(xs.write("k", &big), Err(XsError::PayloadTooLarge));
    xs.write("k", &big[..4094]).unwrap();
    assert_eq!(xs.transport().requests.len(), 1);
    assert_eq!(xs.transport().requests[0].payload.len(), 4096);
}

/// A daemon whose commits fail with EAGAIN `fails` times.
fn flaky_commits(fails: u32) -> Fake {
    let mut left = fails;
    Fake::new(move |m: &Message| {
        let h = m.header;
        let p: &[u8] = match h.ty {
            XS_TRANSACTION_START => b"5\0",
            XS_TRANSACTION_END if m.payload == b"T\0" && left > 0 => {
                left -= 1;
                return vec![msg(XS_ERROR, h.req_id, b"EAGAIN\0")];
            }
            XS_READ => b"1",
            _ => b"OK\0",
        };
        vec![msg(h.ty, h.req_id, p)]
    })
}

#[test]
fn transactions_retry_the_whole_closure_on_eagain() {
    let mut xs = XenStore::new(flaky_commits(2));
    let mut runs = 0;
    let v = xs
        .transaction(2, |xs, tx| {
            runs += 1;
            let v = xs.read_tx(tx, "k")?;
            xs.write_tx(tx, "k", "2")?;
            Ok::<_, XsError>(v)
        })
        .unwrap();
    assert_eq!((v.as_str(), runs), ("1", 3));
    let ends: Vec<_> = xs
        .transport()
        .requests
        .iter()
        .filter(|m| m.header.ty == XS_TRANSACTION_END)
        .map(|m| (m.header.tx_id, m.payload.clone()))
        .collect();
    assert_eq!(ends, vec![(5, b"T\0".to_vec()); 3]);

    let mut xs = XenStore::new(flaky_commits(10));
    let mut runs = 0;
    let r = xs.transaction(3, |_, _| {
        runs += 1;
        Ok::<_, XsError>(())
    });
    assert_eq!((r, runs), (Err(XsError::RetriesExhausted), 4));
}

#[test]
fn a_failing_closure_discards_its_transaction() {
    let mut xs = XenStore::new(flaky_commits(0));
    // The closure fails with an error of a layer above xenstore.
    let r: Result<(), XenbusError> = xs.transaction(5, |xs, tx| {
        xs.write_tx(tx, "k", "v")?;
        Err(XenbusError::MalformedKey("k"))
    });
    assert_eq!(r, Err(XenbusError::MalformedKey("k")));
    let last = xs.transport().requests.last().unwrap();
    assert_eq!(
        (last.header.ty, &last.payload[..]),
        (XS_TRANSACTION_END, &b"F\0"[..])
    );
}
