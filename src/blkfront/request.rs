//! Requests: what the caller holds (a [`RequestToken`], then a
//! [`Completion`]), and the driver's own record of every request until it
//! completes ([`Pending`], kept in a [`PendingTable`]).
//!
//! Three kinds of identifier, each with one name:
//! - [`RequestToken`]: the caller's handle, unique per device, increasing;
//! - [`PendingId`]: the index of a request in the pending table;
//! - `SlotId` (in `queue`): a ring slot, sent as the wire `id`.
//!
//! A `Pending` describes the whole operation (what, where, the caller's
//! buffer), not the ring slots it happens to use, so that it can be cut
//! into parts again under other limits.

use alloc::vec::Vec;

use super::units::WireSector;
use super::IoError;

/// Identifies one submitted request until its [`Completion`] is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestToken(pub(super) u64);

impl RequestToken {
    /// The token's number (unique per device, increasing).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// A finished request. Its `Debug` shows the buffer's length, not its
/// bytes.
#[derive(PartialEq, Eq)]
pub struct Completion {
    /// Which request.
    pub token: RequestToken,
    /// Its outcome.
    pub result: Result<(), IoError>,
    /// The caller's buffer, back from the driver (filled on a successful
    /// read, untouched after a failed one). `None` for flush and discard.
    pub buf: Option<Vec<u8>>,
}

/// A submission the driver refused; the caller's buffer comes back intact.
/// Its `Debug` shows the buffer's length, not its bytes.
#[derive(PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub error: IoError,
    /// The caller's buffer.
    pub buf: Vec<u8>,
}

/// A buffer in `Debug` output: its length (a request's bytes would fill
/// screens).
struct BufLen(usize);

impl core::fmt::Debug for BufLen {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl core::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .field("buf", &BufLen(self.buf.len()))
            .finish()
    }
}

impl core::fmt::Debug for Completion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Completion")
            .field("token", &self.token)
            .field("result", &self.result)
            .field("buf", &self.buf.as_ref().map(|b| BufLen(b.len())))
            .finish()
    }
}

/// Shows the reason alone (the buffer is the caller's again).
impl core::fmt::Display for Rejected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.error, f)
    }
}

/// Transparent: the reason's own source.
impl core::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        core::error::Error::source(&self.error)
    }
}

/// The reason, for `?` where the buffer is no longer wanted.
impl From<Rejected> for IoError {
    fn from(r: Rejected) -> IoError {
        r.error
    }
}

/// The reason as the crate's error, for `?` where the buffer is no longer
/// wanted.
impl From<Rejected> for crate::Error {
    fn from(r: Rejected) -> crate::Error {
        r.error.into()
    }
}

/// The index of a request in the [`PendingTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PendingId(u32);

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// Read `buf.len()` bytes from `sector`.
    Read { sector: WireSector },
    /// Write the buffer at `sector`.
    Write { sector: WireSector },
    /// A cache flush: `BLKIF_OP_FLUSH_DISKCACHE`, or `BLKIF_OP_WRITE_BARRIER`
    /// with no data (the operation byte).
    Flush { op: u8 },
    /// Discard `count` units from `sector` (already shrunk to whole
    /// granularity units).
    Discard {
        sector: WireSector,
        count: WireSector,
        secure: bool,
    },
}

/// A request between its submission and its completion.
pub(super) struct Pending {
    pub(super) token: RequestToken,
    pub(super) op: Op,
    /// The caller's buffer (reads and writes).
    pub(super) buf: Option<Vec<u8>>,
    /// Bytes of the buffer handed to a ring so far (reads and writes), or 1
    /// once a control request is on a ring.
    pub(super) pushed: usize,
    /// Parts on a ring now.
    pub(super) in_flight: u32,
    /// The first error of any part; the request fails as a whole.
    pub(super) error: Option<IoError>,
    /// Read data goes straight into `buf`: the buffer is the driver's own
    /// (a blocking call copies it out only on success), or the read is one
    /// part. Otherwise parts land in a staging buffer first, so that a
    /// failed read never writes into the caller's buffer.
    pub(super) direct: bool,
    /// The buffer is the driver's own (a blocking call): read data may
    /// always land in it directly, under any connection's limits.
    pub(super) private: bool,
}

impl Pending {
    /// How much there is to push: the buffer's length, or 1 for a control
    /// request.
    pub(super) fn total(&self) -> usize {
        match self.op {
            Op::Read { .. } | Op::Write { .. } => self.buf.as_ref().map_or(0, Vec::len),
            Op::Flush { .. } | Op::Discard { .. } => 1,
        }
    }

    /// Whether every part has been handed to a ring (or given up on).
    pub(super) fn all_pushed(&self) -> bool {
        self.pushed >= self.total()
    }

    /// Whether the request is finished: everything pushed, nothing in
    /// flight.
    pub(super) fn finished(&self) -> bool {
        self.all_pushed() && self.in_flight == 0
    }

    /// Records `e` as the request's outcome (the first error wins) and stops
    /// pushing its remaining parts.
    pub(super) fn fail(&mut self, e: IoError) {
        self.error.get_or_insert(e);
        self.pushed = self.total();
    }

    /// The completion of a finished request.
    pub(super) fn into_completion(self) -> Completion {
        Completion {
            token: self.token,
            result: self.error.map_or(Ok(()), Err),
            buf: self.buf,
        }
    }
}

/// The requests not yet completed: a slab indexed by [`PendingId`], which
/// each ring slot's shadow carries (so a response finds its request without
/// a search), with a free list so that steady-state I/O allocates nothing.
#[derive(Default)]
pub(super) struct PendingTable {
    slots: Vec<Option<Pending>>,
    free: Vec<PendingId>,
    len: usize,
}

impl PendingTable {
    pub(super) fn insert(&mut self, p: Pending) -> PendingId {
        self.len += 1;
        if let Some(id) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(id.0 as usize) {
                *slot = Some(p);
                return id;
            }
        }
        self.slots.push(Some(p));
        PendingId((self.slots.len() - 1) as u32)
    }

    pub(super) fn get_mut(&mut self, id: PendingId) -> Option<&mut Pending> {
        self.slots.get_mut(id.0 as usize)?.as_mut()
    }

    pub(super) fn remove(&mut self, id: PendingId) -> Option<Pending> {
        let p = self.slots.get_mut(id.0 as usize)?.take()?;
        self.len -= 1;
        self.free.push(id);
        Some(p)
    }

    /// Removes request `id` and returns its completion, without moving the
    /// whole record (the hot path of every request).
    pub(super) fn take_completion(&mut self, id: PendingId) -> Option<Completion> {
        let slot = self.slots.get_mut(id.0 as usize)?;
        let p = slot.as_mut()?;
        let c = Completion {
            token: p.token,
            result: p.error.map_or(Ok(()), Err),
            buf: p.buf.take(),
        };
        *slot = None;
        self.len -= 1;
        self.free.push(id);
        Some(c)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The ids of every entry, in token order (for a replay).
    pub(super) fn ids_sorted(&self) -> Vec<PendingId> {
        let mut ids: Vec<(RequestToken, PendingId)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (p.token, PendingId(i as u32))))
            .collect();
        ids.sort_unstable_by_key(|&(t, _)| t);
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Removes every entry, in token order.
    pub(super) fn drain_sorted(&mut self) -> Vec<Pending> {
        let mut all: Vec<Pending> = self.slots.iter_mut().filter_map(Option::take).collect();
        all.sort_unstable_by_key(|p| p.token);
        self.slots.clear();
        self.free.clear();
        self.len = 0;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(token: u64, len: usize) -> Pending {
        Pending {
            token: RequestToken(token),
            op: Op::Read {
                sector: WireSector(0),
            },
            buf: Some(alloc::vec![0; len]),
            pushed: 0,
            in_flight: 0,
            error: None,
            direct: true,
            private: false,
        }
    }

    #[test]
    fn ids_are_reused_and_drain_is_in_token_order() {
        let mut t = PendingTable::default();
        let a = t.insert(read(3, 512));
        let b = t.insert(read(1, 512));
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove(a).map(|p| p.token), Some(RequestToken(3)));
        assert!(t.remove(a).is_none(), "removed once");
        let c = t.insert(read(2, 512));
        assert_eq!(c, a, "the freed index is reused");
        let order: Vec<u64> = t.drain_sorted().iter().map(|p| p.token.0).collect();
        assert_eq!(order, [1, 2]);
        assert!(t.get_mut(b).is_none() && t.len() == 0);
    }

    #[test]
    fn a_failed_part_stops_the_rest_and_keeps_the_first_error() {
        let mut p = read(1, 8192);
        p.pushed = 4096;
        p.in_flight = 1;
        assert!(!p.all_pushed());
        p.fail(IoError::Backend);
        p.fail(IoError::Aborted);
        assert!(p.all_pushed() && !p.finished());
        p.in_flight = 0;
        assert!(p.finished());
        assert_eq!(p.into_completion().result, Err(IoError::Backend));
    }
}
