//! The PV console: the `xencons_interface` ring of `io/console.h`, which
//! xenconsoled in dom0 drains into `/var/log/xen/console/guest-<name>.log`
//! and `xl console` shows.
//!
//! Only the output half is used. We produce into `out` and advance
//! `out_prod`; xenconsoled consumes and advances `out_cons`, then notifies
//! the console event channel. Indices are free-running `u32`s, masked by the
//! ring size (2048). A console nobody drains must not hang the unikernel: a
//! write waits at most [`WRITE_PATIENCE_NS`] for room, then drops the rest
//! and stops waiting until xenconsoled makes room again.

use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

use super::Xen;
use crate::abi::shared_info::{XenconsInterface, XENCONS_OUT_SIZE as OUT_SIZE};
use crate::hal::{Hal, Port};

/// The output ring's size as a ring index.
const XENCONS_OUT_SIZE: u32 = OUT_SIZE as u32;

/// How long one write waits for xenconsoled to make room.
pub const WRITE_PATIENCE_NS: u64 = 1_000_000_000;

/// Longest single `SCHEDOP_poll` while waiting for the console.
const POLL_SLICE_NS: u64 = 10_000_000;

/// The console page and its port, from `HVM_PARAM_CONSOLE_*`.
#[derive(Debug)]
pub(super) struct ConsoleRing {
    ring: NonNull<XenconsInterface>,
    port: Port,
    /// Set after a write gave up on a full ring: later writes drop bytes
    /// that do not fit instead of waiting again.
    stalled: spin::Mutex<bool>,
}

impl ConsoleRing {
    /// Wraps the console page (identity-mapped, shared with xenconsoled).
    pub(super) fn new(ring: NonNull<XenconsInterface>, port: Port) -> ConsoleRing {
        ConsoleRing {
            ring,
            port,
            stalled: spin::Mutex::new(false),
        }
    }

    fn out_cons(&self) -> &AtomicU32 {
        // SAFETY: the page lives for the whole run; the index is atomic.
        unsafe { &*addr_of!((*self.ring.as_ptr()).out_cons) }
    }

    fn out_prod(&self) -> &AtomicU32 {
        // SAFETY: as in `out_cons`.
        unsafe { &*addr_of!((*self.ring.as_ptr()).out_prod) }
    }

    /// Copies as much of `bytes` as fits; returns the count, or `None` when
    /// the indices are corrupt (more in flight than the ring holds).
    fn produce(&self, bytes: &[u8]) -> Option<usize> {
        let cons = self.out_cons().load(Ordering::Acquire);
        let prod = self.out_prod().load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons);
        if used > XENCONS_OUT_SIZE {
            return None;
        }
        let n = bytes.len().min((XENCONS_OUT_SIZE - used) as usize);
        // SAFETY: the page is valid; we only form a raw pointer to `out`.
        let out = unsafe { addr_of_mut!((*self.ring.as_ptr()).out) }.cast::<u8>();
        for (i, &b) in bytes[..n].iter().enumerate() {
            let slot = prod.wrapping_add(i as u32) % XENCONS_OUT_SIZE;
            // SAFETY: `slot < XENCONS_OUT_SIZE`, inside `out`; xenconsoled
            // does not read past `out_prod`, which we publish below.
            unsafe { out.add(slot as usize).write_volatile(b) };
        }
        // `io/console.h`: the data must be visible before the producer index.
        self.out_prod()
            .store(prod.wrapping_add(n as u32), Ordering::Release);
        Some(n)
    }
}

impl Xen {
    /// Writes `bytes` to the PV console and notifies xenconsoled. Returns
    /// `false` when there is no console, or when it is in use further up the
    /// stack (a panic while writing): the caller then relies on port `0xe9`.
    pub fn console_write(&self, bytes: &[u8]) -> bool {
        let Some(c) = &self.console else {
            return false;
        };
        // One vCPU, no interrupts: a held lock means re-entry from a panic.
        let Some(mut stalled) = c.stalled.try_lock() else {
            return false;
        };
        let mut rest = bytes;
        let mut deadline = None;
        while !rest.is_empty() {
            let Some(n) = c.produce(rest) else {
                *stalled = true;
                break;
            };
            rest = &rest[n..];
            if n > 0 {
                *stalled = false;
                continue;
            }
            // Full: let xenconsoled run, then wait for it to make room.
            let _ = self.evtchn_notify(c.port);
            if *stalled {
                break;
            }
            let now = self.now_ns();
            let end = *deadline.get_or_insert(now.saturating_add(WRITE_PATIENCE_NS));
            if now >= end {
                *stalled = true;
                break;
            }
            self.evtchn_consume(c.port);
            if self.console_room(c) == 0 {
                let _ = self.evtchn_wait(&[c.port], Some(end.min(now + POLL_SLICE_NS)));
            }
        }
        let _ = self.evtchn_notify(c.port);
        true
    }

    fn console_room(&self, c: &ConsoleRing) -> u32 {
        let used = c
            .out_prod()
            .load(Ordering::Relaxed)
            .wrapping_sub(c.out_cons().load(Ordering::Acquire));
        XENCONS_OUT_SIZE.saturating_sub(used)
    }

    /// Waits (at most `timeout_ns`) until xenconsoled has consumed
    /// everything written, so that a shutdown right after loses nothing.
    pub fn console_flush(&self, timeout_ns: u64) {
        let Some(c) = &self.console else {
            return;
        };
        let end = self.now_ns().saturating_add(timeout_ns);
        loop {
            if self.console_room(c) == XENCONS_OUT_SIZE {
                return;
            }
            let now = self.now_ns();
            if now >= end {
                return;
            }
            let _ = self.evtchn_notify(c.port);
            self.evtchn_consume(c.port);
            if self.console_room(c) == XENCONS_OUT_SIZE {
                return;
            }
            let _ = self.evtchn_wait(&[c.port], Some(end.min(now + POLL_SLICE_NS)));
        }
    }
}
