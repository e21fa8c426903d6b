//! Owned memory shared with another domain through grants.
//!
//! [`SharedPage`] (one data page) and [`SharedPages`] (a run of pages, a
//! ring) own their pages and their grants together, in the shape of
//! virtio-drivers' `Dma`: the only way to give the memory back is to drop
//! (or [`release`](SharedPage::release)) the value, which ends every grant
//! first and frees the pages — or, when the other domain still maps one,
//! moves them into the [`GrantTable`]'s quarantine. Reads and writes go
//! through bounds-checked copies, so code above this module needs no
//! `unsafe` to use shared memory.

use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use super::{GrantError, GrantTable};
use crate::hal::{DomId, Gfn, GrantRef, Hal, HalError, Pages, PAGE_SIZE};
use crate::ring::RingMemory;
use crate::Result;

/// Checks that `off..off + len` lies inside `size` bytes.
fn in_bounds(off: usize, len: usize, size: usize) -> Result<(), GrantError> {
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(GrantError::OutOfBounds),
    }
}

/// One page of this domain's memory that may be granted to another domain.
///
/// The grant has two states: none, or [`gref`](Self::gref) granted to one
/// domain. Dropping the value ends the grant and frees the page, or
/// quarantines the page while the other domain still maps it.
pub struct SharedPage<'a, H: Hal> {
    table: &'a GrantTable<'a, H>,
    owner: u32,
    /// Always `Some` until the value is released.
    page: Option<Pages>,
    gref: Option<GrantRef>,
}

impl<H: Hal> fmt::Debug for SharedPage<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPage")
            .field("gfn", &self.gfn())
            .field("gref", &self.gref)
            .finish()
    }
}

impl<'a, H: Hal> SharedPage<'a, H> {
    /// A zeroed page from `table`'s `Hal`, not granted. `owner` tags it in
    /// the quarantine ([`GrantTable::quarantined_pages_of`]): a device
    /// number, say.
    ///
    /// # Errors
    ///
    /// [`GrantError::Hal`] with what the `Hal` returns.
    pub fn alloc(table: &'a GrantTable<'a, H>, owner: u32) -> Result<Self, GrantError> {
        let page = table.hal().alloc_pages(1)?;
        Ok(SharedPage {
            table,
            owner,
            page: Some(page),
            gref: None,
        })
    }

    fn pages(&self) -> Option<&Pages> {
        self.page.as_ref()
    }

    /// The page's guest frame number.
    pub fn gfn(&self) -> Gfn {
        self.pages().map_or(Gfn(0), Pages::gfn)
    }

    /// The grant reference through which the page is shared, if it is.
    pub fn gref(&self) -> Option<GrantRef> {
        self.gref
    }

    /// Grants `domid` access to the page.
    ///
    /// # Errors
    ///
    /// [`GrantError::InvalidRef`] when the page is granted already; the
    /// errors of [`GrantTable::grant_access`].
    pub fn grant(&mut self, domid: DomId, readonly: bool) -> Result<GrantRef, GrantError> {
        if let Some(g) = self.gref {
            return Err(GrantError::InvalidRef(g.0));
        }
        let g = self.table.grant_access(domid, self.gfn(), readonly)?;
        self.gref = Some(g);
        Ok(g)
    }

    /// Ends the grant (if any) and frees its reference: afterwards the
    /// other domain can neither read nor change the page.
    ///
    /// # Errors
    ///
    /// [`GrantError::InUse`] when the other domain still maps the page: the
    /// grant stays, and the page must not be trusted or reused.
    pub fn revoke(&mut self) -> Result<(), GrantError> {
        if let Some(g) = self.gref {
            self.table.end_access_and_free(g)?;
            self.gref = None;
        }
        Ok(())
    }

    /// Copies `src` into the page at byte `off`.
    ///
    /// # Errors
    ///
    /// [`GrantError::OutOfBounds`] when the bytes do not fit inside the page.
    pub fn write(&mut self, off: usize, src: &[u8]) -> Result<(), GrantError> {
        in_bounds(off, src.len(), PAGE_SIZE)?;
        let p = self.pages().ok_or(GrantError::OutOfBounds)?;
        // SAFETY: `off + src.len() <= PAGE_SIZE`, the page's size; the page
        // is ours and live, `src` cannot overlap it (no reference into the
        // page is ever handed out).
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr().add(off), src.len());
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes from byte `off` of the page into `dst`.
    ///
    /// # Errors
    ///
    /// [`GrantError::OutOfBounds`] when the bytes do not lie inside the page.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<(), GrantError> {
        in_bounds(off, dst.len(), PAGE_SIZE)?;
        let p = self.pages().ok_or(GrantError::OutOfBounds)?;
        // SAFETY: in bounds as checked; the page is live, initialised (zeroed
        // at allocation) and does not overlap `dst`.
        unsafe {
            core::ptr::copy_nonoverlapping(p.as_ptr().add(off), dst.as_mut_ptr(), dst.len());
        }
        Ok(())
    }

    /// Gives the page back: ends the grant and frees the page, or
    /// quarantines it while the other domain maps it. Returns whether the
    /// page was freed now. Dropping does the same.
    pub fn release(mut self) -> bool {
        self.release_inner()
    }

    fn release_inner(&mut self) -> bool {
        let Some(page) = self.page.take() else {
            return true;
        };
        let grefs = self.gref.take();
        // SAFETY: the page came from the table's `Hal` (`alloc`), no pointer
        // into it outlives this value (copies only), and `grefs` is its only
        // grant.
        unsafe { self.table.release_pages(grefs.as_slice(), page, self.owner) }
    }
}

impl<H: Hal> Drop for SharedPage<'_, H> {
    fn drop(&mut self) {
        self.release_inner();
    }
}

/// A virtually contiguous run of pages, each granted to the same domain
/// (a shared ring). As [`SharedPage`], dropping it gives everything back in
/// the protocol's order: grants ended (or the run quarantined), references
/// freed, pages freed.
pub struct SharedPages<'a, H: Hal> {
    table: &'a GrantTable<'a, H>,
    owner: u32,
    /// Always `Some` until dropped.
    pages: Option<Pages>,
    /// The references of pages `0..len()`, once granted. They stay
    /// allocated after [`revoke`](Self::revoke) until the value is dropped,
    /// so that a reference another party may still name is not handed out
    /// again before it has been told the memory is gone.
    grefs: Vec<GrantRef>,
    /// Set by [`keep_references`](Self::keep_references): on drop the
    /// grants end and the pages go, but the references are never freed.
    keep_refs: bool,
}

impl<H: Hal> fmt::Debug for SharedPages<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPages")
            .field("count", &self.count())
            .field("grefs", &self.grefs)
            .finish()
    }
}

impl<'a, H: Hal> SharedPages<'a, H> {
    /// `count` zeroed pages, each granted to `domid` (read-write unless
    /// `readonly`); nothing is held on error. `owner` tags the run as in
    /// [`SharedPage::alloc`].
    ///
    /// # Errors
    ///
    /// What the `Hal` returns for the allocation, and the errors of
    /// [`GrantTable::grant_access`].
    pub fn alloc_granted(
        table: &'a GrantTable<'a, H>,
        count: usize,
        domid: DomId,
        readonly: bool,
        owner: u32,
    ) -> Result<Self, GrantError> {
        let pages = table.hal().alloc_pages(count)?;
        let mut run = SharedPages {
            table,
            owner,
            pages: Some(pages),
            grefs: Vec::new(),
            keep_refs: false,
        };
        run.grefs
            .try_reserve_exact(count)
            .map_err(|_| GrantError::Hal(HalError::OutOfMemory))?;
        for i in 0..count {
            let gfn = run.pages().and_then(|p| p.page_gfn(i));
            let gfn = gfn.ok_or(GrantError::Hal(HalError::OutOfMemory))?;
            // On error `run` drops and gives back what was granted so far.
            let g = table.grant_access(domid, gfn, readonly)?;
            run.grefs.push(g);
        }
        Ok(run)
    }

    fn pages(&self) -> Option<&Pages> {
        self.pages.as_ref()
    }

    /// Number of pages.
    pub fn count(&self) -> usize {
        self.pages().map_or(0, Pages::count)
    }

    /// The grant reference of each page, in order.
    pub fn grefs(&self) -> &[GrantRef] {
        &self.grefs
    }

    /// Ends every grant, keeping the references allocated until the value
    /// is dropped (teardown: revoke, tell the other end, then free).
    ///
    /// # Errors
    ///
    /// [`GrantError::InUse`] when some page is still mapped; the grants that
    /// could be ended are ended, the others stay, and dropping the value
    /// then quarantines the run.
    pub fn revoke(&mut self) -> Result<(), GrantError> {
        let mut first = Ok(());
        for &g in &self.grefs {
            match self.table.end_access(g) {
                Ok(()) => {}
                // Ended by an earlier revoke.
                Err(GrantError::InvalidRef(_)) if self.table.is_allocated(g) => {}
                Err(e) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }
}

impl<H: Hal> SharedPages<'_, H> {
    /// From now on the references are never freed, not even when the value
    /// drops (the grants still end, the pages are still freed or
    /// quarantined): for references that some key may still name after a
    /// removal of it failed, so that no other memory is ever granted under
    /// them. A reference costs one grant-table entry.
    pub fn keep_references(&mut self) {
        self.keep_refs = true;
    }
}

impl<H: Hal> Drop for SharedPages<'_, H> {
    fn drop(&mut self) {
        let Some(pages) = self.pages.take() else {
            return;
        };
        if self.keep_refs && self.revoke().is_ok() {
            // Every grant ended: the references stay allocated, unused.
            // SAFETY: the pages came from the table's `Hal`, no pointer into
            // them outlives this value (the ring built on it is dropped
            // first), and no grant of them is active any more.
            unsafe { self.table.hal().free_pages(pages) };
            return;
        }
        // SAFETY: the pages came from the table's `Hal`; the only pointers
        // into them are those of a ring built on this value through
        // `RingMemory`, which `ring::OwnedFrontRing` drops before its
        // memory; `grefs` lists every grant of them.
        unsafe { self.table.release_pages(&self.grefs, pages, self.owner) };
    }
}

// SAFETY: the base pointer is the start of the `Pages` this value owns for
// its whole life (never replaced before drop), page-aligned, valid for
// `count() * PAGE_SIZE` bytes of initialised (zeroed) memory, and nothing in
// this address space touches it but through the pointer handed out here.
unsafe impl<H: Hal> RingMemory for SharedPages<'_, H> {
    fn base(&self) -> NonNull<u8> {
        self.pages().map_or(NonNull::dangling(), Pages::as_non_null)
    }

    fn len(&self) -> usize {
        self.pages().map_or(0, Pages::len)
    }
}
