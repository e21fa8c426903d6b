//! The generic shared ring of `io/ring.h`, both ends, lock-free.
//!
//! A shared ring is `1 << order` pages of memory shared between two domains.
//! It starts with [`SringHeader`] (the four free-running `RING_IDX` indices
//! and 48 bytes of padding); slots start at offset 64. Each slot holds either
//! a request or a response (the C union `NAME_sring_entry`), so its stride is
//! the larger of the two types. The number of slots is a power of two
//! ([`ring_slots`], `__RING_SIZE`), so an index maps to its slot by masking.
//!
//! [`FrontRing`] pushes requests and takes responses, [`BackRing`] takes
//! requests and pushes responses. Each end keeps its private indices in its
//! own memory (`struct NAME_front_ring` / `NAME_back_ring`) and never reads
//! them back from the shared page. There is one producer and one consumer per
//! direction, so no locks are needed: an end may live in one thread and its
//! peer in another (both are `Send`, neither is `Sync`).
//!
//! # Memory ordering (the barriers of `ring.h`)
//!
//! - Producer: slots are written with volatile stores, then the producer index
//!   is published with a `Release` store (the `xen_wmb()` of
//!   `RING_PUSH_REQUESTS` / `RING_PUSH_RESPONSES`).
//! - Notification hold-off: between publishing the producer index and reading
//!   the peer's event index sits `fence(SeqCst)` (the `xen_mb()` of
//!   `RING_PUSH_*_AND_CHECK_NOTIFY`); the same full fence separates writing
//!   our event index from re-reading the peer's producer in
//!   `RING_FINAL_CHECK_FOR_*`. Together they exclude the lost wake-up where
//!   both ends go to sleep.
//! - Consumer: the peer's producer index is read with `Acquire` before any
//!   slot up to it is read (the `rmb()` of Linux's consumers), and each slot
//!   is copied out exactly once with a volatile load (`RING_COPY_*`).
//!   A consumer publishes its progress only by producing into the slots it
//!   has read (a response into a request's slot, a new request into a
//!   response's slot) or through its event index; both are later in program
//!   order than the slot loads and published with `Release` or behind the
//!   full fence, so a slot is never overwritten before it has been read.
//!
//! # A hostile peer
//!
//! The other domain may write anything into the shared page at any time.
//! Consumers therefore validate the peer's producer index before using it
//! (`RING_RESPONSE_PROD_OVERFLOW`, `RING_REQUEST_PROD_OVERFLOW`, made strict:
//! see [`FrontRing::poll_response`] and [`BackRing::poll_request`]); on a
//! violation the end returns [`RingError::Protocol`] and stays broken. Slot
//! contents are delivered as copied, never trusted: validating them is the
//! protocol layer's job (blkfront checks ids against its shadow table and
//! reports what it finds as a [`Violation`] too).

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

use crate::abi::sring::{SringHeader, SRING_HEADER_SIZE};
use crate::hal::PAGE_SIZE;
use crate::Result;

mod back;
mod front;
mod owned;
#[cfg(test)]
mod tests;

pub use back::BackRing;
pub use front::FrontRing;
pub use owned::{OwnedFrontRing, RingEntry, RingMemory};

/// How a shared ring operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingError {
    /// The ring has no free slot for another request (or, at a back end,
    /// every request taken has been answered already).
    Full,
    /// The other end broke the ring protocol; the ring must not be used
    /// again, and every later call returns the same violation.
    Protocol(Violation),
    /// A shared ring of this order (log2 of its page count) is not supported
    /// (above [`MAX_RING_ORDER`]), or the memory offered is too small for it.
    InvalidOrder(u32),
}

/// How the other end of a shared ring broke the protocol: the ring indices
/// themselves (seen by this module), or a response that does not match what
/// was sent (seen by the protocol layer on top, e.g. blkfront's shadow table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Violation {
    /// The response producer moved further than the number of requests in
    /// flight, or moved backwards.
    ProducerOverrun {
        /// The producer index read from the shared page.
        prod: u32,
        /// Our consumer index.
        cons: u32,
    },
    /// The request producer (seen by a back end) overran the ring.
    RequestOverrun {
        /// The producer index read from the shared page.
        prod: u32,
        /// Our consumer index.
        cons: u32,
    },
    /// A response carried an id outside the shadow table.
    BadId(u64),
    /// A response carried the id of a slot that has no request in flight.
    NotInFlight(u64),
    /// A response's operation does not match the request in that slot.
    WrongOperation {
        /// The slot id.
        id: u64,
        /// The operation we sent.
        sent: u8,
        /// The operation the response carried.
        got: u8,
    },
    /// A response carried a status outside the values `blkif.h` defines.
    UnknownStatus(i16),
    /// After answering the request with this id, the backend still maps a
    /// page it was granted for that request only (Linux's blkfront treats
    /// this as fatal since XSA-396).
    StillMapped(u64),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Full => f.write_str("the shared ring has no free slot"),
            RingError::Protocol(v) => write!(f, "the other end broke the ring protocol: {v}"),
            RingError::InvalidOrder(o) => write!(
                f,
                "a shared ring of order {o} is not supported (at most {MAX_RING_ORDER}, \
                 on enough page-aligned memory)"
            ),
        }
    }
}

impl core::error::Error for RingError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            RingError::Protocol(v) => Some(v),
            RingError::Full | RingError::InvalidOrder(_) => None,
        }
    }
}

impl From<Violation> for RingError {
    fn from(v: Violation) -> Self {
        RingError::Protocol(v)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ProducerOverrun { prod, cons } => write!(
                f,
                "response producer index {prod} is impossible (consumer at {cons})"
            ),
            Violation::RequestOverrun { prod, cons } => write!(
                f,
                "request producer index {prod} is impossible (consumer at {cons})"
            ),
            Violation::BadId(id) => write!(f, "a response carries id {id}, which was never sent"),
            Violation::NotInFlight(id) => {
                write!(
                    f,
                    "a response carries id {id}, which has no request in flight"
                )
            }
            Violation::WrongOperation { id, sent, got } => write!(
                f,
                "the response to id {id} carries operation {got}, but operation {sent} was sent"
            ),
            Violation::UnknownStatus(s) => {
                write!(
                    f,
                    "a response carries status {s}, which blkif.h does not define"
                )
            }
            Violation::StillMapped(id) => write!(
                f,
                "after answering id {id}, the backend still maps a page granted for that \
                 request only"
            ),
        }
    }
}

impl core::error::Error for Violation {}

/// The largest ring order (`log2` of the number of pages) this crate
/// supports: 16 pages, the most Linux blkback and QEMU offer
/// (`max-ring-page-order` 4).
pub const MAX_RING_ORDER: u32 = 4;

/// Number of slots of a ring of `1 << order` pages whose slots hold
/// `req_size`-byte requests and `rsp_size`-byte responses: `__RING_SIZE`, the
/// space after the 64-byte header divided by the larger size, rounded down to
/// a power of two. 32 for blkif at order 0, 512 at order 4.
///
/// Returns 0 when `order > MAX_RING_ORDER` or both sizes are 0. The sizes
/// should be those of the slot union: a type whose alignment exceeds its size
/// is not a valid ring entry anyway (`size_of` is a multiple of `align_of`).
pub const fn ring_slots(order: u32, req_size: usize, rsp_size: usize) -> usize {
    let entry = if req_size > rsp_size {
        req_size
    } else {
        rsp_size
    };
    if order > MAX_RING_ORDER {
        return 0;
    }
    crate::abi::sring::ring_slots(PAGE_SIZE << order, entry)
}

/// The shared part of a ring as both ends see it: the base of the shared
/// pages and the slot count, with the volatile slot accessors.
///
/// Invariant (established by [`Sring::new`]'s caller): `base` points to at
/// least `PAGE_SIZE << order` bytes laid out as a shared ring, valid for the
/// life of this value, and `slots` is `ring_slots` of that order, a non-zero
/// power of two, so every masked slot lies inside the pages.
struct Sring<Req, Rsp> {
    base: NonNull<u8>,
    mask: u32,
    _entries: PhantomData<(Req, Rsp)>,
}

impl<Req: Copy, Rsp: Copy> Sring<Req, Rsp> {
    /// Byte stride of one slot: `sizeof(union NAME_sring_entry)`.
    const ENTRY: usize = {
        let size = if size_of::<Req>() > size_of::<Rsp>() {
            size_of::<Req>()
        } else {
            size_of::<Rsp>()
        };
        let align = if align_of::<Req>() > align_of::<Rsp>() {
            align_of::<Req>()
        } else {
            align_of::<Rsp>()
        };
        assert!(size > 0, "ring entries must not be zero-sized");
        assert!(
            align <= SRING_HEADER_SIZE,
            "ring entries must not need more than 64-byte alignment"
        );
        let entry = size.div_ceil(align) * align;
        assert!(
            entry <= PAGE_SIZE - SRING_HEADER_SIZE,
            "a one-page ring must hold at least one entry"
        );
        entry
    };

    /// Checks `order` and computes the slot count.
    ///
    /// # Safety
    ///
    /// `base` must satisfy the contract of [`FrontRing::init`] for `order`.
    unsafe fn new(base: NonNull<u8>, order: u32) -> Result<Self, RingError> {
        if order > MAX_RING_ORDER {
            return Err(RingError::InvalidOrder(order));
        }
        debug_assert!(
            base.as_ptr().align_offset(PAGE_SIZE) == 0,
            "shared ring not page-aligned"
        );
        let slots = ring_slots(order, Self::ENTRY, Self::ENTRY);
        // `ENTRY` fits a page at least once, so there is at least one slot,
        // and at most 65472 of them: the mask fits in u32.
        debug_assert!(slots.is_power_of_two());
        Ok(Sring {
            base,
            mask: (slots - 1) as u32,
            _entries: PhantomData,
        })
    }

    /// Number of slots (`RING_SIZE`).
    #[inline(always)]
    fn size(&self) -> u32 {
        self.mask + 1
    }

    #[inline(always)]
    fn header(&self) -> *const SringHeader {
        self.base.as_ptr().cast_const().cast::<SringHeader>()
    }

    /// `sring->req_prod`.
    #[inline(always)]
    fn req_prod(&self) -> &AtomicU32 {
        // SAFETY: by the type invariant the header is valid and lives as long
        // as `self`; its fields are atomics, so shared references to them are
        // sound even while the peer writes them. Only the field is borrowed,
        // never the (non-atomic) padding.
        unsafe { &(*self.header()).req_prod }
    }

    /// `sring->req_event`.
    #[inline(always)]
    fn req_event(&self) -> &AtomicU32 {
        // SAFETY: as in `req_prod`.
        unsafe { &(*self.header()).req_event }
    }

    /// `sring->rsp_prod`.
    #[inline(always)]
    fn rsp_prod(&self) -> &AtomicU32 {
        // SAFETY: as in `req_prod`.
        unsafe { &(*self.header()).rsp_prod }
    }

    /// `sring->rsp_event`.
    #[inline(always)]
    fn rsp_event(&self) -> &AtomicU32 {
        // SAFETY: as in `req_prod`.
        unsafe { &(*self.header()).rsp_event }
    }

    /// Pointer to the slot of free-running index `idx` (`RING_GET_*`).
    #[inline(always)]
    fn slot(&self, idx: u32) -> *mut u8 {
        let off = SRING_HEADER_SIZE + (idx & self.mask) as usize * Self::ENTRY;
        // SAFETY: `idx & mask < slots` and `64 + slots * ENTRY` fits in the
        // shared pages (that is how `ring_slots` chose `slots`), so the offset
        // stays inside the allocation the type invariant describes.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// Writes a request into its slot (see [`copy_to_slot`]).
    #[inline(always)]
    fn write_req(&self, idx: u32, req: &Req) {
        // SAFETY: the slot is in bounds (see `slot`) and aligned: the base is
        // page-aligned, 64 and `ENTRY` are multiples of `align_of::<Req>()`.
        // The protocol gives the slot to this end until it publishes it.
        unsafe { copy_to_slot(self.slot(idx), req) }
    }

    /// Writes a response into its slot (see [`copy_to_slot`]).
    #[inline(always)]
    fn write_rsp(&self, idx: u32, rsp: &Rsp) {
        // SAFETY: as in `write_req`.
        unsafe { copy_to_slot(self.slot(idx), rsp) }
    }

    /// Copies a request out of its slot once (see [`copy_from_slot`]).
    #[inline(always)]
    fn read_req(&self, idx: u32) -> Req {
        // SAFETY: in bounds and aligned as in `write_req`; the constructors'
        // contract makes `Req` valid for every bit pattern the peer may leave.
        unsafe { copy_from_slot(self.slot(idx)) }
    }

    /// Copies a response out of its slot once (see [`copy_from_slot`]).
    #[inline(always)]
    fn read_rsp(&self, idx: u32) -> Rsp {
        // SAFETY: as in `read_req`, for `Rsp`.
        unsafe { copy_from_slot(self.slot(idx)) }
    }
}

/// Whether a `T` is copied to and from slots as 8-byte words: its size is a
/// multiple of 8 and its alignment at least 8 (so the slot is 8-aligned).
const fn by_words<T>() -> bool {
    size_of::<T>() % 8 == 0 && align_of::<T>() >= 8
}

/// Writes `value` into the slot at `dst` with volatile stores: one 8-byte
/// store per word when [`by_words`] allows, else one volatile store of `T`.
///
/// A volatile store of a whole struct is lowered field by field, padding
/// byte by byte (about 110 instructions for a `blkif_request`); the word
/// copy is 14 loads and 14 stores. Words are moved as `MaybeUninit<u64>`,
/// so the padding bytes of `T` (uninitialised) are copied, never read as
/// integers.
///
/// # Safety
///
/// `dst` is valid for writes of `size_of::<T>()` bytes and aligned for `T`.
#[inline(always)]
unsafe fn copy_to_slot<T: Copy>(dst: *mut u8, value: &T) {
    if by_words::<T>() {
        let src = (value as *const T).cast::<MaybeUninit<u64>>();
        let dst = dst.cast::<MaybeUninit<u64>>();
        for i in 0..size_of::<T>() / 8 {
            // SAFETY: word `i` lies inside `*value` and inside the slot,
            // both 8-aligned (`by_words`); `MaybeUninit` may hold padding.
            unsafe { dst.add(i).write_volatile(src.add(i).read()) }
        }
    } else {
        // SAFETY: the caller's contract.
        unsafe { dst.cast::<T>().write_volatile(*value) }
    }
}

/// Copies a `T` out of the slot at `src` with volatile loads, each word read
/// exactly once (`RING_COPY_*`); see [`copy_to_slot`].
///
/// # Safety
///
/// `src` is valid for reads of `size_of::<T>()` initialised bytes, aligned
/// for `T`, and every bit pattern is a valid `T`.
#[inline(always)]
unsafe fn copy_from_slot<T: Copy>(src: *const u8) -> T {
    if by_words::<T>() {
        let mut out = MaybeUninit::<T>::uninit();
        let dst = out.as_mut_ptr().cast::<MaybeUninit<u64>>();
        let src = src.cast::<MaybeUninit<u64>>();
        for i in 0..size_of::<T>() / 8 {
            // SAFETY: word `i` lies inside the slot and inside `out`, both
            // 8-aligned (`by_words`).
            unsafe { dst.add(i).write(src.add(i).read_volatile()) }
        }
        // SAFETY: every byte of `out` was written from the slot, and any bit
        // pattern is a valid `T` (the caller's contract).
        unsafe { out.assume_init() }
    } else {
        // SAFETY: the caller's contract.
        unsafe { src.cast::<T>().read_volatile() }
    }
}

/// `notify = (new - event) < (new - old)`, in `RING_IDX` arithmetic: the
/// peer asked to be woken when the producer reaches `event`, and this push
/// moved it from `old` past `event` (`old < event <= new` modulo 2^32).
#[inline(always)]
fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// Page-aligned zeroed test memory standing in for granted pages.
#[cfg(test)]
pub(crate) struct TestPages {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

#[cfg(test)]
impl TestPages {
    /// `1 << order` zeroed pages.
    pub(crate) fn new(order: u32) -> TestPages {
        let layout = std::alloc::Layout::from_size_align(PAGE_SIZE << order, PAGE_SIZE)
            .expect("test layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).expect("test allocation");
        TestPages { ptr, layout }
    }

    /// Base of the pages.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The header, for playing a (hostile) peer in tests.
    pub(crate) fn header(&self) -> &SringHeader {
        // SAFETY: the memory is live while `self` is, aligned, and the
        // header's index fields are atomics; tests never write the padding
        // while this reference lives.
        unsafe { &*self.ptr.as_ptr().cast::<SringHeader>() }
    }

    /// Writes `bytes` at byte offset `off`, as a hostile peer would.
    pub(crate) fn poke(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.layout.size());
        // SAFETY: bounds checked above; the memory is live and no reference
        // to the slot area exists (the rings only use raw pointers).
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len())
        }
    }

    /// Reads `N` bytes at byte offset `off`.
    pub(crate) fn peek<const N: usize>(&self, off: usize) -> [u8; N] {
        assert!(off + N <= self.layout.size());
        // SAFETY: bounds checked above; the memory is live and initialised
        // (zeroed at allocation, then written only with initialised values).
        unsafe {
            self.ptr
                .as_ptr()
                .add(off)
                .cast::<[u8; N]>()
                .read_unaligned()
        }
    }
}

#[cfg(test)]
impl Drop for TestPages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::abi::blkif::{BlkifRequest, BlkifResponse};

    #[test]
    fn blkif_slot_counts_match_the_c_ring_size() {
        let (q, r) = (size_of::<BlkifRequest>(), size_of::<BlkifResponse>());
        assert_eq!((q, r), (112, 16));
        let expect = [32, 64, 128, 256, 512];
        for (order, want) in expect.iter().enumerate() {
            assert_eq!(ring_slots(order as u32, q, r), *want, "order {order}");
        }
    }

    #[test]
    fn ring_slots_rounds_down_and_rejects_nonsense() {
        // (4096 - 64) / 100 = 40 -> 32; / 4032 = 1; / 4033 = 0.
        assert_eq!(ring_slots(0, 100, 8), 32);
        assert_eq!(ring_slots(0, 8, 100), 32);
        assert_eq!(ring_slots(0, 4032, 1), 1);
        assert_eq!(ring_slots(0, 4033, 1), 0);
        assert_eq!(ring_slots(0, 0, 0), 0);
        assert_eq!(ring_slots(MAX_RING_ORDER + 1, 16, 16), 0);
        // 16-byte entries: 252 fit, rounded down to 128.
        assert_eq!(ring_slots(0, 16, 16), 128);
        for order in 0..=MAX_RING_ORDER {
            assert!(ring_slots(order, 24, 40).is_power_of_two());
        }
    }

    #[test]
    fn entry_stride_is_the_union_size() {
        assert_eq!(Sring::<BlkifRequest, BlkifResponse>::ENTRY, 112);
        // A 12-byte, 4-aligned request with an 8-aligned 8-byte response
        // makes a 16-byte union.
        assert_eq!(Sring::<[u32; 3], u64>::ENTRY, 16);
        assert_eq!(Sring::<u8, u8>::ENTRY, 1);
    }

    #[test]
    fn slots_copy_padded_structs_exactly() {
        use crate::abi::blkif::BlkifRequestSegment;
        assert!(by_words::<BlkifRequest>() && by_words::<BlkifResponse>());
        assert!(!by_words::<[u32; 3]>() && !by_words::<u8>());
        let pages = TestPages::new(0);
        // SAFETY: one zeroed page that outlives `sring`; nothing else uses it.
        let sring =
            unsafe { Sring::<BlkifRequest, BlkifResponse>::new(pages.ptr(), 0) }.expect("order 0");
        let mut req = BlkifRequest {
            operation: 1,
            nr_segments: 11,
            handle: 0xca00,
            id: u64::MAX - 3,
            sector_number: 1 << 40,
            ..BlkifRequest::default()
        };
        req.seg[10] = BlkifRequestSegment {
            gref: 0xdead_beef,
            first_sect: 1,
            last_sect: 7,
        };
        // Index 33 is slot 1 of 32: the copy lands at 64 + 112.
        sring.write_req(33, &req);
        assert_eq!(sring.read_req(33), req);
        assert_eq!(pages.peek::<8>(64 + 112 + 8), (u64::MAX - 3).to_ne_bytes());
        assert_eq!(
            pages.peek::<4>(64 + 112 + 24 + 80),
            0xdead_beef_u32.to_ne_bytes()
        );
        let rsp = BlkifResponse {
            id: 9,
            operation: 1,
            status: -1,
        };
        sring.write_rsp(33, &rsp);
        assert_eq!(sring.read_rsp(33), rsp);
        assert_eq!(pages.peek::<8>(64 + 112), 9u64.to_ne_bytes());
    }

    #[test]
    fn slots_of_types_that_are_not_words_are_copied_whole() {
        let pages = TestPages::new(0);
        // SAFETY: as above.
        let sring = unsafe { Sring::<[u32; 3], u8>::new(pages.ptr(), 0) }.expect("order 0");
        sring.write_req(5, &[1, 2, 3]);
        assert_eq!(sring.read_req(5), [1, 2, 3]);
        assert_eq!(pages.peek::<4>(64 + 5 * 12 + 8), 3u32.to_ne_bytes());
        sring.write_rsp(6, &0xab);
        assert_eq!(sring.read_rsp(6), 0xab);
    }

    #[test]
    fn need_notify_is_the_ring_h_formula() {
        assert!(need_notify(0, 1, 1));
        assert!(!need_notify(0, 0, 1));
        assert!(!need_notify(1, 2, 1));
        assert!(need_notify(u32::MAX, 0, 0));
        assert!(need_notify(u32::MAX - 1, 1, u32::MAX));
        assert!(!need_notify(u32::MAX - 1, 1, 2));
    }
}
