//! The hypervisor side of grant tables (`grant_table.h`, version 1): what a
//! backend domain's `GNTTABOP_map_grant_ref`, `GNTTABOP_unmap_grant_ref` and
//! `GNTTABOP_copy` do to the granting domain's table.
//!
//! Like Xen, the simulator keeps an "active" entry per pinned grant: the
//! first pin validates the shared entry (type `GTF_permit_access`, `domid`
//! equal to the mapping domain, `GTF_readonly` honoured), sets `GTF_reading`
//! (and `GTF_writing` for a writable pin) with a compare-exchange, and
//! records the frame; later pins by the same domain only count; the last
//! unpin clears the bits again. The guest's revocation (a compare-exchange
//! of `flags` to 0 that fails while those bits are set) therefore sees every
//! live mapping.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::errno::{EAGAIN, EINVAL, EPERM, EROFS};
use super::xen::State;
use super::SimXen;
use crate::abi::grant as abi;
use crate::hal::HalError;
use crate::hal::{DomId, Gfn, GrantEntry, GrantRef, PAGE_SIZE};
use crate::Result;

// `GTF_*` of grant_table.h ("Type of grant entry", "Subflags for
// GTF_permit_access").
pub(super) const GTF_PERMIT_ACCESS: u16 = abi::GTF_permit_access;
pub(super) const GTF_TYPE_MASK: u16 = abi::GTF_type_mask;
const GTF_READONLY: u16 = abi::GTF_readonly;
const GTF_READING: u16 = abi::GTF_reading;
const GTF_WRITING: u16 = abi::GTF_writing;
const GTF_SUB_PAGE: u16 = abi::GTF_sub_page;

/// Xen gives up on an entry whose flags keep changing under its
/// compare-exchange after this many tries ("Shared grant entry is unstable").
const SET_STATUS_TRIES: usize = 4;

/// Xen's active-grant entry: who pins a grant, how, and which frame.
#[derive(Debug)]
pub(super) struct Active {
    mapper: DomId,
    gfn: u64,
    readers: u32,
    writers: u32,
}

/// Sets `GTF_reading` (and `GTF_writing`) on `entry` for `mapper`, validating
/// it first when `first_pin`. Returns the bits this call set.
fn set_status(
    entry: &GrantEntry,
    mapper: DomId,
    write: bool,
    first_pin: bool,
) -> Result<u16, HalError> {
    for _ in 0..SET_STATUS_TRIES {
        let cur = entry.flags.load(Ordering::Acquire);
        if first_pin
            && ((cur & (GTF_TYPE_MASK | GTF_SUB_PAGE)) != GTF_PERMIT_ACCESS
                || entry.domid.load(Ordering::Acquire) != mapper.0)
        {
            return Err(HalError::Hypercall(-EPERM));
        }
        if write && cur & GTF_READONLY != 0 {
            return Err(HalError::Hypercall(-EROFS));
        }
        let new = cur | GTF_READING | if write { GTF_WRITING } else { 0 };
        if entry
            .flags
            .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        let set = new & !cur;
        // Xen compares flags and domid in one 32-bit exchange; with separate
        // fields, re-check domid now that the pin blocks revocation (the guest
        // may have revoked and re-granted to someone else in between).
        if first_pin && entry.domid.load(Ordering::Acquire) != mapper.0 {
            entry.flags.fetch_and(!set, Ordering::Release);
            return Err(HalError::Hypercall(-EPERM));
        }
        return Ok(set);
    }
    Err(HalError::Hypercall(-EAGAIN))
}

impl State {
    /// Pins grant `gref` of `granter` for `mapper`; returns the frame.
    fn pin(
        &mut self,
        mapper: DomId,
        granter: DomId,
        gref: GrantRef,
        write: bool,
    ) -> Result<(u64, NonNull<u8>), HalError> {
        let table = std::sync::Arc::clone(&self.domain(granter).table);
        let State {
            domains, memory, ..
        } = self;
        let dom = domains
            .get_mut(&granter)
            .ok_or(HalError::Hypercall(-EINVAL))?;
        let entry = usize::try_from(gref.0)
            .ok()
            .and_then(|i| table.get(i))
            .ok_or(HalError::Hypercall(-EINVAL))?;
        let (pins, writers, gfn) = match dom.active.get(&gref.0) {
            Some(a) if a.mapper != mapper => return Err(HalError::Hypercall(-EPERM)),
            Some(a) => (a.readers + a.writers, a.writers, a.gfn),
            None => (0, 0, 0),
        };
        let set = if pins == 0 || (write && writers == 0) {
            set_status(entry, mapper, write, pins == 0)?
        } else {
            0
        };
        let gfn = if pins == 0 {
            u64::from(entry.frame.load(Ordering::Acquire))
        } else {
            gfn
        };
        let Some(ptr) = memory.frame_ptr(granter, gfn) else {
            entry.flags.fetch_and(!set, Ordering::Release);
            return Err(HalError::Hypercall(-EINVAL));
        };
        memory.add_map(gfn, 1);
        let act = dom.active.entry(gref.0).or_insert(Active {
            mapper,
            gfn,
            readers: 0,
            writers: 0,
        });
        if write {
            act.writers += 1;
        } else {
            act.readers += 1;
        }
        Ok((gfn, ptr))
    }

    /// Undoes one `pin`.
    fn unpin(&mut self, granter: DomId, gref: GrantRef, write: bool) {
        let State {
            domains, memory, ..
        } = self;
        let Some(dom) = domains.get_mut(&granter) else {
            return;
        };
        let Some(act) = dom.active.get_mut(&gref.0) else {
            return;
        };
        if write {
            act.writers = act.writers.saturating_sub(1);
        } else {
            act.readers = act.readers.saturating_sub(1);
        }
        let gfn = act.gfn;
        let mut clear = 0;
        if act.writers == 0 {
            clear |= GTF_WRITING;
        }
        if act.readers + act.writers == 0 {
            clear |= GTF_READING;
            dom.active.remove(&gref.0);
        }
        if let Some(e) = usize::try_from(gref.0).ok().and_then(|i| dom.table.get(i)) {
            e.flags.fetch_and(!clear, Ordering::Release);
        }
        memory.add_map(gfn, -1);
    }
}

enum Target {
    Grant { granter: DomId, gref: GrantRef },
    Foreign { owner: DomId },
}

/// A live mapping of one 4096-byte frame of another domain, from
/// [`SimXen::map_grant`] or [`SimXen::map_foreign`].
///
/// While it exists the frame stays allocated (the owner's `free_pages` of it
/// is refused and counted), and for a grant mapping `GTF_reading` /
/// `GTF_writing` stay set so the granter's revocation fails with
/// `GrantError::InUse`. Dropping it, or [`unmap`](GrantMapping::unmap), releases it.
pub struct GrantMapping {
    xen: SimXen,
    mapper: DomId,
    target: Target,
    gfn: u64,
    ptr: NonNull<u8>,
    writable: bool,
}

// SAFETY: the mapping is a pointer into simulator-owned memory that stays
// allocated while the mapping (which holds the simulator) lives; reads and
// writes through it are explicit copies.
unsafe impl Send for GrantMapping {}
// SAFETY: as for `Send`; `&self` methods only copy bytes.
unsafe impl Sync for GrantMapping {}

impl fmt::Debug for GrantMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantMapping")
            .field("mapper", &self.mapper)
            .field("gref", &self.gref())
            .field("gfn", &self.gfn)
            .field("writable", &self.writable)
            .finish()
    }
}

impl GrantMapping {
    /// The mapping domain.
    pub fn mapper(&self) -> DomId {
        self.mapper
    }

    /// The domain whose frame this is.
    pub fn owner(&self) -> DomId {
        match self.target {
            Target::Grant { granter, .. } => granter,
            Target::Foreign { owner } => owner,
        }
    }

    /// The grant reference mapped, or `None` for a foreign mapping.
    pub fn gref(&self) -> Option<GrantRef> {
        match self.target {
            Target::Grant { gref, .. } => Some(gref),
            Target::Foreign { .. } => None,
        }
    }

    /// The owner's frame number.
    pub fn gfn(&self) -> Gfn {
        Gfn(self.gfn)
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Start of the 4096-byte frame. Valid while `self` lives; the owner
    /// writes the same memory concurrently, so use atomics or volatile
    /// accesses for anything shared, as with a real mapping. Never write
    /// through it when the mapping is read-only.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(offset: usize, len: usize) -> Result<(), HalError> {
        match offset.checked_add(len) {
            Some(end) if end <= PAGE_SIZE => Ok(()),
            _ => Err(HalError::Hypercall(-EINVAL)),
        }
    }

    /// Copies `buf.len()` bytes from `offset` of the frame.
    ///
    /// # Errors
    ///
    /// `Hypercall(-EINVAL)` when the range leaves the frame.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), HalError> {
        Self::check(offset, buf.len())?;
        // SAFETY: the frame is PAGE_SIZE bytes that stay allocated while the
        // mapping lives; the range was checked; `buf` is our own memory and
        // cannot overlap the simulator's page.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` to `offset` of the frame.
    ///
    /// # Errors
    ///
    /// `Hypercall(-EROFS)` on a read-only mapping, `Hypercall(-EINVAL)` when
    /// the range leaves the frame.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), HalError> {
        if !self.writable {
            return Err(HalError::Hypercall(-EROFS));
        }
        Self::check(offset, data.len())?;
        // SAFETY: as in `read`, and the mapping is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Unmaps (`GNTTABOP_unmap_grant_ref`). Same as dropping.
    pub fn unmap(self) {}
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        let mut st = self.xen.state();
        match self.target {
            Target::Grant { granter, gref } => st.unpin(granter, gref, self.writable),
            Target::Foreign { .. } => st.memory.add_map(self.gfn, -1),
        }
        let dom = st.domain(self.mapper);
        dom.mappings_held = dom.mappings_held.saturating_sub(1);
        drop(st);
        self.xen.wake();
    }
}

impl SimXen {
    /// `GNTTABOP_map_grant_ref`: `mapper` maps grant `gref` of `granter`,
    /// read-only or writable.
    ///
    /// # Errors
    ///
    /// All as `HalError::Hypercall(-errno)` (see [`errno`](super::errno)):
    /// `EINVAL` for a reference outside the table or a frame the granter does
    /// not own; `EPERM` when the entry is not `GTF_permit_access` to `mapper`
    /// (never granted, revoked, granted to someone else, sub-page) or is
    /// already pinned by another domain; `EROFS` for a writable mapping of a
    /// `GTF_readonly` grant; `EAGAIN` when the flags kept changing.
    pub fn map_grant(
        &self,
        mapper: DomId,
        granter: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<GrantMapping, HalError> {
        let mut st = self.state();
        let (gfn, ptr) = st.pin(mapper, granter, gref, !readonly)?;
        st.domain(mapper).mappings_held += 1;
        Ok(GrantMapping {
            xen: self.clone(),
            mapper,
            target: Target::Grant { granter, gref },
            gfn,
            ptr,
            writable: !readonly,
        })
    }

    /// A privileged foreign mapping of frame `gfn` of `owner`, as dom0's
    /// toolstack, xenstored and xenconsoled use for the xenstore and console
    /// pages. No grant is involved; the owner's free of a mapped page is still
    /// caught.
    ///
    /// # Errors
    ///
    /// `Hypercall(-EINVAL)` when `owner` has no such live frame.
    pub fn map_foreign(
        &self,
        mapper: DomId,
        owner: DomId,
        gfn: Gfn,
        readonly: bool,
    ) -> Result<GrantMapping, HalError> {
        let mut st = self.state();
        let ptr = st
            .memory
            .frame_ptr(owner, gfn.0)
            .ok_or(HalError::Hypercall(-EINVAL))?;
        st.memory.add_map(gfn.0, 1);
        st.domain(mapper).mappings_held += 1;
        Ok(GrantMapping {
            xen: self.clone(),
            mapper,
            target: Target::Foreign { owner },
            gfn: gfn.0,
            ptr,
            writable: !readonly,
        })
    }

    /// How many mappings (and copies in progress) pin grant `gref` of
    /// `granter` now, whoever holds them.
    pub(crate) fn grant_pins(&self, granter: DomId, gref: GrantRef) -> u32 {
        self.state()
            .domains
            .get(&granter)
            .and_then(|d| d.active.get(&gref.0))
            .map_or(0, |a| a.readers + a.writers)
    }

    /// `GNTTABOP_copy` with the granted frame as source: `caller` copies
    /// `buf.len()` bytes from `offset` of grant `gref` of `granter` into its
    /// own `buf`, without a lasting mapping (a qdisk-style backend).
    ///
    /// # Errors
    ///
    /// As [`map_grant`](Self::map_grant) read-only, and `Hypercall(-EINVAL)`
    /// when the range crosses the frame (`GNTST_bad_copy_arg`).
    pub fn grant_copy_from(
        &self,
        caller: DomId,
        granter: DomId,
        gref: GrantRef,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), HalError> {
        GrantMapping::check(offset, buf.len())?;
        let mut st = self.state();
        let (_, ptr) = st.pin(caller, granter, gref, false)?;
        // SAFETY: the frame is pinned and allocated; the range is checked;
        // `buf` is the caller's own memory.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.as_ptr().add(offset), buf.as_mut_ptr(), buf.len())
        };
        st.unpin(granter, gref, false);
        Ok(())
    }

    /// `GNTTABOP_copy` with the granted frame as destination.
    ///
    /// # Errors
    ///
    /// As [`map_grant`](Self::map_grant) writable, and `Hypercall(-EINVAL)`
    /// when the range crosses the frame.
    pub fn grant_copy_to(
        &self,
        caller: DomId,
        granter: DomId,
        gref: GrantRef,
        offset: usize,
        data: &[u8],
    ) -> Result<(), HalError> {
        GrantMapping::check(offset, data.len())?;
        let mut st = self.state();
        let (_, ptr) = st.pin(caller, granter, gref, true)?;
        // SAFETY: as in `grant_copy_from`, and the pin is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr().add(offset), data.len())
        };
        st.unpin(granter, gref, true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::{Hal, Pages};
    use crate::sim::SimHal;

    const FRONT: DomId = DomId(1);
    const BACK: DomId = DomId::DOM0;
    const OTHER: DomId = DomId(2);
    const G: GrantRef = GrantRef(10);

    fn grant(hal: &SimHal, gref: GrantRef, to: DomId, gfn: Gfn, flags: u16) {
        let e = &hal.grant_table()[gref.0 as usize];
        e.domid.store(to.0, Ordering::Relaxed);
        e.frame.store(gfn.0 as u32, Ordering::Relaxed);
        e.flags.store(flags, Ordering::Release);
    }

    fn flags(hal: &SimHal, gref: GrantRef) -> u16 {
        hal.grant_table()[gref.0 as usize]
            .flags
            .load(Ordering::Acquire)
    }

    fn teardown(xen: &SimXen, hal: &SimHal, pages: Pages) {
        for e in hal.grant_table() {
            e.flags.store(0, Ordering::Release);
        }
        // SAFETY: every grant was just cleared and nothing maps the pages.
        unsafe { hal.free_pages(pages) };
        assert_eq!(xen.accounting(FRONT).bad_frees, 0);
    }

    #[test]
    fn invalid_maps_are_refused_like_xen() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let pages = hal.alloc_pages(1).unwrap();
        let len = hal.grant_table().len() as u32;
        let refused = |gref, ro| {
            xen.map_grant(BACK, FRONT, gref, ro)
                .map(|_| ())
                .unwrap_err()
        };

        assert_eq!(refused(GrantRef(len), true), HalError::Hypercall(-EINVAL));
        assert_eq!(
            refused(G, true),
            HalError::Hypercall(-EPERM),
            "never granted"
        );

        grant(&hal, G, OTHER, pages.gfn(), GTF_PERMIT_ACCESS);
        assert_eq!(
            refused(G, true),
            HalError::Hypercall(-EPERM),
            "other domain"
        );

        grant(&hal, G, BACK, pages.gfn(), GTF_PERMIT_ACCESS | GTF_READONLY);
        assert_eq!(refused(G, false), HalError::Hypercall(-EROFS));
        assert_eq!(
            flags(&hal, G),
            GTF_PERMIT_ACCESS | GTF_READONLY,
            "untouched"
        );

        grant(&hal, G, BACK, pages.gfn(), GTF_PERMIT_ACCESS | GTF_SUB_PAGE);
        assert_eq!(refused(G, true), HalError::Hypercall(-EPERM), "sub-page");

        grant(&hal, G, BACK, Gfn(0x42), GTF_PERMIT_ACCESS);
        assert_eq!(
            refused(G, true),
            HalError::Hypercall(-EINVAL),
            "not its frame"
        );
        assert_eq!(flags(&hal, G), GTF_PERMIT_ACCESS, "bits undone");

        grant(&hal, G, BACK, pages.gfn(), GTF_PERMIT_ACCESS);
        hal.grant_table()[G.0 as usize]
            .flags
            .store(0, Ordering::Release);
        assert_eq!(refused(G, true), HalError::Hypercall(-EPERM), "revoked");
        assert_eq!(xen.accounting(BACK).mappings_held, 0);
        teardown(&xen, &hal, pages);
    }

    #[test]
    fn mappings_set_and_clear_reading_and_writing() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let pages = hal.alloc_pages(1).unwrap();
        grant(&hal, G, BACK, pages.gfn(), GTF_PERMIT_ACCESS);

        let ro = xen.map_grant(BACK, FRONT, G, true).unwrap();
        assert_eq!(flags(&hal, G), GTF_PERMIT_ACCESS | GTF_READING);
        let rw = xen.map_grant(BACK, FRONT, G, false).unwrap();
        assert_eq!(
            flags(&hal, G),
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
        );
        assert_eq!(
            xen.map_grant(OTHER, FRONT, G, true).unwrap_err(),
            HalError::Hypercall(-EPERM),
            "pinned by another domain"
        );
        let acct = xen.accounting(FRONT);
        assert_eq!((acct.grants_active, acct.grants_mapped_by_others), (1, 1));
        assert_eq!(xen.accounting(BACK).mappings_held, 2);
        assert_eq!(xen.pages_mapped_by_others(FRONT), 1);

        rw.unmap();
        assert_eq!(flags(&hal, G), GTF_PERMIT_ACCESS | GTF_READING);
        drop(ro);
        assert_eq!(flags(&hal, G), GTF_PERMIT_ACCESS);
        assert_eq!(xen.accounting(FRONT).grants_mapped_by_others, 0);
        assert_eq!(xen.accounting(BACK).mappings_held, 0);
        teardown(&xen, &hal, pages);
    }

    #[test]
    fn mapped_bytes_are_the_granted_page() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let pages = hal.alloc_pages(2).unwrap();
        let gfn1 = pages.page_gfn(1).unwrap();
        grant(&hal, G, BACK, gfn1, GTF_PERMIT_ACCESS);
        let map = xen.map_grant(BACK, FRONT, G, false).unwrap();
        assert_eq!((map.owner(), map.gref(), map.gfn()), (FRONT, Some(G), gfn1));

        map.write(4090, b"hello!").unwrap();
        let mut seen = [0u8; 6];
        // SAFETY: page 1 of our own live pages, bytes 4090..4096.
        unsafe {
            std::ptr::copy_nonoverlapping(pages.as_ptr().add(4096 + 4090), seen.as_mut_ptr(), 6)
        };
        assert_eq!(&seen, b"hello!");

        let mut back = [0u8; 6];
        map.read(4090, &mut back).unwrap();
        assert_eq!(&back, b"hello!");
        assert_eq!(map.read(4091, &mut back), Err(HalError::Hypercall(-EINVAL)));
        assert_eq!(
            map.write(usize::MAX, b"x"),
            Err(HalError::Hypercall(-EINVAL))
        );
        drop(map);

        let ro = xen.map_grant(BACK, FRONT, G, true).unwrap();
        assert_eq!(ro.write(0, b"x"), Err(HalError::Hypercall(-EROFS)));
        drop(ro);
        teardown(&xen, &hal, pages);
    }

    #[test]
    fn grant_copy_moves_bytes_without_a_lasting_pin() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let pages = hal.alloc_pages(1).unwrap();
        grant(&hal, G, BACK, pages.gfn(), GTF_PERMIT_ACCESS);

        xen.grant_copy_to(BACK, FRONT, G, 100, b"sector").unwrap();
        let mut buf = [0u8; 6];
        xen.grant_copy_from(BACK, FRONT, G, 100, &mut buf).unwrap();
        assert_eq!(&buf, b"sector");
        assert_eq!(flags(&hal, G), GTF_PERMIT_ACCESS, "no pin left behind");
        assert_eq!(
            xen.grant_copy_from(BACK, FRONT, G, 4095, &mut buf),
            Err(HalError::Hypercall(-EINVAL)),
            "crosses the frame"
        );
        assert_eq!(
            xen.grant_copy_from(OTHER, FRONT, G, 0, &mut buf),
            Err(HalError::Hypercall(-EPERM))
        );

        grant(&hal, G, BACK, pages.gfn(), GTF_PERMIT_ACCESS | GTF_READONLY);
        assert_eq!(
            xen.grant_copy_to(BACK, FRONT, G, 0, b"x"),
            Err(HalError::Hypercall(-EROFS))
        );
        xen.grant_copy_from(BACK, FRONT, G, 100, &mut buf).unwrap();
        assert_eq!(xen.accounting(FRONT).grants_mapped_by_others, 0);
        teardown(&xen, &hal, pages);
    }

    #[test]
    fn foreign_mappings_pin_the_page() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let pages = hal.alloc_pages(1).unwrap();
        assert!(xen.map_foreign(BACK, OTHER, pages.gfn(), false).is_err());
        let map = xen.map_foreign(BACK, FRONT, pages.gfn(), false).unwrap();
        assert_eq!((map.gref(), map.owner()), (None, FRONT));
        map.write(0, &[7]).unwrap();
        // SAFETY: our own live page.
        assert_eq!(unsafe { *pages.as_ptr() }, 7);
        assert_eq!(xen.pages_mapped_by_others(FRONT), 1);
        drop(map);
        assert_eq!(xen.pages_mapped_by_others(FRONT), 0);
        teardown(&xen, &hal, pages);
    }
}
