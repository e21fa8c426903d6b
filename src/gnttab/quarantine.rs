//! Pages whose grants could not be revoked because the other domain still
//! maps them. The [`GrantTable`] owns one quarantine; owned shared memory
//! ([`SharedPage`](super::SharedPage), [`SharedPages`](super::SharedPages))
//! lands here when it is released while still mapped.

use alloc::vec::Vec;

use spin::Mutex;

use super::{GrantError, GrantTable};
use crate::hal::{GrantRef, Hal, Pages};

struct Held {
    grefs: Vec<GrantRef>,
    pages: Pages,
    /// Who released them (see `SharedPage::alloc`).
    owner: u32,
}

/// Pages and the grants of them still active. Never hands a page out again;
/// frees it once every grant of it could be ended. Pages still held when the
/// quarantine is dropped are leaked (never freed), which is safe.
pub(super) struct Quarantine {
    held: Mutex<Vec<Held>>,
}

impl Quarantine {
    pub(super) const fn new() -> Quarantine {
        Quarantine {
            held: Mutex::new(Vec::new()),
        }
    }

    /// Takes `pages`, of which `grefs` are still granted. The caller (the
    /// table's `release_pages`) has the promise that nothing uses the pages
    /// any more and that they came from the table's `Hal`.
    pub(super) fn push(&self, grefs: Vec<GrantRef>, pages: Pages, owner: u32) {
        self.held.lock().push(Held {
            grefs,
            pages,
            owner,
        });
    }

    /// Tries again to end the held grants; frees the references that end and
    /// the pages whose grants all ended. Returns how many page runs were
    /// freed.
    pub(super) fn retry<H: Hal>(&self, table: &GrantTable<'_, H>) -> usize {
        let mut held = self.held.lock();
        let mut freed = 0;
        let mut i = 0;
        while i < held.len() {
            held[i].grefs.retain(|&g| match table.retire(g) {
                Ok(()) => false,
                Err(GrantError::InUse(_)) => true,
                Err(e) => {
                    log::warn!("gnttab: quarantined {g:?}: {e}; dropping it");
                    false
                }
            });
            if held[i].grefs.is_empty() {
                let h = held.swap_remove(i);
                // SAFETY: `push` was only called by `release_pages`, whose
                // caller promised the pages belong to this table's `Hal` and
                // are unused; every grant of them has now ended.
                unsafe { table.hal.free_pages(h.pages) };
                freed += 1;
            } else {
                i += 1;
            }
        }
        freed
    }

    /// How many pages (not runs) are held, of `owner` or of everyone.
    pub(super) fn pages(&self, owner: Option<u32>) -> usize {
        self.held
            .lock()
            .iter()
            .filter(|h| owner.is_none_or(|o| o == h.owner))
            .map(|h| h.pages.count())
            .sum()
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
