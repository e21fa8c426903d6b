//! Grant references: an allocator over this domain's version-1 grant table,
//! granting and revoking foreign access the way `grant_table.h` prescribes,
//! the owned memory that is shared through it ([`SharedPage`],
//! [`SharedPages`]), and a quarantine for pages whose grant could not be
//! revoked.
//!
//! The [`GrantTable`] owns every entry from [`GNTTAB_RESERVED`] to the end of
//! [`Hal::grant_table`] (the reserved ones belong to the toolstack). A
//! reference goes through three states:
//!
//! ```text
//!  free --alloc--> allocated --grant--> granted
//!   ^                 |  ^                 |
//!   +------free-------+  +---end_access----+   (fails while mapped)
//! ```
//!
//! Revoking can fail: the other domain may still map the page
//! (`GTF_reading` / `GTF_writing` set by the hypervisor). The entry then
//! stays granted and the page must not be reused —
//! [`GrantError::InUse`] says so. Shared memory is owned by a value
//! ([`SharedPage`], [`SharedPages`], in the shape of virtio-drivers' `Dma`):
//! dropping it ends its grants and frees its pages, or, when a grant is
//! still mapped, moves pages and grants into the table's quarantine, which
//! never hands them out again and frees them once
//! [`retry_quarantine`](GrantTable::retry_quarantine) can end every grant.
//! No code outside this module frees shared memory by hand.
//!
//! All methods take `&self` (a `spin::Mutex` inside), so several queues can
//! share one table.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;

use spin::Mutex;

use crate::abi::grant;
use crate::hal::{DomId, Gfn, GrantEntry, GrantRef, Hal, HalError, Pages, GNTTAB_RESERVED};
use crate::Result;

mod quarantine;
mod shared;

use quarantine::Quarantine;
pub use shared::{SharedPage, SharedPages};

use grant::GrantFlags;

/// How often `end_access` retries its compare-exchange when the hypervisor
/// changes the flags under it, before treating the grant as in use. A
/// backend that maps and unmaps without pause cannot keep us spinning.
const END_ACCESS_TRIES: usize = 64;

/// How a grant-table operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantError {
    /// No free grant reference is left in the table.
    Exhausted,
    /// A grant reference outside the table, or one that is not in the state
    /// the operation needs (not allocated, already granted, not granted), was
    /// passed in.
    InvalidRef(u32),
    /// Revoking this grant reference failed because the other domain still
    /// maps the page. The grant stays, and the page must not be reused: it
    /// is quarantined when its owner drops it.
    InUse(u32),
    /// A frame number that does not fit the 32-bit frame of a version-1
    /// grant entry.
    FrameTooLarge(u64),
    /// A copy into or out of shared memory reaches outside it.
    OutOfBounds,
    /// Allocating shared pages (or the table's bookkeeping) failed.
    Hal(HalError),
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::Exhausted => f.write_str("no free grant reference is left"),
            GrantError::InvalidRef(r) => {
                write!(f, "grant reference {r} is not valid for this operation")
            }
            GrantError::InUse(r) => write!(
                f,
                "grant reference {r} is still mapped by the other domain; its page is \
                 quarantined"
            ),
            GrantError::FrameTooLarge(gfn) => write!(
                f,
                "frame {gfn:#x} does not fit the 32-bit frame of a grant entry"
            ),
            GrantError::OutOfBounds => f.write_str("a copy reaches outside the shared memory"),
            GrantError::Hal(e) => write!(f, "cannot allocate shared memory: {e}"),
        }
    }
}

impl core::error::Error for GrantError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            GrantError::Hal(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HalError> for GrantError {
    fn from(e: HalError) -> Self {
        GrantError::Hal(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    Allocated,
    Granted,
}

struct Refs {
    /// Free references, used as a LIFO stack.
    free: Vec<u32>,
    /// State of reference `GNTTAB_RESERVED + i`.
    slots: Vec<Slot>,
}

/// Allocator and access manager for the grant references of one domain.
pub struct GrantTable<'h, H: Hal> {
    hal: &'h H,
    refs: Mutex<Refs>,
    quarantine: Quarantine,
}

impl<H: Hal> fmt::Debug for GrantTable<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantTable")
            .field("capacity", &self.capacity())
            .field("in_use", &self.in_use())
            .field("quarantined_pages", &self.quarantined_pages())
            .finish()
    }
}

impl<'h, H: Hal> GrantTable<'h, H> {
    /// Takes charge of every non-reserved entry of `hal`'s grant table. The
    /// entries must not be in use by anyone else (one `GrantTable` per
    /// domain).
    ///
    /// # Errors
    ///
    /// [`GrantError::Hal`]`(`[`HalError::OutOfMemory`]`)` when the bookkeeping
    /// cannot be allocated.
    pub fn new(hal: &'h H) -> Result<Self, GrantError> {
        let len = hal.grant_table().len();
        let capacity = len.saturating_sub(GNTTAB_RESERVED);
        let mut free = Vec::new();
        let mut slots = Vec::new();
        free.try_reserve_exact(capacity)
            .map_err(|_| GrantError::Hal(HalError::OutOfMemory))?;
        slots
            .try_reserve_exact(capacity)
            .map_err(|_| GrantError::Hal(HalError::OutOfMemory))?;
        // Pushed in reverse so that the first `alloc` returns the lowest
        // reference: deterministic and easy to read in traces.
        let top = u32::try_from(len).unwrap_or(u32::MAX);
        free.extend((GNTTAB_RESERVED as u32..top).rev());
        slots.resize(free.len(), Slot::Free);
        Ok(GrantTable {
            hal,
            refs: Mutex::new(Refs { free, slots }),
            quarantine: Quarantine::new(),
        })
    }

    /// The `Hal` this table belongs to.
    pub fn hal(&self) -> &'h H {
        self.hal
    }

    /// How many references this allocator manages.
    pub fn capacity(&self) -> usize {
        self.refs.lock().slots.len()
    }

    /// How many references are allocated (granted or not).
    pub fn in_use(&self) -> usize {
        let r = self.refs.lock();
        r.slots.len() - r.free.len()
    }

    fn index(refs: &Refs, gref: GrantRef) -> Result<usize, GrantError> {
        usize::try_from(gref.0)
            .ok()
            .and_then(|g| g.checked_sub(GNTTAB_RESERVED))
            .filter(|&i| i < refs.slots.len())
            .ok_or(GrantError::InvalidRef(gref.0))
    }

    fn entry(&self, gref: GrantRef) -> Result<&'h GrantEntry, GrantError> {
        usize::try_from(gref.0)
            .ok()
            .and_then(|g| self.hal.grant_table().get(g))
            .ok_or(GrantError::InvalidRef(gref.0))
    }

    /// Allocates one reference (not yet granted).
    ///
    /// # Errors
    ///
    /// [`GrantError::Exhausted`] when none is free.
    pub fn alloc(&self) -> Result<GrantRef, GrantError> {
        let mut r = self.refs.lock();
        let g = r.free.pop().ok_or(GrantError::Exhausted)?;
        r.slots[g as usize - GNTTAB_RESERVED] = Slot::Allocated;
        Ok(GrantRef(g))
    }

    /// Allocates `n` references into `out`, or none at all.
    ///
    /// # Errors
    ///
    /// [`GrantError::Exhausted`] when fewer than `n` are free; `out` is
    /// then untouched.
    pub fn alloc_batch(&self, n: usize, out: &mut impl Extend<GrantRef>) -> Result<(), GrantError> {
        let mut r = self.refs.lock();
        let start = r.free.len().checked_sub(n).ok_or(GrantError::Exhausted)?;
        let Refs { free, slots } = &mut *r;
        for &g in &free[start..] {
            slots[g as usize - GNTTAB_RESERVED] = Slot::Allocated;
        }
        out.extend(free.drain(start..).rev().map(GrantRef));
        Ok(())
    }

    /// Grants `domid` access to frame `gfn` through the allocated reference
    /// `gref` ("Introducing a valid entry into the grant table": `domid` and
    /// `frame` first, then `flags` with a release store, which orders them).
    ///
    /// # Errors
    ///
    /// [`GrantError::InvalidRef`] when `gref` is out of range, free, or
    /// already granted; [`GrantError::FrameTooLarge`] when `gfn` does not fit
    /// the 32-bit frame of a v1 entry.
    pub fn grant(
        &self,
        gref: GrantRef,
        domid: DomId,
        gfn: Gfn,
        readonly: bool,
    ) -> Result<(), GrantError> {
        let frame = u32::try_from(gfn.0).map_err(|_| GrantError::FrameTooLarge(gfn.0))?;
        let mut r = self.refs.lock();
        let i = Self::index(&r, gref)?;
        if r.slots[i] != Slot::Allocated {
            return Err(GrantError::InvalidRef(gref.0));
        }
        let e = self.entry(gref)?;
        e.domid.store(domid.0, Ordering::Relaxed);
        e.frame.store(frame, Ordering::Relaxed);
        let mut flags = GrantFlags::PERMIT_ACCESS;
        flags.set(GrantFlags::READONLY, readonly);
        e.flags.store(flags.bits(), Ordering::Release);
        r.slots[i] = Slot::Granted;
        Ok(())
    }

    /// Allocates a reference and grants `domid` access to `gfn` through it.
    ///
    /// # Errors
    ///
    /// As [`alloc`](Self::alloc) and [`grant`](Self::grant); nothing stays
    /// allocated on error.
    pub fn grant_access(
        &self,
        domid: DomId,
        gfn: Gfn,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        let gref = self.alloc()?;
        if let Err(e) = self.grant(gref, domid, gfn, readonly) {
            // Allocated and never granted: freeing cannot fail.
            let _ = self.free(gref);
            return Err(e);
        }
        Ok(gref)
    }

    /// Revokes the grant of `gref` ("Invalidating an unused GTF_permit_access
    /// entry": read the flags, check that neither `GTF_reading` nor
    /// `GTF_writing` is set, compare-exchange them to 0). The reference stays
    /// allocated.
    ///
    /// # Errors
    ///
    /// [`GrantError::InUse`] when the other domain still maps the page: the
    /// entry stays granted, and the page must not be reused or freed (hand it
    /// to the quarantine). [`GrantError::InvalidRef`] when `gref` is not
    /// granted through this table.
    pub fn end_access(&self, gref: GrantRef) -> Result<(), GrantError> {
        let mut r = self.refs.lock();
        let i = Self::index(&r, gref)?;
        if r.slots[i] != Slot::Granted {
            return Err(GrantError::InvalidRef(gref.0));
        }
        let e = self.entry(gref)?;
        let mut flags = e.flags.load(Ordering::Acquire);
        for _ in 0..END_ACCESS_TRIES {
            if GrantFlags::from_bits_retain(flags).in_use() {
                break;
            }
            match e
                .flags
                .compare_exchange(flags, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    r.slots[i] = Slot::Allocated;
                    return Ok(());
                }
                Err(now) => flags = now,
            }
        }
        Err(GrantError::InUse(gref.0))
    }

    /// Returns an allocated, not granted reference to the free list.
    ///
    /// # Errors
    ///
    /// [`GrantError::InvalidRef`] for a reference out of range, not allocated,
    /// or still granted.
    pub fn free(&self, gref: GrantRef) -> Result<(), GrantError> {
        let mut r = self.refs.lock();
        let i = Self::index(&r, gref)?;
        if r.slots[i] != Slot::Allocated {
            return Err(GrantError::InvalidRef(gref.0));
        }
        r.slots[i] = Slot::Free;
        r.free.push(gref.0);
        Ok(())
    }

    /// [`end_access`](Self::end_access), then [`free`](Self::free).
    ///
    /// # Errors
    ///
    /// As `end_access`; on [`GrantError::InUse`] the reference stays granted.
    pub fn end_access_and_free(&self, gref: GrantRef) -> Result<(), GrantError> {
        self.end_access(gref)?;
        self.free(gref)
    }

    /// Ends every grant in `grefs` and returns the references to the free
    /// list, then frees `pages`. When the other domain still maps one of
    /// them, the pages and the references still granted go into the table's
    /// quarantine instead, where they stay, never reused, until
    /// [`retry_quarantine`](Self::retry_quarantine) can end them. Returns
    /// whether the pages were freed now.
    ///
    /// `grefs` may hold references that are granted or only allocated (a
    /// grant revoked earlier whose reference was kept back).
    ///
    /// # Safety
    ///
    /// `pages` came from this table's `Hal`, nothing uses a pointer into it
    /// afterwards, and `grefs` lists every reference of this table that
    /// grants any of its pages.
    pub(crate) unsafe fn release_pages(
        &self,
        grefs: &[GrantRef],
        pages: Pages,
        owner: u32,
    ) -> bool {
        let mut in_use = Vec::new();
        for &g in grefs {
            match self.retire(g) {
                Ok(()) => {}
                Err(GrantError::InUse(_)) => in_use.push(g),
                Err(e) => log::warn!("gnttab: releasing {g:?}: {e}"),
            }
        }
        if in_use.is_empty() {
            // SAFETY: the caller promises the pages are ours and unused;
            // every grant of them was just ended.
            unsafe { self.hal.free_pages(pages) };
            true
        } else {
            log::warn!(
                "gnttab: {} grant(s) still mapped by the other domain: {} page(s) quarantined",
                in_use.len(),
                pages.count()
            );
            self.quarantine.push(in_use, pages, owner);
            false
        }
    }

    /// Ends `gref`'s grant if it has one, then frees it.
    ///
    /// # Errors
    ///
    /// [`GrantError::InUse`] (the reference stays granted);
    /// [`GrantError::InvalidRef`] for a reference that is not allocated.
    fn retire(&self, gref: GrantRef) -> Result<(), GrantError> {
        match self.end_access(gref) {
            Ok(()) => {}
            // Allocated but not granted: nothing to end.
            Err(GrantError::InvalidRef(_)) if self.is_allocated(gref) => {}
            Err(e) => return Err(e),
        }
        self.free(gref)
    }

    fn is_allocated(&self, gref: GrantRef) -> bool {
        let r = self.refs.lock();
        Self::index(&r, gref).is_ok_and(|i| r.slots[i] == Slot::Allocated)
    }

    /// Tries again to end the quarantined grants; frees the references that
    /// end, and the pages whose grants all ended. Returns how many page runs
    /// were freed.
    pub fn retry_quarantine(&self) -> usize {
        self.quarantine.retry(self)
    }

    /// Pages held in quarantine because the other domain kept a grant of
    /// them mapped (never reused while that holds).
    pub fn quarantined_pages(&self) -> usize {
        self.quarantine.pages(None)
    }

    /// Of those, the pages released by `owner` (the tag given to
    /// [`SharedPage::alloc`] / [`SharedPages::alloc_granted`]).
    pub fn quarantined_pages_of(&self, owner: u32) -> usize {
        self.quarantine.pages(Some(owner))
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, SimHal, SimXen};

    const FRONT: DomId = DomId(1);
    const BACK: DomId = DomId::DOM0;

    fn setup() -> (SimXen, SimHal) {
        // One grant frame (504 usable references) keeps the Miri run short.
        let config = SimConfig {
            grant_frames: 1,
            ..SimConfig::default()
        };
        let xen = SimXen::with_config(config, false);
        let hal = xen.hal(FRONT);
        (xen, hal)
    }

    #[test]
    fn allocates_after_the_reserved_entries_and_reuses_lifo() {
        let (_xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        assert_eq!(gt.capacity(), hal.grant_table().len() - GNTTAB_RESERVED);
        let a = gt.alloc().unwrap();
        let b = gt.alloc().unwrap();
        assert_eq!(a, GrantRef(GNTTAB_RESERVED as u32));
        assert_eq!(b, GrantRef(GNTTAB_RESERVED as u32 + 1));
        assert_eq!(gt.in_use(), 2);
        gt.free(a).unwrap();
        assert_eq!(gt.alloc().unwrap(), a, "last freed is first reused");
        gt.free(a).unwrap();
        gt.free(b).unwrap();
        assert_eq!(gt.in_use(), 0);
    }

    #[test]
    fn exhaustion_and_all_or_nothing_batches() {
        let (_xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let mut got = Vec::new();
        gt.alloc_batch(gt.capacity() - 3, &mut got).unwrap();
        assert_eq!(got.len(), gt.capacity() - 3);

        let mut more = Vec::new();
        assert_eq!(gt.alloc_batch(4, &mut more), Err(GrantError::Exhausted));
        assert!(more.is_empty(), "a failed batch allocates nothing");
        gt.alloc_batch(3, &mut more).unwrap();
        assert_eq!(gt.alloc(), Err(GrantError::Exhausted));
        assert_eq!(gt.in_use(), gt.capacity());

        got.extend(more);
        got.sort();
        got.dedup();
        assert_eq!(got.len(), gt.capacity(), "every reference handed out once");
        for g in got {
            gt.free(g).unwrap();
        }
        assert_eq!(gt.in_use(), 0);
    }

    #[test]
    fn grant_writes_the_v1_entry_and_end_access_clears_it() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let pages = hal.alloc_pages(1).unwrap();
        let g = gt.grant_access(BACK, pages.gfn(), true).unwrap();
        let e = &hal.grant_table()[g.0 as usize];
        assert_eq!(
            e.flags.load(Ordering::Relaxed),
            (GrantFlags::PERMIT_ACCESS | GrantFlags::READONLY).bits()
        );
        assert_eq!(e.domid.load(Ordering::Relaxed), BACK.0);
        assert_eq!(u64::from(e.frame.load(Ordering::Relaxed)), pages.gfn().0);
        assert_eq!(xen.accounting(FRONT).grants_active, 1);

        gt.end_access_and_free(g).unwrap();
        assert_eq!(e.flags.load(Ordering::Relaxed), 0);
        assert_eq!(xen.accounting(FRONT).grants_active, 0);
        // SAFETY: no grant left, no pointer into the pages is used again.
        unsafe { hal.free_pages(pages) };
        assert_eq!(xen.accounting(FRONT).pages, 0);
    }

    #[test]
    fn state_misuse_is_refused() {
        let (_xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let gfn = Gfn(0x1234);
        let free = GrantRef(GNTTAB_RESERVED as u32);
        let reserved = GrantRef(1);
        let past = GrantRef(hal.grant_table().len() as u32);
        for g in [free, reserved, past] {
            assert_eq!(gt.free(g), Err(GrantError::InvalidRef(g.0)));
            assert_eq!(
                gt.grant(g, BACK, gfn, false),
                Err(GrantError::InvalidRef(g.0))
            );
            assert_eq!(gt.end_access(g), Err(GrantError::InvalidRef(g.0)));
        }
        let g = gt.grant_access(BACK, gfn, false).unwrap();
        assert_eq!(
            gt.free(g),
            Err(GrantError::InvalidRef(g.0)),
            "still granted"
        );
        assert_eq!(
            gt.grant(g, BACK, gfn, false),
            Err(GrantError::InvalidRef(g.0))
        );
        assert_eq!(
            gt.grant_access(BACK, Gfn(1 << 40), false),
            Err(GrantError::FrameTooLarge(1 << 40))
        );
        assert_eq!(
            gt.in_use(),
            1,
            "the failed grant_access freed its reference"
        );
        gt.end_access_and_free(g).unwrap();
        assert_eq!(gt.end_access(g), Err(GrantError::InvalidRef(g.0)));
    }

    #[test]
    fn revoking_a_mapped_grant_fails_until_unmapped() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let pages = hal.alloc_pages(1).unwrap();
        let g = gt.grant_access(BACK, pages.gfn(), false).unwrap();
        let map = xen.map_grant(BACK, FRONT, g, false).unwrap();

        assert_eq!(gt.end_access(g), Err(GrantError::InUse(g.0)));
        assert_eq!(gt.end_access_and_free(g), Err(GrantError::InUse(g.0)));
        // Still granted and still usable by the backend.
        map.write(0, b"still mine").unwrap();
        assert_eq!(xen.accounting(FRONT).grants_active, 1);

        drop(map);
        gt.end_access_and_free(g).unwrap();
        assert_eq!(gt.in_use(), 0);
        // SAFETY: grant ended, no pointer used afterwards.
        unsafe { hal.free_pages(pages) };
        assert_eq!(xen.accounting(FRONT), Default::default());
    }

    #[test]
    fn a_run_still_mapped_is_quarantined_until_the_backend_unmaps() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let run = SharedPages::alloc_granted(&gt, 2, BACK, false, 7).unwrap();
        let g1 = run.grefs()[1];
        let map = xen.map_grant(BACK, FRONT, g1, false).unwrap();
        drop(run);
        assert_eq!(gt.quarantined_pages(), 2);
        assert_eq!(gt.in_use(), 1, "g0 ended and was freed, g1 is held");
        assert_eq!(gt.retry_quarantine(), 0);
        assert_eq!(xen.accounting(FRONT).pages, 2);
        map.write(0, b"the backend may still write").unwrap();

        map.unmap();
        assert_eq!(gt.retry_quarantine(), 1);
        assert_eq!(gt.quarantined_pages(), 0);
        assert_eq!(gt.in_use(), 0);
        let acct = xen.accounting(FRONT);
        assert_eq!((acct.pages, acct.grants_active, acct.bad_frees), (0, 0, 0));
    }

    #[test]
    fn a_revoked_run_keeps_its_references_until_dropped() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let mut run = SharedPages::alloc_granted(&gt, 4, BACK, false, 7).unwrap();
        assert_eq!(xen.accounting(FRONT).grants_active, 4);
        run.revoke().unwrap();
        run.revoke().unwrap();
        assert_eq!(xen.accounting(FRONT).grants_active, 0);
        assert_eq!(gt.in_use(), 4, "references stay reserved");
        let g = run.grefs()[0];
        assert!(xen.map_grant(BACK, FRONT, g, true).is_err(), "revoked");
        drop(run);
        assert_eq!(gt.in_use(), 0);
        assert_eq!(xen.accounting(FRONT), Default::default());
    }

    #[test]
    fn kept_references_are_never_handed_out_again() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let mut run = SharedPages::alloc_granted(&gt, 2, BACK, false, 7).unwrap();
        let kept: Vec<GrantRef> = run.grefs().to_vec();
        run.keep_references();
        drop(run);
        let acct = xen.accounting(FRONT);
        assert_eq!((acct.pages, acct.grants_active), (0, 0), "ended and freed");
        assert_eq!(gt.in_use(), 2, "but the references stay allocated");
        let mut next = Vec::new();
        gt.alloc_batch(gt.capacity() - 2, &mut next).unwrap();
        assert!(next.iter().all(|g| !kept.contains(g)), "never reused");
        assert_eq!(gt.alloc(), Err(GrantError::Exhausted));
    }

    #[test]
    fn a_shared_page_frees_itself_and_checks_bounds() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let mut p = SharedPage::alloc(&gt, 7).unwrap();
        assert_eq!(p.gref(), None);
        p.write(4090, b"abcdef").unwrap();
        assert_eq!(p.write(4091, b"abcdef"), Err(GrantError::OutOfBounds));
        assert_eq!(p.write(usize::MAX, b"a"), Err(GrantError::OutOfBounds));
        let mut out = [0u8; 6];
        p.read(4090, &mut out).unwrap();
        assert_eq!(&out, b"abcdef");
        assert_eq!(p.read(4091, &mut out), Err(GrantError::OutOfBounds));
        let g = p.grant(BACK, true).unwrap();
        assert_eq!(p.grant(BACK, true), Err(GrantError::InvalidRef(g.0)));
        let map = xen.map_grant(BACK, FRONT, g, true).unwrap();
        let mut seen = [0u8; 6];
        map.read(4090, &mut seen).unwrap();
        assert_eq!(&seen, b"abcdef");
        assert_eq!(p.revoke(), Err(GrantError::InUse(g.0)));
        assert_eq!(p.gref(), Some(g), "still granted");
        drop(map);
        p.revoke().unwrap();
        assert_eq!(p.gref(), None);
        assert!(p.release(), "freed at once");
        assert_eq!(xen.accounting(FRONT), Default::default());

        let mut p = SharedPage::alloc(&gt, 7).unwrap();
        let g = p.grant(BACK, false).unwrap();
        let map = xen.map_grant(BACK, FRONT, g, false).unwrap();
        assert!(!p.release(), "still mapped: quarantined");
        assert_eq!(gt.quarantined_pages(), 1);
        assert_eq!(
            (gt.quarantined_pages_of(7), gt.quarantined_pages_of(8)),
            (1, 0)
        );
        drop(map);
        assert_eq!(gt.retry_quarantine(), 1);
        assert_eq!(xen.accounting(FRONT), Default::default());
    }

    #[test]
    fn two_threads_share_one_table() {
        let (_xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let gt = &gt;
                s.spawn(move || {
                    for i in 0..20 {
                        let g = gt
                            .grant_access(BACK, Gfn(0x100 + t * 100 + i), false)
                            .unwrap();
                        gt.end_access_and_free(g).unwrap();
                    }
                });
            }
        });
        assert_eq!(gt.in_use(), 0);
    }
}
