//! Grant references: an allocator over this domain's version-1 grant table,
//! granting and revoking foreign access the way `grant_table.h` prescribes,
//! and a [`Quarantine`] for pages whose grant could not be revoked.
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
//! [`Error::GrantInUse`] says so, and [`Quarantine`] keeps such pages until a
//! later [`retry`](Quarantine::retry) succeeds.
//!
//! All methods take `&self` (a `spin::Mutex` inside), so several queues can
//! share one table.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;

use spin::Mutex;

use crate::abi::grant;
use crate::hal::{DomId, Gfn, GrantEntry, GrantRef, Hal, Pages, GNTTAB_RESERVED};
use crate::{Error, Result};

// grant_table.h, "Type of grant entry" and "Subflags for GTF_permit_access".
const GTF_PERMIT_ACCESS: u16 = grant::GTF_permit_access;
const GTF_READONLY: u16 = grant::GTF_readonly;
const GTF_READING: u16 = grant::GTF_reading;
const GTF_WRITING: u16 = grant::GTF_writing;

/// Xen's `EINVAL`, returned for a frame that a v1 entry cannot hold.
const EINVAL: i32 = 22;

/// How often `end_access` retries its compare-exchange when the hypervisor
/// changes the flags under it, before treating the grant as in use. A
/// backend that maps and unmaps without pause cannot keep us spinning.
const END_ACCESS_TRIES: usize = 64;

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
}

impl<H: Hal> fmt::Debug for GrantTable<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantTable")
            .field("capacity", &self.capacity())
            .field("in_use", &self.in_use())
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
    /// [`Error::OutOfMemory`] when the bookkeeping cannot be allocated.
    pub fn new(hal: &'h H) -> Result<Self> {
        let len = hal.grant_table().len();
        let capacity = len.saturating_sub(GNTTAB_RESERVED);
        let mut free = Vec::new();
        let mut slots = Vec::new();
        free.try_reserve_exact(capacity)
            .map_err(|_| Error::OutOfMemory)?;
        slots
            .try_reserve_exact(capacity)
            .map_err(|_| Error::OutOfMemory)?;
        // Pushed in reverse so that the first `alloc` returns the lowest
        // reference: deterministic and easy to read in traces.
        let top = u32::try_from(len).unwrap_or(u32::MAX);
        free.extend((GNTTAB_RESERVED as u32..top).rev());
        slots.resize(free.len(), Slot::Free);
        Ok(GrantTable {
            hal,
            refs: Mutex::new(Refs { free, slots }),
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

    fn index(refs: &Refs, gref: GrantRef) -> Result<usize> {
        usize::try_from(gref.0)
            .ok()
            .and_then(|g| g.checked_sub(GNTTAB_RESERVED))
            .filter(|&i| i < refs.slots.len())
            .ok_or(Error::InvalidGrantRef(gref.0))
    }

    fn entry(&self, gref: GrantRef) -> Result<&'h GrantEntry> {
        usize::try_from(gref.0)
            .ok()
            .and_then(|g| self.hal.grant_table().get(g))
            .ok_or(Error::InvalidGrantRef(gref.0))
    }

    /// Allocates one reference (not yet granted).
    ///
    /// # Errors
    ///
    /// [`Error::GrantRefsExhausted`] when none is free.
    pub fn alloc(&self) -> Result<GrantRef> {
        let mut r = self.refs.lock();
        let g = r.free.pop().ok_or(Error::GrantRefsExhausted)?;
        r.slots[g as usize - GNTTAB_RESERVED] = Slot::Allocated;
        Ok(GrantRef(g))
    }

    /// Allocates `n` references into `out`, or none at all.
    ///
    /// # Errors
    ///
    /// [`Error::GrantRefsExhausted`] when fewer than `n` are free; `out` is
    /// then untouched.
    pub fn alloc_batch(&self, n: usize, out: &mut impl Extend<GrantRef>) -> Result<()> {
        let mut r = self.refs.lock();
        let start = r
            .free
            .len()
            .checked_sub(n)
            .ok_or(Error::GrantRefsExhausted)?;
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
    /// [`Error::InvalidGrantRef`] when `gref` is out of range, free, or
    /// already granted; `Error::Hypercall(-EINVAL)` when `gfn` does not fit
    /// the 32-bit frame of a v1 entry.
    pub fn grant(&self, gref: GrantRef, domid: DomId, gfn: Gfn, readonly: bool) -> Result<()> {
        let frame = u32::try_from(gfn.0).map_err(|_| Error::Hypercall(-EINVAL))?;
        let mut r = self.refs.lock();
        let i = Self::index(&r, gref)?;
        if r.slots[i] != Slot::Allocated {
            return Err(Error::InvalidGrantRef(gref.0));
        }
        let e = self.entry(gref)?;
        e.domid.store(domid.0, Ordering::Relaxed);
        e.frame.store(frame, Ordering::Relaxed);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        e.flags.store(flags, Ordering::Release);
        r.slots[i] = Slot::Granted;
        Ok(())
    }

    /// Allocates a reference and grants `domid` access to `gfn` through it.
    ///
    /// # Errors
    ///
    /// As [`alloc`](Self::alloc) and [`grant`](Self::grant); nothing stays
    /// allocated on error.
    pub fn grant_access(&self, domid: DomId, gfn: Gfn, readonly: bool) -> Result<GrantRef> {
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
    /// [`Error::GrantInUse`] when the other domain still maps the page: the
    /// entry stays granted, and the page must not be reused or freed (hand it
    /// to a [`Quarantine`]). [`Error::InvalidGrantRef`] when `gref` is not
    /// granted through this table.
    pub fn end_access(&self, gref: GrantRef) -> Result<()> {
        let mut r = self.refs.lock();
        let i = Self::index(&r, gref)?;
        if r.slots[i] != Slot::Granted {
            return Err(Error::InvalidGrantRef(gref.0));
        }
        let e = self.entry(gref)?;
        let mut flags = e.flags.load(Ordering::Acquire);
        for _ in 0..END_ACCESS_TRIES {
            if flags & (GTF_READING | GTF_WRITING) != 0 {
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
        Err(Error::GrantInUse(gref.0))
    }

    /// Returns an allocated, not granted reference to the free list.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidGrantRef`] for a reference out of range, not allocated,
    /// or still granted.
    pub fn free(&self, gref: GrantRef) -> Result<()> {
        let mut r = self.refs.lock();
        let i = Self::index(&r, gref)?;
        if r.slots[i] != Slot::Allocated {
            return Err(Error::InvalidGrantRef(gref.0));
        }
        r.slots[i] = Slot::Free;
        r.free.push(gref.0);
        Ok(())
    }

    /// [`end_access`](Self::end_access), then [`free`](Self::free).
    ///
    /// # Errors
    ///
    /// As `end_access`; on `GrantInUse` the reference stays granted.
    pub fn end_access_and_free(&self, gref: GrantRef) -> Result<()> {
        self.end_access(gref)?;
        self.free(gref)
    }

    /// Ends and frees every reference in `grefs`, then frees `pages` — or,
    /// when some grant is still mapped, moves `pages` and the references that
    /// could not be ended into `quarantine`. Returns whether the pages were
    /// freed now.
    ///
    /// # Safety
    ///
    /// As [`Quarantine::push_many`]: `pages` came from this table's `Hal`,
    /// nothing uses pointers into it afterwards, and `grefs` lists every
    /// grant of it that is still active.
    pub unsafe fn release(
        &self,
        grefs: &[GrantRef],
        pages: Pages,
        quarantine: &Quarantine,
    ) -> bool {
        let mut in_use = Vec::new();
        for &g in grefs {
            match self.end_access_and_free(g) {
                Ok(()) => {}
                Err(Error::GrantInUse(_)) => in_use.push(g),
                Err(e) => log::warn!("gnttab: releasing {g:?}: {e}"),
            }
        }
        if in_use.is_empty() {
            // SAFETY: the caller promises the pages are ours and unused; every
            // active grant of them was just ended.
            unsafe { self.hal.free_pages(pages) };
            true
        } else {
            // SAFETY: forwarded from the caller; `in_use` holds the grants
            // still active.
            unsafe { quarantine.push_many(in_use, pages) };
            false
        }
    }
}

struct Held {
    grefs: Vec<GrantRef>,
    pages: Pages,
}

/// Pages whose grants could not be revoked because the other domain still
/// maps them. The quarantine owns them, never hands them out again, and
/// frees them once [`retry`](Quarantine::retry) manages to end every grant.
/// Pages still held when the quarantine is dropped are leaked (never freed),
/// which is safe.
#[derive(Default)]
pub struct Quarantine {
    held: Mutex<Vec<Held>>,
}

impl fmt::Debug for Quarantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quarantine")
            .field("len", &self.len())
            .finish()
    }
}

impl Quarantine {
    /// An empty quarantine.
    pub const fn new() -> Quarantine {
        Quarantine {
            held: Mutex::new(Vec::new()),
        }
    }

    /// Takes `pages`, whose grant `gref` is still mapped.
    ///
    /// # Safety
    ///
    /// As [`push_many`](Self::push_many).
    pub unsafe fn push(&self, gref: GrantRef, pages: Pages) {
        // SAFETY: forwarded from the caller.
        unsafe { self.push_many([gref], pages) }
    }

    /// Takes `pages` with the grants `grefs` that are still active on it.
    ///
    /// # Safety
    ///
    /// Handing pages to the quarantine is handing them to
    /// [`Hal::free_pages`] later: they came from the `Hal` of the
    /// [`GrantTable`] later passed to [`retry`](Self::retry), nothing uses a
    /// pointer into them afterwards, and `grefs` (granted through that table)
    /// are all the grants of them still active.
    pub unsafe fn push_many(&self, grefs: impl IntoIterator<Item = GrantRef>, pages: Pages) {
        let grefs = grefs.into_iter().collect();
        self.held.lock().push(Held { grefs, pages });
    }

    /// Tries again to end the held grants; frees the references that end,
    /// and the pages whose grants all ended. Returns how many page runs were
    /// freed.
    pub fn retry<H: Hal>(&self, table: &GrantTable<'_, H>) -> usize {
        let mut held = self.held.lock();
        let mut freed = 0;
        let mut i = 0;
        while i < held.len() {
            held[i]
                .grefs
                .retain(|&g| match table.end_access_and_free(g) {
                    Ok(()) => false,
                    Err(Error::GrantInUse(_)) => true,
                    Err(e) => {
                        log::warn!("gnttab: quarantined {g:?}: {e}; dropping it");
                        false
                    }
                });
            if held[i].grefs.is_empty() {
                let h = held.swap_remove(i);
                // SAFETY: `push_many`'s caller promised the pages belong to
                // this table's `Hal` and are unused, and every grant of them
                // has now ended.
                unsafe { table.hal.free_pages(h.pages) };
                freed += 1;
            } else {
                i += 1;
            }
        }
        freed
    }

    /// How many page runs are held.
    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many pages (not runs) are held.
    pub fn pages(&self) -> usize {
        self.held.lock().iter().map(|h| h.pages.count()).sum()
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        let n = self.held.get_mut().len();
        if n != 0 {
            log::warn!(
                "gnttab: dropping a quarantine with {n} page runs still mapped; leaking them"
            );
        }
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
        assert_eq!(gt.alloc_batch(4, &mut more), Err(Error::GrantRefsExhausted));
        assert!(more.is_empty(), "a failed batch allocates nothing");
        gt.alloc_batch(3, &mut more).unwrap();
        assert_eq!(gt.alloc(), Err(Error::GrantRefsExhausted));
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
            GTF_PERMIT_ACCESS | GTF_READONLY
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
            assert_eq!(gt.free(g), Err(Error::InvalidGrantRef(g.0)));
            assert_eq!(
                gt.grant(g, BACK, gfn, false),
                Err(Error::InvalidGrantRef(g.0))
            );
            assert_eq!(gt.end_access(g), Err(Error::InvalidGrantRef(g.0)));
        }
        let g = gt.grant_access(BACK, gfn, false).unwrap();
        assert_eq!(
            gt.free(g),
            Err(Error::InvalidGrantRef(g.0)),
            "still granted"
        );
        assert_eq!(
            gt.grant(g, BACK, gfn, false),
            Err(Error::InvalidGrantRef(g.0))
        );
        assert_eq!(
            gt.grant_access(BACK, Gfn(1 << 40), false),
            Err(Error::Hypercall(-EINVAL))
        );
        assert_eq!(
            gt.in_use(),
            1,
            "the failed grant_access freed its reference"
        );
        gt.end_access_and_free(g).unwrap();
        assert_eq!(gt.end_access(g), Err(Error::InvalidGrantRef(g.0)));
    }

    #[test]
    fn revoking_a_mapped_grant_fails_until_unmapped() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let pages = hal.alloc_pages(1).unwrap();
        let g = gt.grant_access(BACK, pages.gfn(), false).unwrap();
        let map = xen.map_grant(BACK, FRONT, g, false).unwrap();

        assert_eq!(gt.end_access(g), Err(Error::GrantInUse(g.0)));
        assert_eq!(gt.end_access_and_free(g), Err(Error::GrantInUse(g.0)));
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
    fn quarantine_keeps_pages_until_the_backend_unmaps() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let q = Quarantine::new();
        let pages = hal.alloc_pages(2).unwrap();
        let g0 = gt.grant_access(BACK, pages.gfn(), false).unwrap();
        let g1 = gt
            .grant_access(BACK, pages.page_gfn(1).unwrap(), true)
            .unwrap();
        let map = xen.map_grant(BACK, FRONT, g1, true).unwrap();

        // SAFETY: both grants are listed; the pages are not used afterwards.
        let freed = unsafe { gt.release(&[g0, g1], pages, &q) };
        assert!(!freed);
        assert_eq!((q.len(), q.pages()), (1, 2));
        assert_eq!(gt.in_use(), 1, "g0 ended and was freed, g1 is held");
        assert_eq!(q.retry(&gt), 0);
        assert_eq!(xen.accounting(FRONT).pages, 2);

        map.unmap();
        assert_eq!(q.retry(&gt), 1);
        assert!(q.is_empty());
        assert_eq!(gt.in_use(), 0);
        let acct = xen.accounting(FRONT);
        assert_eq!((acct.pages, acct.grants_active, acct.bad_frees), (0, 0, 0));
    }

    #[test]
    fn release_frees_at_once_when_nothing_is_mapped() {
        let (xen, hal) = setup();
        let gt = GrantTable::new(&hal).unwrap();
        let q = Quarantine::new();
        let pages = hal.alloc_pages(1).unwrap();
        let g = gt.grant_access(BACK, pages.gfn(), false).unwrap();
        // SAFETY: the only grant is listed; the pages are not used afterwards.
        assert!(unsafe { gt.release(&[g], pages, &q) });
        assert!(q.is_empty());
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
