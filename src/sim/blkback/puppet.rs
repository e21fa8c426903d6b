//! Puppet mode: a backend whose every response is written by the caller.
//!
//! With [`Faults::hold_responses`](super::Faults::hold_responses) set the
//! backend still takes requests off its rings and does their I/O (mapping
//! the frontend's grants, reading or writing the disk), but it keeps each
//! response, and the frames its request maps, until the caller releases it
//! with [`SimBlkBackHandle::release_held`] — carrying whatever `id`,
//! `operation` and `status` the caller chooses. The caller may also write
//! raw responses into any slot of a ring, move the shared `rsp_prod`
//! anywhere and send notifications: everything a hostile or buggy backend
//! can do to the shared page (`io/ring.h`: the response half of the ring
//! belongs to the backend). Fuzz targets and fault tests drive it.

use core::sync::atomic::{AtomicU32, Ordering};
use std::vec::Vec;

use super::decode::SLOT_SIZE;
use super::io::{Frame, Queue};
use super::SimBlkBackHandle;
use crate::abi::blkif::BlkifResponse;
use crate::abi::sring::SRING_HEADER_SIZE;
use crate::hal::{DomId, PAGE_SIZE};
use crate::sim::SimXen;

/// `offsetof(struct blkif_sring, req_prod)` and `rsp_prod` (`io/ring.h`).
const REQ_PROD: usize = 0;
const RSP_PROD: usize = 8;

impl Queue {
    /// The shared `u32` at byte `off` of the ring's first page.
    fn shared_u32(&self, off: usize) -> Option<&AtomicU32> {
        let page = self.ring_pages.first()?;
        // SAFETY: the first ring page is mapped (and stays allocated) while
        // `page`, borrowed by the returned reference, lives; `off` is 0 or 8,
        // a 4-byte-aligned `u32` index of `struct blkif_sring` that both ends
        // only ever access atomically (`SringHeader`).
        Some(unsafe { AtomicU32::from_ptr(page.as_ptr().add(off).cast::<u32>()) })
    }

    /// Requests the frontend published that this backend has not taken.
    fn untaken(&self) -> u32 {
        self.shared_u32(REQ_PROD).map_or(0, |p| {
            p.load(Ordering::Acquire).wrapping_sub(self.ring.req_cons())
        })
    }

    /// Writes `rsp` into the slot of free-running index `idx` with volatile
    /// stores, without touching `rsp_prod`.
    fn poke_slot(&self, idx: u32, rsp: &BlkifResponse) {
        let Some(first) = self.ring_pages.first() else {
            return;
        };
        let slots = self.ring.size();
        let off = SRING_HEADER_SIZE + (idx & (slots - 1)) as usize * SLOT_SIZE;
        debug_assert!(off + SLOT_SIZE <= self.ring_pages.len() * PAGE_SIZE);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&rsp.id.to_le_bytes());
        bytes[8] = rsp.operation;
        bytes[10..12].copy_from_slice(&rsp.status.to_le_bytes());
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: the ring pages are one contiguous run of mapped frames
            // (checked when the ring was attached) that stay mapped while
            // `self` lives; `idx & (slots - 1)` is a slot index, and slots
            // lie inside the pages. The frontend reads slots only with
            // volatile loads; this is the backend's half of the slot.
            unsafe { first.as_ptr().add(off + i).write_volatile(*b) };
        }
    }
}

impl SimBlkBackHandle {
    /// Responses held by [`Faults::hold_responses`](super::Faults::hold_responses),
    /// oldest first, as `(queue, response the backend would send)`.
    pub fn held_responses(&self) -> Vec<(usize, BlkifResponse)> {
        let d = self.dev.lock();
        let Some(c) = &d.conn else {
            return Vec::new();
        };
        c.queues
            .iter()
            .enumerate()
            .flat_map(|(qi, q)| q.pending.iter().map(move |p| (qi, p.rsp)))
            .collect()
    }

    /// Publishes held response number `n` (in the order of
    /// [`held_responses`](Self::held_responses)) as `edit` leaves it, unmaps
    /// its frames (unless `keep_grants_mapped` is set) and notifies the
    /// frontend if it asked to be. Returns whether there was such a response.
    pub fn release_held(
        &self,
        xen: &SimXen,
        n: usize,
        edit: impl FnOnce(&mut BlkifResponse),
    ) -> bool {
        let mut d = self.dev.lock();
        let keep = d.faults.keep_grants_mapped;
        let Some(c) = &mut d.conn else {
            return false;
        };
        let mut n = n;
        let Some(qi) = c.queues.iter().position(|q| {
            if n < q.pending.len() {
                true
            } else {
                n -= q.pending.len();
                false
            }
        }) else {
            return false;
        };
        let q = &mut c.queues[qi];
        let p = q.pending.remove(n);
        let mut rsp = p.rsp;
        edit(&mut rsp);
        if keep {
            q.kept.extend(p.frames);
        } else {
            drop(p.frames);
        }
        if q.ring.push_response(&rsp).is_err() {
            return true;
        }
        let port = q.port;
        let notify = q.ring.push_responses_and_check_notify();
        if notify && xen.send(DomId::DOM0, port).is_ok() {
            d.stats.notifications_sent += 1;
        }
        true
    }

    /// Publishes `rsp` through the backend's own producer of ring `queue`
    /// (next slot, `rsp_prod` moved, notification if asked for) without
    /// touching any held response or its mappings: a response the backend
    /// makes up. Returns whether the ring exists and had room.
    pub fn push_forged(&self, xen: &SimXen, queue: usize, rsp: BlkifResponse) -> bool {
        let mut d = self.dev.lock();
        let Some(q) = d.conn.as_mut().and_then(|c| c.queues.get_mut(queue)) else {
            return false;
        };
        if q.ring.push_response(&rsp).is_err() {
            return false;
        }
        let port = q.port;
        if q.ring.push_responses_and_check_notify() && xen.send(DomId::DOM0, port).is_ok() {
            d.stats.notifications_sent += 1;
        }
        true
    }

    /// Writes `rsp` raw into the response slot of free-running index `idx`
    /// of ring `queue`, leaving `rsp_prod` alone. Returns whether the ring
    /// exists.
    pub fn poke_response(&self, queue: usize, idx: u32, rsp: BlkifResponse) -> bool {
        let d = self.dev.lock();
        match d.conn.as_ref().and_then(|c| c.queues.get(queue)) {
            Some(q) => {
                q.poke_slot(idx, &rsp);
                true
            }
            None => false,
        }
    }

    /// The backend's own response producer of ring `queue`
    /// (`rsp_prod_pvt`), where its next response would go.
    pub fn rsp_prod_pvt(&self, queue: usize) -> Option<u32> {
        let d = self.dev.lock();
        let q = d.conn.as_ref()?.queues.get(queue)?;
        Some(q.ring.rsp_prod_pvt())
    }

    /// Stores `value` into the shared `rsp_prod` of ring `queue`. Returns
    /// whether the ring exists.
    pub fn poke_rsp_prod(&self, queue: usize, value: u32) -> bool {
        let d = self.dev.lock();
        match d
            .conn
            .as_ref()
            .and_then(|c| c.queues.get(queue))
            .and_then(|q| q.shared_u32(RSP_PROD))
        {
            Some(p) => {
                p.store(value, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Sends a notification on ring `queue`'s event channel. Returns
    /// whether it was sent.
    pub fn notify_frontend(&self, xen: &SimXen, queue: usize) -> bool {
        let mut d = self.dev.lock();
        let Some(port) = d
            .conn
            .as_ref()
            .and_then(|c| c.queues.get(queue))
            .map(|q| q.port)
        else {
            return false;
        };
        let sent = xen.send(DomId::DOM0, port).is_ok();
        if sent {
            d.stats.notifications_sent += 1;
        }
        sent
    }

    /// Writes `byte` over every page kept mapped writable (not persistently)
    /// by the `keep_grants_mapped` fault — the data pages of reads already
    /// answered: a backend that goes on writing a page after its response.
    /// A frontend that copied such a page out, instead of failing the read
    /// whose grant it could not end, hands the caller these bytes. Returns
    /// how many pages were written.
    pub fn scribble_kept_grants(&self, byte: u8) -> usize {
        let d = self.dev.lock();
        let Some(c) = &d.conn else {
            return 0;
        };
        let page = [byte; PAGE_SIZE];
        let mut n = 0;
        for q in &c.queues {
            for f in &q.kept {
                if let Frame::Mapped(m) = f {
                    let persistent = m
                        .gref()
                        .and_then(|g| q.persistent.get(&g.0))
                        .is_some_and(|p| std::sync::Arc::ptr_eq(p, m));
                    if m.is_writable() && !persistent && m.write(0, &page).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Requests published by the frontend and not yet taken, over all rings.
    pub fn untaken_requests(&self) -> u32 {
        let d = self.dev.lock();
        d.conn
            .as_ref()
            .map_or(0, |c| c.queues.iter().map(Queue::untaken).sum())
    }
}

#[cfg(test)]
mod tests {
    use crate::blkfront::{Config, DeviceState};
    use crate::sim::blkback::BackendConfig;
    use crate::sim::Testbed;

    #[test]
    fn scribbling_reaches_only_pages_kept_after_a_read_answered() {
        let mut cfg = BackendConfig::blkback();
        cfg.disk_bytes = 1 << 20;
        cfg.persistent = false;
        let tb = Testbed::new([cfg]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let mut d = guest.probe(0, Config::default()).unwrap();
        be.update_faults(|f| {
            f.hold_responses = true;
            f.keep_grants_mapped = true;
        });
        let w = d.submit_write(0, vec![1; 4096]).unwrap();
        let r = d.submit_read(8, vec![2; 8192]).unwrap();
        d.kick();
        tb.xen().run_until_idle();
        assert_eq!(be.scribble_kept_grants(0xee), 0, "nothing answered yet");
        assert!(be.release_held(tb.xen(), 0, |_| {}));
        assert_eq!(
            be.scribble_kept_grants(0xee),
            0,
            "a write's pages are read-only"
        );
        assert!(be.release_held(tb.xen(), 0, |_| {}));
        assert_eq!(be.scribble_kept_grants(0xee), 2, "the read's two pages");
        // The frontend cannot end those grants: the read fails untouched.
        let mut got = Vec::new();
        while let Some(c) = d.poll() {
            got.push((c.token, c.result.is_ok(), c.buf));
        }
        // (The write's pages are kept too: it fails, and breaks the device.)
        assert!(got.iter().any(|(t, ok, _)| *t == w && !*ok));
        let (_, ok, buf) = got.iter().find(|(t, ..)| *t == r).unwrap();
        assert!(!ok && buf.as_deref() == Some(&[2; 8192][..]));
        assert!(matches!(d.state(), DeviceState::Broken(_)));
        d.close().unwrap();
    }
}
