//! A xenstore client over any [`XsTransport`] (`docs/misc/xenstore.txt`).
//!
//! [`XenStore`] sends one request at a time and waits for its reply, with a
//! deadline on every blocking call ([`XenStore::set_timeout_ns`], 30 s by
//! default). Replies are matched by request id and type; watch events that
//! arrive in between are queued and handed out by
//! [`poll_watch_event`](XenStore::poll_watch_event) and
//! [`wait_watch_event`](XenStore::wait_watch_event).
//!
//! Anything xenstored sends is validated ([`wire`]). A reply that breaks the
//! framing (an oversize header, an unknown request id, a reply of the wrong
//! type) is returned as [`XsError::Malformed`] and leaves the connection
//! unusable: every later call returns [`XsError::Connection`]. A reply whose
//! payload alone is wrong (a value that is not UTF-8, a directory listing
//! without its final NUL) fails only the call that asked for it.
//!
//! ```
//! # use xenblk::xenstore::{XenStore, TxId};
//! # fn demo<T: xenblk::hal::XsTransport>(
//! #     xs: &mut XenStore<T>,
//! # ) -> Result<(), xenblk::xenstore::XsError> {
//! let vbds = xs.directory("device/vbd")?;
//! let ring_ref = xs.transaction(8, |xs, tx| {
//!     xs.write_tx(tx, "device/vbd/768/ring-ref", "8")?;
//!     xs.read_tx(tx, "device/vbd/768/ring-ref")
//! })?;
//! # let _ = (vbds, ring_ref); Ok(()) }
//! ```

pub mod ring;
pub mod wire;

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::abi::xs_wire::msg_type::*;
use crate::error::{XsErrno, XsMalformed};
use crate::hal::{DomId, HalError, XsTransport};
use crate::Result;

pub use ring::RingTransport;
pub use wire::WatchEvent;
use wire::{Decoder, Message};

/// How a xenstore request (or the connection under it) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsError {
    /// xenstored answered with an error string (`XS_ERROR`).
    Errno(XsErrno),
    /// A reply or event from xenstored could not be parsed. When it broke
    /// the framing, the connection is unusable afterwards.
    Malformed(XsMalformed),
    /// A request or reply payload exceeds the 4096-byte protocol limit.
    PayloadTooLarge,
    /// The connection is closed, reset or otherwise unusable.
    Connection,
    /// A path or value is empty or contains a byte the protocol forbids
    /// (NUL), or a permission list is empty.
    InvalidPath,
    /// A transaction kept failing with `EAGAIN` after the retry budget.
    RetriesExhausted,
    /// No reply (or watch event) arrived before the deadline.
    Timeout,
    /// No memory for a message.
    OutOfMemory,
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Errno(e) => write!(f, "xenstored refused the request: {e}"),
            XsError::Malformed(m) => write!(f, "malformed message from xenstored: {m}"),
            XsError::PayloadTooLarge => f.write_str("xenstore message payload exceeds 4096 bytes"),
            XsError::Connection => f.write_str("the xenstore connection is unusable"),
            XsError::InvalidPath => {
                f.write_str("xenstore path or value is empty or contains a NUL byte")
            }
            XsError::RetriesExhausted => f.write_str(
                "xenstore transaction kept conflicting (EAGAIN) until its retries ran out",
            ),
            XsError::Timeout => f.write_str("timed out waiting for xenstored"),
            XsError::OutOfMemory => f.write_str("out of memory for a xenstore message"),
        }
    }
}

impl core::error::Error for XsError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            XsError::Errno(e) => Some(e),
            XsError::Malformed(m) => Some(m),
            _ => None,
        }
    }
}

impl From<XsErrno> for XsError {
    fn from(e: XsErrno) -> Self {
        XsError::Errno(e)
    }
}

impl From<XsMalformed> for XsError {
    fn from(m: XsMalformed) -> Self {
        XsError::Malformed(m)
    }
}

/// A transport's call into the hypervisor failed: a wait that ran out is a
/// timeout, no memory is no memory, anything else (a port that is gone, a
/// refused notification) leaves the connection unusable.
impl From<HalError> for XsError {
    fn from(e: HalError) -> Self {
        match e {
            HalError::Timeout => XsError::Timeout,
            HalError::OutOfMemory => XsError::OutOfMemory,
            HalError::Hypercall(_) | HalError::InvalidPort(_) => XsError::Connection,
        }
    }
}

/// The default deadline of a blocking call: 30 seconds.
pub const DEFAULT_TIMEOUT_NS: u64 = 30_000_000_000;

/// At most this many watch events are kept unread; beyond that the oldest
/// are dropped (and counted, see [`XenStore::dropped_events`]).
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// Requests given up at their deadline whose late replies are still
/// recognised and discarded.
const MAX_ABANDONED: usize = 64;

/// A transaction id (`tx_id` of `xsd_sockmsg`). [`TxId::NONE`] (0) means
/// "outside any transaction".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxId(pub u32);

impl TxId {
    /// No transaction.
    pub const NONE: TxId = TxId(0);
}

/// A xenstore connection.
#[derive(Debug)]
pub struct XenStore<T: XsTransport> {
    transport: T,
    decoder: Decoder,
    out: VecDeque<u8>,
    next_req_id: u32,
    outstanding: Option<(u32, u32)>,
    reply: Option<Message>,
    abandoned: VecDeque<u32>,
    events: VecDeque<Result<WatchEvent, XsError>>,
    dropped_events: u64,
    broken: bool,
    timeout_ns: u64,
    /// Device directories a driver of this domain has claimed.
    claimed: Vec<String>,
}

impl<T: XsTransport> XenStore<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> XenStore<T> {
        XenStore {
            transport,
            decoder: Decoder::new(),
            out: VecDeque::new(),
            next_req_id: 1,
            outstanding: None,
            reply: None,
            abandoned: VecDeque::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            broken: false,
            timeout_ns: DEFAULT_TIMEOUT_NS,
            claimed: Vec::new(),
        }
    }

    /// Claims device directory `dir` for one driver: `false` when another
    /// driver of this domain (over this client) holds it already. A device
    /// has one driver at a time; the claim keeps a second one from taking
    /// over a live connection. Bookkeeping only: nothing is sent.
    pub fn claim(&mut self, dir: &str) -> bool {
        if self.claimed.iter().any(|d| d == dir) {
            return false;
        }
        self.claimed.push(dir.into());
        true
    }

    /// Gives up a claim of [`claim`](Self::claim).
    pub fn release(&mut self, dir: &str) {
        self.claimed.retain(|d| d != dir);
    }

    /// Sets the deadline (relative, in nanoseconds) of every later blocking
    /// request.
    pub fn set_timeout_ns(&mut self, ns: u64) {
        self.timeout_ns = ns;
    }

    /// The current per-request timeout.
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns
    }

    /// Whether a framing or transport error made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Watch events dropped because more than [`MAX_QUEUED_EVENTS`] were
    /// waiting to be read.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (tests use it to script replies).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    // ----- plumbing -------------------------------------------------------------

    fn fail<R>(&mut self, e: XsError) -> Result<R, XsError> {
        self.broken = true;
        Err(e)
    }

    /// Sends what is buffered. Returns whether any byte moved.
    fn flush(&mut self) -> Result<bool, XsError> {
        let mut moved = false;
        while !self.out.is_empty() {
            let (front, _) = self.out.as_slices();
            let n = match self.transport.send(front) {
                Ok(n) => n.min(front.len()),
                Err(e) => return self.fail(e),
            };
            if n == 0 {
                break;
            }
            self.out.drain(..n);
            moved = true;
        }
        Ok(moved)
    }

    /// Reads what is available and dispatches complete messages. Returns
    /// whether any byte moved.
    fn pump(&mut self) -> Result<bool, XsError> {
        let mut buf = [0u8; 256];
        let got = match self.transport.recv(&mut buf) {
            Ok(n) => n.min(buf.len()),
            Err(e) => return self.fail(e),
        };
        let mut rest = &buf[..got];
        while !rest.is_empty() {
            let (used, msg) = match self.decoder.push(rest) {
                Ok(r) => r,
                Err(e) => return self.fail(e),
            };
            rest = rest.get(used..).unwrap_or(&[]);
            if let Some(m) = msg {
                self.dispatch(m)?;
            }
        }
        Ok(got > 0)
    }

    fn dispatch(&mut self, m: Message) -> Result<(), XsError> {
        let h = m.header;
        if h.ty == XS_WATCH_EVENT {
            if self.events.len() >= MAX_QUEUED_EVENTS {
                self.events.pop_front();
                self.dropped_events += 1;
            }
            let ev = wire::parse_watch_event(&m.payload);
            if let Err(e) = &ev {
                log::warn!("xenstore: malformed watch event: {e}");
            }
            self.events.push_back(ev);
            return Ok(());
        }
        if let Some(pos) = self.abandoned.iter().position(|&id| id == h.req_id) {
            self.abandoned.remove(pos);
            log::debug!("xenstore: discarding late reply to request {}", h.req_id);
            return Ok(());
        }
        match self.outstanding {
            Some((id, ty)) if id == h.req_id && self.reply.is_none() => {
                if h.ty == ty || h.ty == XS_ERROR {
                    self.reply = Some(m);
                    Ok(())
                } else {
                    log::error!("xenstore: reply type {} to request type {ty}", h.ty);
                    self.fail(XsError::Malformed(XsMalformed::UnexpectedType))
                }
            }
            _ => {
                log::error!("xenstore: reply with unexpected id {}", h.req_id);
                self.fail(XsError::Malformed(XsMalformed::UnexpectedId))
            }
        }
    }

    fn alloc_req_id(&mut self) -> u32 {
        loop {
            let id = self.next_req_id;
            self.next_req_id = self.next_req_id.wrapping_add(1);
            if id != 0 && !self.abandoned.contains(&id) {
                return id;
            }
        }
    }

    fn abandon(&mut self, id: u32) {
        if self.abandoned.len() >= MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(id);
    }

    /// Sends one request and waits for its reply. Returns the payload of a
    /// reply of type `ty`; an `XS_ERROR` reply becomes [`XsError::Errno`].
    fn request(&mut self, ty: u32, tx: TxId, parts: &[&[u8]]) -> Result<Vec<u8>, XsError> {
        if self.broken {
            return Err(XsError::Connection);
        }
        let deadline = self.transport.now_ns().saturating_add(self.timeout_ns);
        let id = self.alloc_req_id();
        let bytes = wire::encode(ty, id, tx.0, parts)?;
        self.out
            .try_reserve(bytes.len())
            .map_err(|_| XsError::OutOfMemory)?;
        self.out.extend(bytes);
        self.outstanding = Some((id, ty));
        self.reply = None;
        let result = self.wait_reply(deadline);
        self.outstanding = None;
        match result {
            Ok(m) if m.header.ty == XS_ERROR => Err(XsError::Errno(wire::parse_error(&m.payload)?)),
            Ok(m) => Ok(m.payload),
            Err(e) => {
                if e == XsError::Timeout {
                    log::warn!("xenstore: request {id} (type {ty}) timed out");
                    self.abandon(id);
                }
                Err(e)
            }
        }
    }

    fn wait_reply(&mut self, deadline: u64) -> Result<Message, XsError> {
        loop {
            let moved = self.flush()? | self.pump()?;
            if let Some(m) = self.reply.take() {
                return Ok(m);
            }
            if self.transport.now_ns() >= deadline {
                return Err(XsError::Timeout);
            }
            if !moved {
                match self.transport.wait(Some(deadline)) {
                    Ok(()) | Err(XsError::Timeout) => {}
                    Err(e) => return self.fail(e),
                }
            }
        }
    }

    fn ack(&mut self, ty: u32, tx: TxId, parts: &[&[u8]]) -> Result<(), XsError> {
        let p = self.request(ty, tx, parts)?;
        wire::parse_ok(&p)
    }

    // ----- operations -------------------------------------------------------------

    /// `XS_READ` in transaction `tx`.
    ///
    /// # Errors
    ///
    /// [`XsError::InvalidPath`] for a path with NUL; [`XsError::Errno`] with
    /// xenstored's errno (`ENOENT`, `EACCES`, ...); [`XsError::Malformed`]
    /// for a value that is not UTF-8; [`XsError::Timeout`];
    /// [`XsError::Connection`].
    pub fn read_tx(&mut self, tx: TxId, path: &str) -> Result<String, XsError> {
        wire::check_string(path)?;
        let p = self.request(XS_READ, tx, &[path.as_bytes(), b"\0"])?;
        wire::parse_value(&p)
    }

    /// `XS_READ` outside transactions.
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx).
    pub fn read(&mut self, path: &str) -> Result<String, XsError> {
        self.read_tx(TxId::NONE, path)
    }

    /// `XS_READ` in `tx`, with `ENOENT` mapped to `None`.
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx), except `ENOENT`.
    pub fn read_opt_tx(&mut self, tx: TxId, path: &str) -> Result<Option<String>, XsError> {
        match self.read_tx(tx, path) {
            Ok(v) => Ok(Some(v)),
            Err(XsError::Errno(XsErrno::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `XS_READ` with `ENOENT` mapped to `None`.
    ///
    /// # Errors
    ///
    /// As for [`read_opt_tx`](Self::read_opt_tx).
    pub fn read_opt(&mut self, path: &str) -> Result<Option<String>, XsError> {
        self.read_opt_tx(TxId::NONE, path)
    }

    /// `XS_WRITE` in `tx` (creates missing parents).
    ///
    /// # Errors
    ///
    /// [`XsError::InvalidPath`] if the path is empty or either contains NUL;
    /// [`XsError::PayloadTooLarge`]; otherwise as for [`read_tx`](Self::read_tx).
    pub fn write_tx(&mut self, tx: TxId, path: &str, value: &str) -> Result<(), XsError> {
        wire::check_string(path)?;
        if value.as_bytes().contains(&0) {
            return Err(XsError::InvalidPath);
        }
        self.ack(XS_WRITE, tx, &[path.as_bytes(), b"\0", value.as_bytes()])
    }

    /// `XS_WRITE` outside transactions.
    ///
    /// # Errors
    ///
    /// As for [`write_tx`](Self::write_tx).
    pub fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        self.write_tx(TxId::NONE, path, value)
    }

    /// `XS_MKDIR` in `tx`.
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx).
    pub fn mkdir_tx(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        wire::check_string(path)?;
        self.ack(XS_MKDIR, tx, &[path.as_bytes(), b"\0"])
    }

    /// `XS_MKDIR` outside transactions.
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx).
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.mkdir_tx(TxId::NONE, path)
    }

    /// `XS_RM` in `tx` (removes the whole subtree).
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx).
    pub fn rm_tx(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        wire::check_string(path)?;
        self.ack(XS_RM, tx, &[path.as_bytes(), b"\0"])
    }

    /// `XS_RM` outside transactions.
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx).
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.rm_tx(TxId::NONE, path)
    }

    /// `XS_DIRECTORY` in `tx`: the leaf names of the children.
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx), plus [`XsError::Malformed`] for a
    /// listing that is not NUL-terminated names.
    pub fn directory_tx(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        wire::check_string(path)?;
        let p = self.request(XS_DIRECTORY, tx, &[path.as_bytes(), b"\0"])?;
        wire::parse_directory(&p)
    }

    /// `XS_DIRECTORY` outside transactions.
    ///
    /// # Errors
    ///
    /// As for [`directory_tx`](Self::directory_tx).
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.directory_tx(TxId::NONE, path)
    }

    /// `XS_GET_PERMS`: the permission strings of a node (`n0`, `r5`, ...).
    ///
    /// # Errors
    ///
    /// As for [`directory_tx`](Self::directory_tx).
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        wire::check_string(path)?;
        let p = self.request(XS_GET_PERMS, TxId::NONE, &[path.as_bytes(), b"\0"])?;
        Ok(wire::split_strings(&p)?
            .into_iter()
            .map(String::from)
            .collect())
    }

    /// `XS_SET_PERMS`: `perms` are permission strings, the first naming the
    /// owner and the default access (`xenstore.txt`).
    ///
    /// # Errors
    ///
    /// [`XsError::InvalidPath`] for an empty list or a string with NUL;
    /// otherwise as for [`write_tx`](Self::write_tx).
    pub fn set_perms(&mut self, path: &str, perms: &[&str]) -> Result<(), XsError> {
        wire::check_string(path)?;
        if perms.is_empty() {
            return Err(XsError::InvalidPath);
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        parts.push(path.as_bytes());
        parts.push(b"\0");
        for p in perms {
            wire::check_string(p)?;
            parts.push(p.as_bytes());
            parts.push(b"\0");
        }
        self.ack(XS_SET_PERMS, TxId::NONE, &parts)
    }

    /// `XS_WATCH`: events for `path` and its subtree will carry `token`.
    /// xenstored fires the watch once right away.
    ///
    /// # Errors
    ///
    /// As for [`write_tx`](Self::write_tx); `EEXIST` for a duplicate.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        wire::check_string(path)?;
        wire::check_string(token)?;
        let parts: [&[u8]; 4] = [path.as_bytes(), b"\0", token.as_bytes(), b"\0"];
        self.ack(XS_WATCH, TxId::NONE, &parts)
    }

    /// `XS_UNWATCH`. Events of this watch already queued stay queued.
    ///
    /// # Errors
    ///
    /// As for [`watch`](Self::watch); `ENOENT` for an unknown watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        wire::check_string(path)?;
        wire::check_string(token)?;
        let parts: [&[u8]; 4] = [path.as_bytes(), b"\0", token.as_bytes(), b"\0"];
        self.ack(XS_UNWATCH, TxId::NONE, &parts)
    }

    /// `XS_GET_DOMAIN_PATH`: the home of `domid` (`/local/domain/<domid>`).
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx), plus [`XsError::Malformed`] for a
    /// reply that is not one NUL-terminated absolute path.
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, XsError> {
        let arg = format!("{}\0", domid.0);
        let p = self.request(XS_GET_DOMAIN_PATH, TxId::NONE, &[arg.as_bytes()])?;
        let path = wire::parse_single_string(&p)?;
        if !path.starts_with('/') {
            return Err(XsError::Malformed(XsMalformed::BadPayload));
        }
        Ok(String::from(path))
    }

    /// `XS_TRANSACTION_START`.
    ///
    /// # Errors
    ///
    /// As for [`read_tx`](Self::read_tx), plus [`XsError::Malformed`] for a
    /// reply that is not a non-zero decimal id.
    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let p = self.request(XS_TRANSACTION_START, TxId::NONE, &[b"\0"])?;
        wire::parse_tx_id(&p).map(TxId)
    }

    /// `XS_TRANSACTION_END`: commits (`T`) or discards (`F`) `tx`.
    ///
    /// # Errors
    ///
    /// `XsError::Errno(EAGAIN)` when a commit conflicted with another
    /// change; otherwise as for [`read_tx`](Self::read_tx).
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.ack(XS_TRANSACTION_END, tx, &[arg])
    }

    /// Runs `f` in a transaction and commits it, running the whole of `f`
    /// again in a fresh transaction when the commit fails with `EAGAIN` (or
    /// `f` itself fails with `EAGAIN`), at most `max_retries` times after the
    /// first attempt. When `f` fails otherwise, the transaction is discarded
    /// and `f`'s error returned.
    ///
    /// # Errors
    ///
    /// [`XsError::RetriesExhausted`] when every attempt hit `EAGAIN`; `f`'s
    /// error; any error of starting or ending. `f` may fail with any error
    /// a [`XsError`] converts into (a layer above xenstore, say); an
    /// `EAGAIN` from it is recognised after that conversion.
    pub fn transaction<R, E>(
        &mut self,
        max_retries: u32,
        mut f: impl FnMut(&mut Self, TxId) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<XsError> + PartialEq,
    {
        const EAGAIN: XsError = XsError::Errno(XsErrno::EAGAIN);
        let eagain = E::from(EAGAIN);
        for attempt in 0..=max_retries {
            let tx = self.transaction_start()?;
            match f(self, tx) {
                Ok(r) => match self.transaction_end(tx, true) {
                    Ok(()) => return Ok(r),
                    Err(EAGAIN) => {}
                    Err(e) => return Err(e.into()),
                },
                Err(e) => {
                    // Discard; if that fails too, the first error matters more
                    // (unless the connection is gone, which the next call says).
                    let _ = self.transaction_end(tx, false);
                    if e != eagain {
                        return Err(e);
                    }
                }
            }
            log::debug!("xenstore: transaction attempt {attempt} hit EAGAIN");
        }
        Err(XsError::RetriesExhausted.into())
    }

    // ----- watch events -------------------------------------------------------------

    /// Returns a queued watch event without blocking, after collecting what
    /// the transport has. A malformed event is returned once as its
    /// [`XsError::Malformed`] and does not affect the connection.
    ///
    /// # Errors
    ///
    /// A queued malformed event's error; [`XsError::Connection`] or a framing
    /// error when the connection is (or just became) unusable.
    pub fn poll_watch_event(&mut self) -> Result<Option<WatchEvent>, XsError> {
        if self.events.is_empty() && !self.broken {
            self.flush()?;
            self.pump()?;
        }
        match self.events.pop_front() {
            Some(ev) => ev.map(Some),
            None if self.broken => Err(XsError::Connection),
            None => Ok(None),
        }
    }

    /// Takes a queued event of the watch `token` without blocking, after
    /// collecting what the transport has; other watches' events stay queued
    /// in order.
    ///
    /// # Errors
    ///
    /// [`XsError::Connection`] or a framing error when the connection is (or
    /// just became) unusable.
    pub fn take_watch_event_for(&mut self, token: &str) -> Result<Option<WatchEvent>, XsError> {
        if !self.broken {
            self.flush()?;
            self.pump()?;
        }
        let want = |ev: &Result<WatchEvent, XsError>| ev.as_ref().is_ok_and(|e| e.token == token);
        match self.events.iter().position(want) {
            Some(i) => self.events.remove(i).transpose(),
            None if self.broken => Err(XsError::Connection),
            None => Ok(None),
        }
    }

    /// Waits until a watch event arrives or `deadline` ([`XsTransport::now_ns`]
    /// time) passes.
    ///
    /// # Errors
    ///
    /// [`XsError::Timeout`] at the deadline; otherwise as for
    /// [`poll_watch_event`](Self::poll_watch_event).
    pub fn wait_watch_event(&mut self, deadline: u64) -> Result<WatchEvent, XsError> {
        self.wait_event_where(deadline, |_| true)
    }

    /// Like [`wait_watch_event`](Self::wait_watch_event), but takes only an
    /// event with `token`, leaving other events queued in order.
    ///
    /// # Errors
    ///
    /// As for [`wait_watch_event`](Self::wait_watch_event) (malformed events
    /// are left queued for [`poll_watch_event`](Self::poll_watch_event)).
    pub fn wait_watch_event_for(
        &mut self,
        token: &str,
        deadline: u64,
    ) -> Result<WatchEvent, XsError> {
        self.wait_event_where(deadline, |ev| ev.as_ref().is_ok_and(|e| e.token == token))
    }

    fn wait_event_where(
        &mut self,
        deadline: u64,
        mut want: impl FnMut(&Result<WatchEvent, XsError>) -> bool,
    ) -> Result<WatchEvent, XsError> {
        loop {
            if let Some(i) = self.events.iter().position(&mut want) {
                if let Some(ev) = self.events.remove(i) {
                    return ev;
                }
            }
            if self.broken {
                return Err(XsError::Connection);
            }
            let moved = self.flush()? | self.pump()?;
            if moved {
                continue;
            }
            if self.transport.now_ns() >= deadline {
                return Err(XsError::Timeout);
            }
            match self.transport.wait(Some(deadline)) {
                Ok(()) | Err(XsError::Timeout) => {}
                Err(e) => return self.fail(e),
            }
        }
    }
}
