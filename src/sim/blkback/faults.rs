//! Fault injection and the counters tests read.
//!
//! A [`Faults`] plan can be replaced at any time through the backend's
//! handle. Faults that corrupt a response are one-shot: they apply to the
//! next response and then clear themselves. The others (a slow or silent
//! backend, grants kept mapped) stay until the plan is replaced.

use crate::xenbus::XenbusState;

/// How the next response's `id` is corrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadId {
    /// An id no frontend hands out (`u64::MAX`).
    OutOfRange,
    /// The id of the request answered just before (no longer in flight).
    /// Waits for a response to exist before it applies.
    NotInFlight,
}

/// The fault plan of a simulated backend. `Faults::default()` is a healthy
/// backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// One-shot: the next response carries a bad id.
    pub bad_id: Option<BadId>,
    /// One-shot: after the next responses are published, `rsp_prod` is
    /// written this far past them (and the frontend notified): a backend
    /// claiming responses it never wrote.
    pub rsp_prod_jump: Option<u32>,
    /// One-shot: the next response carries another operation (a read is
    /// answered as a write, anything else as a read).
    pub wrong_operation: bool,
    /// One-shot: the next response carries this status, which should be
    /// none of the `BLKIF_RSP_*` values.
    pub unknown_status: Option<i16>,
    /// Take requests and never answer them.
    pub swallow_requests: bool,
    /// Answer each request this many nanoseconds (on the simulator's clock)
    /// after taking it. Barriers still wait for everything before them.
    pub delay_ns: u64,
    /// Go Closing when the this-many-th request from now is taken, leaving
    /// it, every later one and every delayed response unanswered (`Some(1)`:
    /// the next request; `Some(0)`: at the next wake-up, before taking any).
    pub closing_after: Option<u64>,
    /// Keep each request's data grants mapped after answering it, until
    /// [`release_kept_grants`](super::SimBlkBackHandle::release_kept_grants)
    /// or the frontend closes.
    pub keep_grants_mapped: bool,
    /// Send this many notifications with nothing on the ring (consumed as
    /// they are sent).
    pub spurious_notifications: u32,
    /// Answer the next this-many reads, writes and discards with
    /// `BLKIF_RSP_ERROR` without touching the disk (an I/O error).
    pub io_errors: u32,
    /// Puppet mode: take requests and do their I/O, but hold every response
    /// (and the frames its request maps) until the test releases it with
    /// [`release_held`](super::SimBlkBackHandle::release_held), edited as it
    /// likes. See the `puppet` module for the raw ring writes that go with it.
    pub hold_responses: bool,
}

/// What a simulated backend counted since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The backend's xenbus state now.
    pub state: Option<XenbusState>,
    /// Times the backend reached Connected.
    pub connects: u64,
    /// Times the backend was replaced by a restart
    /// ([`restart_as`](super::SimBlkBackHandle::restart_as)).
    pub restarts: u64,
    /// Requests taken off the rings, by kind.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// `BLKIF_OP_FLUSH_DISKCACHE` requests.
    pub flushes: u64,
    /// `BLKIF_OP_WRITE_BARRIER` requests.
    pub barriers: u64,
    /// `BLKIF_OP_DISCARD` requests.
    pub discards: u64,
    /// `(sector_number, nr_sectors)` of the last `BLKIF_OP_DISCARD` request
    /// taken, as it came on the ring (512-byte units for blkback, logical
    /// blocks for qdisk), whatever its outcome: lets a test check that a
    /// discard stays inside the range its caller asked for even on a null
    /// disk, whose contents show nothing.
    pub last_discard: Option<(u64, u64)>,
    /// Secure discards carried out.
    pub secure_discards: u64,
    /// Requests that came as `BLKIF_OP_INDIRECT`.
    pub indirect: u64,
    /// Requests with an operation the backend does not know.
    pub unknown_ops: u64,
    /// Responses sent with `BLKIF_RSP_OKAY`.
    pub ok: u64,
    /// Responses sent with `BLKIF_RSP_ERROR`.
    pub errors: u64,
    /// Responses sent with `BLKIF_RSP_EOPNOTSUPP`.
    pub eopnotsupp: u64,
    /// Requests left unanswered by a fault.
    pub unanswered: u64,
    /// Notifications sent to the frontend (spurious ones included).
    pub notifications_sent: u64,
    /// Notifications received from the frontend.
    pub notifications_received: u64,
    /// The most requests taken in one wake-up.
    pub max_requests_per_wakeup: u64,
    /// Protocol violations by the frontend (a bad `req_prod`); the ring stops
    /// being served after one.
    pub protocol_errors: u64,
    /// Requests (in puppet mode) that mapped a frame another request of the
    /// same ring still had mapped, not through a persistent grant: the
    /// frontend reused a page the backend could still write. Always 0 for a
    /// correct frontend.
    pub reused_while_mapped: u64,
    /// Data and indirect grants mapped right now (rings not counted).
    pub grants_mapped: usize,
    /// Of those, grants kept mapped persistently.
    pub persistent_grants: usize,
    /// Of those, grants kept mapped by `keep_grants_mapped`.
    pub grants_kept: usize,
    /// Queues (rings) connected now.
    pub queues: usize,
    /// Ring order of the connection (pages = 1 << order).
    pub ring_order: u32,
    /// Whether persistent grants were negotiated.
    pub persistent: bool,
}
