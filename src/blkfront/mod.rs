//! The block frontend driver.
//!
//! [`BlockFront`] is two halves that meet only here: a control plane
//! (`connection`: xenstore, the xenbus state machine, connect, reconnect,
//! teardown) and a data plane (`io` and `queue`: the rings, the requests in
//! flight, what was negotiated). Blocking I/O never reaches xenstore unless
//! a wait runs long and a watch says the backend moved.
//!
//! [`BlockFront::probe`] follows the connection protocol of `io/blkif.h`
//! (the state diagram under "Frontend XenBus Nodes"): wait for the backend's
//! InitWait, read its transport parameters, publish rings and event channels
//! in one transaction (retried on `EAGAIN`), go Initialised, wait for
//! Connected, read the geometry and features, go Connected.
//!
//! I/O has two levels. Non-blocking: `submit_*` returns a
//! [`RequestToken`]; [`kick`](BlockFront::kick) publishes everything
//! submitted so far with one notification per ring;
//! [`poll`](BlockFront::poll) returns [`Completion`]s. Blocking:
//! [`read`](BlockFront::read), [`write`](BlockFront::write),
//! [`flush`](BlockFront::flush), [`discard`](BlockFront::discard) sit on
//! top. A caller's buffer belongs to the driver from submit until its
//! completion is returned. Every request is checked as a whole before any
//! of it is sent; one larger than the rings waits in the driver and goes
//! out in parts as room frees up.
//!
//! The driver contains no `unsafe` code: shared memory is owned by the
//! grant layer's types and copied through its bounds-checked helpers.
#![deny(unsafe_code)]

mod connection;
mod error;
pub mod info;
mod io;
mod keys;
mod queue;
mod request;
pub mod stall;
pub mod units;
pub mod wire;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

pub use error::{Broken, IoError, ProbeError};
pub use info::{
    BackendInfo, BackendKind, DirectIoSafe, DiscardInfo, Endpoints, FlushMethod, Negotiated,
    Offered, SectorsUnit,
};
pub use request::{Completion, Rejected, RequestToken};
pub use stall::{StallCause, StallReport};

use crate::gnttab::GrantTable;
use crate::hal::{Hal, HalError, Port, XsTransport};
use crate::xenbus::XenbusError;
use crate::xenstore::XenStore;
use crate::Result;
use connection::{Change, Connection};
use io::{Io, Limits};
use units::SectorSize;

/// The xenstore client as shared by all disks of a domain: one
/// connection, taken by one request at a time.
///
/// A type of its own, so that which lock is inside (a spin lock: no_std
/// has no other) is not part of the API.
pub struct SharedStore<T: XsTransport>(spin::Mutex<XenStore<T>>);

impl<T: XsTransport> SharedStore<T> {
    /// Shares `store`.
    pub const fn new(store: XenStore<T>) -> SharedStore<T> {
        SharedStore(spin::Mutex::new(store))
    }

    /// The client, for requests of the caller's own; every disk's xenstore
    /// traffic waits until the guard is dropped.
    pub fn lock(&self) -> impl core::ops::DerefMut<Target = XenStore<T>> + '_ {
        self.0.lock()
    }

    /// The client back, once no disk borrows it.
    pub fn into_inner(self) -> XenStore<T> {
        self.0.into_inner()
    }
}

impl<T: XsTransport> From<XenStore<T>> for SharedStore<T> {
    fn from(store: XenStore<T>) -> SharedStore<T> {
        SharedStore::new(store)
    }
}

impl<T: XsTransport> core::fmt::Debug for SharedStore<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedStore").finish_non_exhaustive()
    }
}

/// Limits the frontend applies on top of what the backend offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest ring page order to use (0..=4).
    pub max_ring_page_order: u32,
    /// Most queues to use.
    pub max_queues: u32,
    /// Most segments per indirect request (0 disables indirect descriptors).
    pub max_indirect_segments: u32,
    /// Whether to use persistent grants when the backend offers them.
    pub persistent_grants: bool,
    /// Most data pages the device keeps allocated between requests, over
    /// all its queues (each gets an equal share): with persistent grants
    /// the pages granted for good (at most Linux blkback's 1056 per ring;
    /// below 44 per queue persistent grants are not offered at all),
    /// without them the idle pages kept for reuse (at most a ring's slots
    /// plus 64). A guest with little memory lowers it; requests of any size
    /// still work, in parts that fit.
    pub max_kept_pages: usize,
    /// Bound on each wait for a backend state during connection.
    pub connect_timeout_ns: u64,
    /// Bound on each wait for the backend to follow the frontend to Closing
    /// and to Closed when a connection is taken down.
    pub close_timeout_ns: u64,
    /// Bound on a blocking I/O call; past it the device is marked broken.
    pub io_timeout_ns: u64,
    /// Times a xenstore transaction is retried on `EAGAIN`.
    pub transaction_retries: u32,
    /// What becomes of requests in flight when the backend leaves
    /// Connected but stays online (it may come back).
    pub recovery: Recovery,
    /// Bound on how long requests parked by [`Recovery::Replay`] wait for
    /// the backend to return; past it they fail with [`IoError::Aborted`].
    /// It is checked between attempts to reconnect, each of which may take
    /// up to the connect and close bounds.
    pub replay_timeout_ns: u64,
}

/// What the driver does with requests not yet completed when the backend
/// leaves Connected (goes Closing or Closed) while staying online, as a
/// backend does when it restarts, or after the guest was suspended and
/// moved. A backend that goes away for good (its directory removed, or
/// `online` set to 0 by the toolstack, as `xl block-detach` does) fails
/// them with [`IoError::Aborted`] either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Opt-in until a fuzzer finding is understood (see the changelog).
    /// Keep them, reconnect by itself when the backend returns (frontend
    /// Initialising once the backend is Closed, connect at its InitWait),
    /// and send each again exactly once under the new connection's limits:
    /// cut into parts afresh, with new grants, re-checked against the new
    /// backend's sector size, capacity, read-only flag and features (what
    /// no longer fits fails with the error its submission would now get).
    /// The caller sees latency, not errors. Linux's `blkif_recover` does
    /// the same.
    Replay,
    /// The default. Fail them at once with [`IoError::Aborted`]; the device stays
    /// Disconnected until [`BlockFront::check_backend`] sees the backend
    /// in InitWait or the caller calls [`BlockFront::reconnect`].
    Abort,
}

impl Config {
    /// The defaults ([`Default`] gives the same), for `const` contexts:
    /// `Config { max_queues: 1, ..Config::DEFAULT }`.
    pub const DEFAULT: Config = Config {
        max_ring_page_order: 4,
        max_queues: 4,
        max_indirect_segments: 256,
        persistent_grants: true,
        max_kept_pages: 4 * 1056,
        connect_timeout_ns: 10_000_000_000,
        close_timeout_ns: 5_000_000_000,
        io_timeout_ns: 30_000_000_000,
        transaction_retries: 16,
        recovery: Recovery::Abort,
        replay_timeout_ns: 60_000_000_000,
    };
}

impl Default for Config {
    fn default() -> Self {
        Config::DEFAULT
    }
}

/// Where the device stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Rings up, I/O accepted.
    Connected,
    /// The backend closed. Requests not yet completed wait to be replayed
    /// ([`Recovery::Replay`]) or were aborted; the device reconnects when
    /// the backend returns to InitWait.
    Disconnected,
    /// The backend broke the protocol (or stopped answering); no further
    /// I/O. Every request failed by the break carries the same cause
    /// ([`IoError::Broken`], or [`IoError::Timeout`] for a timeout).
    Broken(Broken),
    /// [`BlockFront::close`] was called.
    Closed,
}

/// What [`BlockFront::check_backend`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// Nothing changed.
    None,
    /// The backend is closing or closed, or went away for good;
    /// requests not yet completed were failed with [`IoError::Aborted`].
    Closed,
    /// The backend closed but stays online: it may come back. The device
    /// gave up its rings; `parked` requests wait to be replayed
    /// ([`Recovery::Replay`]).
    Away {
        /// Requests waiting to be replayed.
        parked: usize,
    },
    /// The backend came back and the device reconnected.
    Reconnected {
        /// Requests sent again on the new connection.
        replayed: usize,
        /// Parked requests the new connection could not take (its sector
        /// size, capacity, read-only flag or features differ), failed with
        /// the error their submission would now get.
        failed: usize,
    },
    /// The backend published a new size.
    Resized {
        /// Old capacity in bytes.
        old_bytes: u64,
        /// New capacity in bytes.
        new_bytes: u64,
    },
}

/// Backend events kept for [`BlockFront::take_backend_event`].
const MAX_EVENTS: usize = 16;

/// How often, at most, an empty [`BlockFront::poll`] looks whether the
/// backend's state changed (1 ms).
const BACKEND_LOOK_NS: u64 = 1_000_000;

/// How long a blocking call sleeps on the event channels before it looks
/// whether the backend moved (a watch event), in nanoseconds.
const WAIT_SLICE_NS: u64 = 10_000_000;

/// A Xen PV block device.
///
/// End it with [`close`](Self::close): Closing and Closed towards the
/// backend, every grant revoked, the frontend's keys removed, every page
/// freed (or quarantined while the backend still maps it). Dropping a
/// `BlockFront` without `close` does none of that, since it would have to
/// wait for the backend: its rings, grants and pages stay held, and the
/// frontend stays published, until the next probe of the same disk resets
/// it and gives them back.
pub struct BlockFront<'a, H: Hal, T: XsTransport> {
    hal: &'a H,
    gt: &'a GrantTable<'a, H>,
    conn: Connection<'a, H, T>,
    io: Io<'a, H>,
    /// What the driver saw the backend do, oldest first, until taken (the
    /// last [`MAX_EVENTS`]).
    events: VecDeque<BackendEvent>,
    /// When an empty poll next looks at the backend's watch ([`Hal::now_ns`]).
    next_backend_look: u64,
    /// When parked requests give up waiting for the backend.
    parked_until: u64,
}

/// The device in brief: its number, state, geometry and requests held.
impl<H: Hal, T: XsTransport> core::fmt::Debug for BlockFront<'_, H, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlockFront")
            .field("vdev", &self.info().vdev)
            .field("state", &self.state())
            .field("sectors", &self.sectors())
            .field("sector_size", &self.sector_size())
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

impl<'a, H: Hal, T: XsTransport> BlockFront<'a, H, T> {
    /// The virtual-device numbers of every disk under `device/vbd`
    /// ([`crate::xenbus::enumerate_vbds`]; entries whose backend keys are
    /// missing or malformed are skipped).
    ///
    /// # Errors
    ///
    /// xenstore errors; a missing `device/vbd` directory is an empty list.
    pub fn enumerate(store: &SharedStore<T>) -> Result<Vec<u32>, XenbusError> {
        let vbds = crate::xenbus::enumerate_vbds(&mut store.lock())?;
        Ok(vbds.into_iter().map(|v| v.vdev).collect())
    }

    /// Connects to disk `vdev` (the name of its `device/vbd/<vdev>`
    /// directory).
    ///
    /// # Errors
    ///
    /// [`ProbeError`] with [`XenbusError::StateTimeout`] and a
    /// [`StallReport`] when the backend does not reach InitWait or Connected
    /// within `cfg.connect_timeout_ns`, or [`XenbusError::UnexpectedState`]
    /// and a report when it closes instead; [`XenbusError::NoDevice`] when
    /// `device/vbd/<vdev>` does not exist; [`XenbusError::MissingKey`] /
    /// [`XenbusError::MalformedKey`] naming a bad key; xenstore, grant,
    /// ring and event-channel errors (each as the [`Error`](crate::Error)
    /// variant of its layer). `?` turns a `ProbeError` into an
    /// [`Error`](crate::Error) (dropping the report) or a
    /// `Box<dyn core::error::Error>`. Whatever was taken is given back, in the protocol's
    /// order, and the frontend is left Closed, so that a later probe can
    /// start again.
    pub fn probe(
        hal: &'a H,
        gt: &'a GrantTable<'a, H>,
        store: &'a SharedStore<T>,
        vdev: u32,
        cfg: Config,
    ) -> core::result::Result<Self, ProbeError> {
        let named = |mut e: ProbeError| {
            e.vdev = Some(vdev);
            e
        };
        let conn = Connection::open(hal, gt, store, vdev, cfg).map_err(|e| named(e.into()))?;
        let limits = Limits {
            handle: vdev as u16,
            wire_unit: units::WireUnit::BYTES_512,
            sector_size: SectorSize::DEFAULT,
            sectors: 0,
            read_only: true,
            part_bytes: 4096,
            indirect_segments: 0,
            flush: None,
            discard: None,
        };
        let mut dev = BlockFront {
            hal,
            gt,
            conn,
            io: Io::new(limits),
            events: VecDeque::new(),
            next_backend_look: 0,
            parked_until: 0,
        };
        dev.connect().map_err(named)?;
        Ok(dev)
    }

    /// Connects, and replays what was parked.
    fn connect(&mut self) -> core::result::Result<io::Replayed, ProbeError> {
        match self.conn.connect() {
            Ok((queues, limits)) => Ok(self.io.attach(queues, limits)),
            Err(e) => {
                if self.io.parked() > 0 {
                    // Keep learning where the backend goes.
                    let _ = self.conn.keep_watching();
                }
                Err(e)
            }
        }
    }

    /// What the backend published and what was negotiated.
    pub fn info(&self) -> &BackendInfo {
        &self.conn.info
    }

    /// The device's state.
    pub fn state(&self) -> DeviceState {
        self.io.state()
    }

    /// Logical sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.io.limits().sector_size.bytes()
    }

    /// Capacity in logical sectors.
    pub fn sectors(&self) -> u64 {
        self.io.limits().sectors
    }

    /// Requests submitted and not yet returned by [`poll`](Self::poll)
    /// (in flight, waiting for room on a ring or for the backend to return,
    /// or done).
    pub fn outstanding(&self) -> usize {
        self.io.outstanding()
    }

    /// Requests waiting for the backend to come back, to be replayed
    /// ([`Recovery::Replay`]); 0 while connected.
    pub fn parked(&self) -> usize {
        self.io.parked()
    }

    /// Ring slots in use across all queues.
    pub fn in_flight(&self) -> usize {
        self.io.in_flight()
    }

    /// The event channels of the device's queues, in queue order (one per
    /// queue; empty when the device holds no rings, e.g. after
    /// [`close`](Self::close)). For callers that wait in their own way on
    /// several devices at once; [`wait`](Self::wait) waits on these.
    pub fn ports(&self) -> Vec<Port> {
        self.io.ports().collect()
    }

    /// Blocks until an event arrives on one of the device's queues, a
    /// completion is ready for [`poll`](Self::poll), or `deadline`
    /// ([`Hal::now_ns`] time) passes: the waiting half of the non-blocking
    /// API, for a caller whose [`poll`](Self::poll) found nothing. Race
    /// free: [`poll`](Self::poll) consumes every queue's event before its
    /// final check of the ring, so a response published after that check
    /// leaves the event pending and this returns at once. Early returns are
    /// allowed; the caller polls again either way.
    ///
    /// # Errors
    ///
    /// [`IoError::Timeout`] when `deadline` passed without an event (the
    /// caller may still find work: it polls again); the device's state
    /// error ([`IoError::NotConnected`], [`IoError::Broken`],
    /// [`IoError::Closed`]) when it holds no rings and nothing is left to
    /// poll; [`IoError::Hal`] with any other error of [`Hal::evtchn_wait`].
    pub fn wait(&self, deadline: u64) -> Result<(), IoError> {
        if self.io.has_done() {
            return Ok(());
        }
        if self.io.parked() > 0 {
            // No rings to wait on: sleep until the next look at the
            // backend, which poll makes.
            let until = deadline.min(self.hal.now_ns().saturating_add(BACKEND_LOOK_NS));
            return match self.hal.evtchn_wait(&[], Some(until)) {
                Err(HalError::Timeout) if until >= deadline => Err(IoError::Timeout),
                Ok(()) | Err(HalError::Timeout) => Ok(()),
                Err(e) => Err(IoError::Hal(e)),
            };
        }
        // Nothing will arrive on a device that is not connected (a broken
        // one may still hold its rings): say why instead of sleeping.
        self.io.check_usable()?;
        self.io.consume_idle_events();
        self.wait_events(deadline).map_err(|e| match e {
            HalError::Timeout => IoError::Timeout,
            e => IoError::Hal(e),
        })
    }

    /// Blocks in [`Hal::evtchn_wait`] on every queue's event channel until
    /// one is pending or `deadline` passes (no allocation for up to eight
    /// queues).
    fn wait_events(&self, deadline: u64) -> Result<(), HalError> {
        let mut ports = [Port(0); 8];
        let n = self.io.queue_count();
        if n <= ports.len() {
            for (p, q) in ports.iter_mut().zip(self.io.ports()) {
                *p = q;
            }
            self.hal.evtchn_wait(&ports[..n], Some(deadline))
        } else {
            self.hal.evtchn_wait(&self.ports(), Some(deadline))
        }
    }

    /// Pages in the grant table's quarantine that this device released
    /// while the backend still mapped them (never reused while that holds).
    pub fn quarantined(&self) -> usize {
        self.gt.quarantined_pages_of(self.conn.info.vdev)
    }

    /// Submits a read of `buf.len()` bytes (a non-zero multiple of the
    /// logical sector size) starting at logical sector `sector`. The buffer
    /// comes back, filled, in the [`Completion`]; after a failed read it is
    /// untouched. A request larger than the rings can hold at once, or one
    /// submitted while they are full, waits in the driver and is sent in
    /// parts as room frees up.
    ///
    /// # Errors
    ///
    /// [`Rejected`] (with the buffer, nothing sent) for
    /// [`IoError::Misaligned`], [`IoError::OutOfRange`],
    /// [`IoError::NotConnected`], [`IoError::Broken`], [`IoError::Closed`],
    /// and grant or memory exhaustion ([`IoError::Grant`]) while nothing else
    /// is in flight.
    pub fn submit_read(
        &mut self,
        sector: u64,
        buf: Vec<u8>,
    ) -> core::result::Result<RequestToken, Rejected> {
        self.io.submit_rw(sector, buf, false, false)
    }

    /// Submits a write of `buf` at logical sector `sector`. The buffer comes
    /// back in the [`Completion`].
    ///
    /// # Errors
    ///
    /// As for [`submit_read`](Self::submit_read), plus [`IoError::ReadOnly`].
    pub fn submit_write(
        &mut self,
        sector: u64,
        buf: Vec<u8>,
    ) -> core::result::Result<RequestToken, Rejected> {
        self.io.submit_rw(sector, buf, true, false)
    }

    /// Submits a cache flush: `BLKIF_OP_FLUSH_DISKCACHE`, or an empty
    /// `BLKIF_OP_WRITE_BARRIER` when the backend only offers barriers.
    ///
    /// # Errors
    ///
    /// [`IoError::Unsupported`] when neither is offered (or both were turned
    /// off after `EOPNOTSUPP`), then [`IoError::ReadOnly`] on a read-only
    /// disk (nothing is sent); state errors.
    pub fn submit_flush(&mut self) -> Result<RequestToken, IoError> {
        self.io.submit_flush()
    }

    /// Submits a discard of `count` logical sectors from `sector`.
    ///
    /// The range is shrunk inwards to whole `discard-granularity` units
    /// (offset by `discard-alignment`): discarding is advisory, and a
    /// partial unit could not be discarded anyway. Whatever the backend
    /// published, the request never reaches outside the caller's range. A
    /// range with no whole unit completes at once, successfully. `secure`
    /// asks for `BLKIF_DISCARD_SECURE`.
    ///
    /// # Errors
    ///
    /// [`IoError::Unsupported`] (`Discard`, or `SecureDiscard` when `secure`
    /// is asked and `discard-secure` is not offered), [`IoError::ReadOnly`],
    /// [`IoError::Misaligned`] for `count == 0`, [`IoError::OutOfRange`],
    /// state errors.
    pub fn submit_discard(
        &mut self,
        sector: u64,
        count: u64,
        secure: bool,
    ) -> Result<RequestToken, IoError> {
        self.io.submit_discard(sector, count, secure)
    }

    /// Publishes everything submitted since the last kick, with at most one
    /// notification per queue (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub fn kick(&mut self) {
        self.io.kick();
    }

    /// Harvests responses (with the final-check protocol of `ring.h`), sends
    /// waiting requests into the room they left, and returns the next
    /// finished request, if any. Kicks first.
    ///
    /// When it finds nothing on a connected device, it also looks (at most
    /// once a millisecond) whether the backend's `state` changed (an event
    /// of the device's xenstore watch: a look at the xenstore ring, no
    /// request when nothing came) and if so reacts as
    /// [`check_backend`](Self::check_backend) does: a backend going away
    /// (`xl block-detach`, or its directory removed) fails what is in
    /// flight at once with [`IoError::Aborted`], which the following polls
    /// return, and the device disconnects; a backend that closes but stays
    /// online has what is in flight parked, and a disconnected device with
    /// parked requests keeps looking, reconnects when the backend returns,
    /// and replays them ([`Recovery::Replay`]). What it saw is kept for
    /// [`take_backend_event`](Self::take_backend_event).
    pub fn poll(&mut self) -> Option<Completion> {
        let c = self.io.poll();
        self.sync_turned_off();
        if c.is_some() {
            return c;
        }
        let parked = self.io.parked() > 0;
        if self.io.state() != DeviceState::Connected && !parked {
            return None;
        }
        // At most once per BACKEND_LOOK_NS of empty polls: a caller that
        // polls between requests pays a clock read, not a look at the ring.
        let now = self.hal.now_ns();
        if now < self.next_backend_look {
            return None;
        }
        self.next_backend_look = now.saturating_add(BACKEND_LOOK_NS);
        self.look(now);
        self.io.poll()
    }

    /// Gives up on parked requests past their bound; otherwise, if the
    /// backend's watch fired, looks at the backend and keeps what it saw
    /// for [`take_backend_event`](Self::take_backend_event).
    fn look(&mut self, now: u64) {
        if self.io.parked() > 0 && now >= self.parked_until {
            log::warn!(
                "xenblk {}: the backend did not come back in time; parked requests fail",
                self.conn.info.vdev
            );
            self.io.abort_all(IoError::Aborted);
            self.record(BackendEvent::Closed);
            return;
        }
        if !self.conn.backend_moved() {
            return;
        }
        match self.check_backend() {
            Ok(BackendEvent::None) => {}
            Ok(ev) => self.record(ev),
            Err(e) => log::warn!(
                "xenblk {}: looking at the backend after its state changed: {e}",
                self.conn.info.vdev
            ),
        }
    }

    /// The oldest thing the driver saw the backend do (closing, a new
    /// size, a reconnect) that was not taken yet; `None` when nothing
    /// happened since. [`poll`](Self::poll) and the blocking calls record
    /// events; the last 16 are kept.
    pub fn take_backend_event(&mut self) -> Option<BackendEvent> {
        self.events.pop_front()
    }

    fn record(&mut self, ev: BackendEvent) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// Brings the report up to date with features the backend refused.
    fn sync_turned_off(&mut self) {
        if let Some(feats) = self.io.take_turned_off() {
            self.conn.turned_off(&feats);
        }
    }

    /// Waits until `token` completes, then returns its completion.
    fn wait_for(&mut self, token: RequestToken) -> Completion {
        let bound = self.conn.config().io_timeout_ns;
        let mut deadline = self.hal.now_ns().saturating_add(bound);
        loop {
            if self.io.state() == DeviceState::Connected {
                self.io.progress();
                self.sync_turned_off();
            }
            if let Some(c) = self.io.take_done(token) {
                return c;
            }
            let now = self.hal.now_ns();
            if self.io.parked() > 0 {
                // Waiting for the backend to come back: the I/O bound
                // starts again once it has.
                deadline = now.saturating_add(bound);
                let slice = now.saturating_add(WAIT_SLICE_NS).min(self.parked_until);
                let _ = self.hal.evtchn_wait(&[], Some(slice));
                let now = self.hal.now_ns();
                self.look(now);
                continue;
            }
            if self.io.state() != DeviceState::Connected {
                // Everything was failed when the device left Connected, so
                // the token would be done: it was never in flight.
                return Completion {
                    token,
                    result: Err(IoError::UnknownToken),
                    buf: None,
                };
            }
            if now >= deadline {
                log::error!(
                    "xenblk {}: no response within the I/O bound",
                    self.conn.info.vdev
                );
                self.io.break_device(Broken::Timeout);
                continue;
            }
            let slice = now.saturating_add(WAIT_SLICE_NS).min(deadline);
            self.io.consume_idle_events();
            if self.wait_events(slice).is_err() {
                // Quiet for a while: look whether the backend moved.
                self.look(self.hal.now_ns());
            }
        }
    }

    /// Reads `buf.len()` bytes from logical sector `sector`, blocking. The
    /// whole range is checked first; `buf` is written only when every part
    /// succeeded.
    ///
    /// # Errors
    ///
    /// As for [`submit_read`](Self::submit_read), plus the request's own
    /// outcome ([`IoError::Backend`], [`IoError::Aborted`],
    /// [`IoError::Timeout`], [`IoError::Broken`] with the cause). An empty
    /// `buf` only checks the device's state.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        if buf.is_empty() {
            return self.io.check_usable();
        }
        let t = self
            .io
            .submit_rw(sector, alloc::vec![0u8; buf.len()], false, true)
            .map_err(|r| r.error)?;
        let c = self.wait_for(t);
        c.result?;
        match c.buf {
            Some(b) if b.len() == buf.len() => {
                buf.copy_from_slice(&b);
                Ok(())
            }
            _ => Err(IoError::UnknownToken),
        }
    }

    /// Writes `buf` at logical sector `sector`, blocking. The whole range is
    /// checked before anything is sent.
    ///
    /// # Errors
    ///
    /// As for [`read`](Self::read), plus [`IoError::ReadOnly`].
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), IoError> {
        if buf.is_empty() {
            return self.io.check_usable();
        }
        let t = self
            .io
            .submit_rw(sector, buf.to_vec(), true, true)
            .map_err(|r| r.error)?;
        self.wait_for(t).result
    }

    /// Flushes the backend's write cache, blocking.
    ///
    /// # Errors
    ///
    /// As for [`submit_flush`](Self::submit_flush), plus the outcome.
    pub fn flush(&mut self) -> Result<(), IoError> {
        let t = self.submit_flush()?;
        self.wait_for(t).result
    }

    /// Discards `count` logical sectors from `sector`, blocking.
    ///
    /// # Errors
    ///
    /// As for [`submit_discard`](Self::submit_discard), plus the outcome.
    pub fn discard(&mut self, sector: u64, count: u64, secure: bool) -> Result<(), IoError> {
        let t = self.submit_discard(sector, count, secure)?;
        self.wait_for(t).result
    }

    /// Looks at the backend's state and size and reacts, picking up a new
    /// `sectors` value while connected. A backend leaving Connected has the
    /// rings taken down: requests not yet completed are parked for a replay
    /// ([`BackendEvent::Away`]) when the backend stays online and
    /// [`Config::recovery`] is [`Recovery::Replay`], and fail with
    /// [`IoError::Aborted`] otherwise ([`BackendEvent::Closed`]). While
    /// disconnected it asks a Closed backend to come back
    /// ([`Recovery::Replay`] only), reconnects when the backend is in
    /// InitWait ([`BackendEvent::Reconnected`], replaying what was
    /// parked), and fails parked requests when the backend goes away for
    /// good.
    /// Nothing else is re-read while connected: a backend that changes
    /// `sector-size` or its features under a live connection is ignored
    /// until the next connection (which reads every key again).
    ///
    /// # Errors
    ///
    /// xenstore errors, `MalformedKey` for a `state` or `sectors` value
    /// that does not parse (nothing changes), and the errors of
    /// reconnecting.
    pub fn check_backend(&mut self) -> Result<BackendEvent> {
        let replay = self.conn.config().recovery == Recovery::Replay;
        match self.io.state() {
            DeviceState::Connected => {
                let old_bytes = self.conn.info.capacity_bytes;
                match self.conn.check(true)? {
                    Change::Left { for_good } if for_good || !replay => {
                        let queues = self.io.detach(IoError::Aborted);
                        self.io.set_state(DeviceState::Disconnected);
                        self.conn.teardown(queues)?;
                        Ok(BackendEvent::Closed)
                    }
                    Change::Left { .. } => {
                        let (queues, parked) = self.io.park_all();
                        self.parked_until = self
                            .hal
                            .now_ns()
                            .saturating_add(self.conn.config().replay_timeout_ns);
                        log::info!(
                            "xenblk {}: {parked} requests wait for the backend to return",
                            self.conn.info.vdev
                        );
                        let r = self.conn.teardown(queues);
                        // A new watch fires at once: the next look finds the
                        // backend wherever it went (Closed: asked back).
                        self.conn.keep_watching()?;
                        r?;
                        Ok(BackendEvent::Away { parked })
                    }
                    Change::Resized(new_bytes) => {
                        let ss = u64::from(self.io.limits().sector_size.bytes());
                        self.io.set_sectors(new_bytes / ss);
                        Ok(BackendEvent::Resized {
                            old_bytes,
                            new_bytes,
                        })
                    }
                    Change::None | Change::Back | Change::Closed | Change::Gone => {
                        Ok(BackendEvent::None)
                    }
                }
            }
            DeviceState::Disconnected => match self.conn.check(false)? {
                Change::Back => {
                    let r = self.connect().map_err(|e| e.error)?;
                    if r.requests + r.failed > 0 {
                        log::info!(
                            "xenblk {}: reconnected; {} requests replayed, {} failed",
                            self.conn.info.vdev,
                            r.requests,
                            r.failed
                        );
                    }
                    Ok(BackendEvent::Reconnected {
                        replayed: r.requests,
                        failed: r.failed,
                    })
                }
                Change::Closed if replay => {
                    self.conn.request_reconnect()?;
                    Ok(BackendEvent::None)
                }
                Change::Gone if self.io.parked() > 0 => {
                    self.io.abort_all(IoError::Aborted);
                    Ok(BackendEvent::Closed)
                }
                _ => Ok(BackendEvent::None),
            },
            DeviceState::Broken(_) | DeviceState::Closed => Ok(BackendEvent::None),
        }
    }

    /// Closes the device: fails what is in flight, then takes the rings
    /// down in the protocol's order (frontend Closing, Closed, each waited
    /// for within `close_timeout_ns`; grants revoked; ring keys removed;
    /// pages freed). Pages the backend still maps stay in quarantine; their
    /// count is returned.
    ///
    /// # Errors
    ///
    /// xenstore errors while switching state or removing keys (resources are
    /// released anyway). A frontend directory that vanished is no error.
    /// Afterwards the device may be probed again.
    pub fn close(&mut self) -> Result<usize> {
        if self.io.state() == DeviceState::Closed {
            return Ok(self.quarantined());
        }
        let queues = self.io.detach(IoError::Closed);
        let r = if queues.is_empty() {
            Ok(())
        } else {
            self.conn.teardown(queues)
        };
        self.io.set_state(DeviceState::Closed);
        self.gt.retry_quarantine();
        // Closed: another driver (a new probe) may take the device now.
        self.conn.release();
        r.map(|()| self.quarantined())
    }

    /// Asks a closed backend to come back and reconnects (frontend
    /// Initialising; blkback answers InitWait). Requests parked when the
    /// backend closed ([`Recovery::Replay`]) are replayed; with
    /// [`Recovery::Abort`] they completed with [`IoError::Aborted`].
    ///
    /// # Errors
    ///
    /// The device's state error unless it is [`DeviceState::Disconnected`]:
    /// [`IoError::Broken`] with its cause, [`IoError::Closed`], or
    /// [`XenbusError::UnexpectedState`] for a device that is still
    /// connected; otherwise as for [`probe`](Self::probe).
    pub fn reconnect(&mut self) -> core::result::Result<(), ProbeError> {
        match self.io.state() {
            DeviceState::Disconnected => {}
            DeviceState::Connected => {
                return Err(
                    XenbusError::UnexpectedState(crate::xenbus::XenbusState::Connected).into(),
                )
            }
            DeviceState::Broken(_) | DeviceState::Closed => {
                let e = self.io.check_usable().err().unwrap_or(IoError::Closed);
                return Err(crate::Error::from(e).into());
            }
        }
        self.conn.request_reconnect()?;
        self.connect().map(drop)
    }

    /// A debugging name.
    pub fn name(&self) -> String {
        alloc::format!("xvd{}", self.conn.info.vdev)
    }
}
