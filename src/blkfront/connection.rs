//! The control plane: finding the backend, the connection protocol, the
//! backend's state while connected, reconnecting, and tearing down.
//!
//! The transitions follow `io/blkif.h`'s state diagram and what Linux
//! blkback does (`drivers/block/xen-blkback/xenbus.c`, `frontend_changed`):
//! the backend answers a frontend Closing with Closing, unmaps rings and
//! grants only when the frontend goes Closed, and answers a frontend
//! Initialising after Closed with InitWait (a reconnect).
//!
//! A connection that fails after the rings were published is torn down in
//! the protocol's order ([`Connection::teardown`]): frontend Closing, then
//! Closed, each time waiting (bounded) for the backend to follow; the ring
//! grants are revoked; the frontend's ring keys are removed; only then are
//! grant references and pages freed. A reference the frontend still
//! advertises is thus never handed to another ring, and a reference the
//! backend still maps stays in quarantine.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::info::{BackendInfo, BackendKind, Endpoints, FlushMethod, Negotiated, SectorsUnit};
use super::io::Limits;
use super::keys::{self, KeyReader};
use super::queue::{indirect_pages, Queue};
use super::stall::{StallCause, StallReport};
use super::units::{SectorSize, WireUnit};
use super::wire::MAX_INDIRECT_SEGMENTS;
use super::{Config, ProbeError, SharedStore};
use crate::abi::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST;
use crate::error::{Feature, XsErrno};
use crate::gnttab::GrantTable;
use crate::hal::{Hal, XsTransport, PAGE_SIZE};
use crate::ring::MAX_RING_ORDER;
use crate::xenbus::{self, XenbusError, XenbusState};
use crate::xenstore::{TxId, XenStore, XsError};
use crate::{Error, Result};

/// The ABI name written to the frontend's `protocol` key.
const PROTOCOL: &str = "x86_64-abi";

/// Most data pages one queue keeps granted persistently: what Linux
/// blkback keeps mapped per ring (`max_persistent_grants`, 1056); pages
/// granted beyond it would be mapped per request by the backend anyway.
const PERSISTENT_MAX: usize = 1056;

/// The share of the free grant references all queues of one disk may keep
/// granted persistently, as a divisor: a quarter, which leaves room for
/// per-request grants and for other disks.
const PERSISTENT_SHARE: usize = 4;

/// The smallest budget worth persistent grants: a whole direct request
/// (11 segments) a few times over. Below it, pages are granted per request.
const PERSISTENT_MIN: usize = 4 * BLKIF_MAX_SEGMENTS_PER_REQUEST;

/// Every key of directory `dir` with its value (one level: sub-directories
/// such as `queue-0` are skipped when they hold no value). A missing
/// directory is empty.
fn snapshot<T: XsTransport>(
    store: &SharedStore<T>,
    dir: &str,
) -> Result<BTreeMap<String, String>, XsError> {
    let mut xs = store.lock();
    let names = match xs.directory(dir) {
        Ok(n) => n,
        Err(XsError::Errno(XsErrno::ENOENT)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = BTreeMap::new();
    for n in names {
        if let Some(v) = xs.read_opt(&format!("{dir}/{n}"))? {
            out.insert(n, v);
        }
    }
    Ok(out)
}

/// Whether `name` is a key of the frontend directory that this protocol's
/// frontend writes when it connects (`talk_to_blkback`'s keys).
fn is_protocol_key(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(
        name,
        "ring-ref"
            | "event-channel"
            | "multi-queue-num-queues"
            | "ring-page-order"
            | "num-ring-pages"
            | "protocol"
            | "feature-persistent"
            | "feature-large-sector-size"
    ) || numbered("ring-ref")
        || numbered("queue-")
}

/// What the backend did while connected, as [`Connection::check`] saw it.
pub(super) enum Change {
    /// Nothing that matters.
    None,
    /// The backend left Connected. `for_good`: its directory is gone, or
    /// the toolstack set `online` to 0 (`xl block-detach`), so it will not
    /// come back.
    Left { for_good: bool },
    /// The backend is in InitWait again: it can be reconnected.
    Back,
    /// The backend is Closed and still online: it comes back (InitWait)
    /// when the frontend asks, by going Initialising.
    Closed,
    /// The backend's directory is gone, or it went offline: it will not
    /// come back.
    Gone,
    /// The backend published a new `sectors` value, meaning this many
    /// bytes.
    Resized(u64),
}

/// The control plane of one disk.
pub(super) struct Connection<'a, H: Hal, T: XsTransport> {
    hal: &'a H,
    gt: &'a GrantTable<'a, H>,
    store: &'a SharedStore<T>,
    cfg: Config,
    ends: Endpoints,
    trusted: bool,
    /// What the backend published and what was negotiated.
    pub(super) info: BackendInfo,
    /// The keys this frontend wrote for the current rings.
    published: Vec<String>,
    /// The token of this disk's watch on the backend's `state`, once set.
    watch: Option<String>,
}

impl<'a, H: Hal, T: XsTransport> Connection<'a, H, T> {
    /// Reads and checks the frontend directory of disk `vdev`: where the
    /// backend is, which domain serves it, whether it is trusted.
    ///
    /// # Errors
    ///
    /// `MissingKey` / `MalformedKey` naming `backend` or `backend-id` (a path
    /// that is not absolute, a reserved domain id, or this domain's own id);
    /// xenstore errors.
    pub(super) fn open(
        hal: &'a H,
        gt: &'a GrantTable<'a, H>,
        store: &'a SharedStore<T>,
        vdev: u32,
        cfg: Config,
    ) -> Result<Self> {
        let mut xs = store.lock();
        let me = xenbus::own_domid(&mut xs).ok();
        let frontend = match me.map(|id| xs.get_domain_path(id)) {
            Some(Ok(home)) => format!("{home}/device/vbd/{vdev}"),
            _ => format!("device/vbd/{vdev}"),
        };
        let other = xenbus::read_otherend_keys(&mut xs, &frontend, "backend", "backend-id")?;
        if Some(other.domid) == me {
            return Err(XenbusError::MalformedKey("backend-id").into());
        }
        let trusted = keys::trusted(xs.read_opt(&format!("{frontend}/trusted"))?.as_deref());
        drop(xs);
        let ends = Endpoints {
            vdev,
            frontend,
            backend: other.path,
            backend_id: other.domid,
        };
        let mut info = BackendInfo::from_keys(&ends, XenbusState::Unknown, BTreeMap::new(), false)?;
        info.negotiated.trusted = trusted;
        // Last, so that nothing above has to give the claim back; the
        // connection's drop does.
        if !store.lock().claim(&ends.frontend) {
            return Err(XenbusError::InUse.into());
        }
        Ok(Connection {
            hal,
            gt,
            store,
            cfg,
            ends,
            trusted,
            info,
            published: Vec::new(),
            watch: None,
        })
    }

    pub(super) fn config(&self) -> &Config {
        &self.cfg
    }

    fn watch_token(&mut self) -> Result<String> {
        if let Some(t) = &self.watch {
            return Ok(t.clone());
        }
        let token = format!("xenblk:{}", self.ends.backend);
        xenbus::watch_state(&mut self.store.lock(), &self.ends.backend, &token)?;
        self.watch = Some(token.clone());
        Ok(token)
    }

    fn unwatch(&mut self) {
        if let Some(t) = self.watch.take() {
            let _ = xenbus::unwatch_state(&mut self.store.lock(), &self.ends.backend, &t);
        }
    }

    /// Waits for the backend to reach `wanted`; a backend that closes
    /// instead, or does not get there in time, yields a stall report.
    fn wait_backend(&mut self, wanted: XenbusState) -> core::result::Result<(), ProbeError> {
        let token = self.watch_token()?;
        let deadline = self
            .hal
            .now_ns()
            .saturating_add(self.cfg.connect_timeout_ns);
        let r = xenbus::wait_for_state(
            &mut self.store.lock(),
            &self.ends.backend,
            &token,
            wanted,
            deadline,
        );
        match r {
            Ok(_) => Ok(()),
            Err(e @ XenbusError::UnexpectedState(s)) => Err(self.stall(wanted, Some(s), e)),
            Err(e @ XenbusError::StateTimeout { seen, .. }) => {
                let seen = self.backend_state().ok().flatten().or(Some(seen));
                Err(self.stall(wanted, seen, e))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The backend's state; `None` when its directory or key is gone.
    fn backend_state(&self) -> Result<Option<XenbusState>, XenbusError> {
        let v = self
            .store
            .lock()
            .read_opt(&format!("{}/state", self.ends.backend))?;
        v.map(|v| keys::parse_state(&v)).transpose()
    }

    fn stall(
        &self,
        wanted: XenbusState,
        seen: Option<XenbusState>,
        error: XenbusError,
    ) -> ProbeError {
        let raw = snapshot(self.store, &self.ends.backend).unwrap_or_default();
        let seen = if raw.is_empty() { None } else { seen };
        let report = StallReport::new(self.ends.vdev, &self.ends.backend, wanted, seen, raw);
        let error = match error {
            XenbusError::StateTimeout { .. } => report.error(),
            e => e,
        };
        ProbeError {
            error: error.into(),
            stall: Some(report),
            vdev: Some(self.ends.vdev),
        }
    }

    /// Runs the connection protocol from the backend's InitWait to
    /// Connected and returns the rings and what was negotiated. On failure
    /// everything taken is given back, in the protocol's order.
    pub(super) fn connect(
        &mut self,
    ) -> core::result::Result<(Vec<Queue<'a, H>>, Limits), ProbeError> {
        let queues = match self.prepare() {
            Ok(q) => q,
            Err(e) => {
                // Nothing was published: leave the frontend Closed, so that
                // a backend that went Closing meanwhile can finish closing
                // and a later probe starts from a known state.
                let _ = self.switch(XenbusState::Closed);
                self.unwatch();
                // What an earlier teardown left in quarantine may be free
                // by now.
                self.gt.retry_quarantine();
                return Err(e);
            }
        };
        let (mut queues, order, large_sectors) = queues;
        match self.publish_and_connect(&mut queues, order, large_sectors) {
            Ok(limits) => Ok((queues, limits)),
            Err(e) => {
                let _ = self.teardown(queues);
                Err(e)
            }
        }
    }

    /// The part of connecting before anything is published: the frontend
    /// back to Initialising, the backend's InitWait, the rings. Returns them
    /// with their order, and whether the backend gets
    /// `feature-large-sector-size`.
    fn prepare(&mut self) -> core::result::Result<(Vec<Queue<'a, H>>, u32, bool), ProbeError> {
        self.reset_frontend()?;
        self.wait_backend(XenbusState::InitWait)?;
        let raw = snapshot(self.store, &self.ends.backend)?;
        let offered = KeyReader::new(&raw).offered();
        let kind = BackendKind::classify(&self.ends.backend, raw.get("type").map(String::as_str));
        let cfg = self.cfg;
        let order = offered
            .max_ring_page_order
            .min(cfg.max_ring_page_order)
            .min(MAX_RING_ORDER);
        let nq = offered.max_queues.min(cfg.max_queues).max(1);
        let mut queues = Vec::new();
        for _ in 0..nq {
            // On error, the queues made so far drop: nothing was published.
            queues.push(Queue::new(
                self.hal,
                self.gt,
                self.ends.backend_id,
                order,
                self.ends.vdev,
            )?);
        }
        Ok((queues, order, keys::wants_large_sector_flag(kind)))
    }

    /// Brings a frontend that an earlier life left in another state (a
    /// connection torn down, a driver dropped without closing, a rebooted
    /// guest) back to Initialising the way Linux's `xenbus_reset_state`
    /// does: Closing, then Closed, each waited for (bounded) so that the
    /// backend lets go of old rings, then Initialising, which blkback and
    /// qdisk answer with InitWait. Also removes ring keys such a life may
    /// have left.
    fn reset_frontend(&mut self) -> Result<()> {
        let fe = xenbus::read_state(&mut self.store.lock(), &self.ends.frontend)?;
        // A backend already closing or closed waits for the frontend to be
        // Closed before it answers Initialising with InitWait.
        let be_closed = matches!(
            self.backend_state()?,
            Some(XenbusState::Closing | XenbusState::Closed)
        );
        match fe {
            XenbusState::Unknown | XenbusState::Initialising if !be_closed => return Ok(()),
            XenbusState::Unknown | XenbusState::Initialising | XenbusState::Closed => {}
            _ => {
                self.switch(XenbusState::Closing)?;
                self.wait_backend_until(|s| s >= XenbusState::Closing);
            }
        }
        self.switch(XenbusState::Closed)?;
        self.wait_backend_until(|s| matches!(s, XenbusState::Closed | XenbusState::InitWait));
        self.remove_stale_keys()?;
        Ok(self.switch(XenbusState::Initialising)?)
    }

    fn publish_and_connect(
        &mut self,
        queues: &mut [Queue<'a, H>],
        order: u32,
        large_sectors: bool,
    ) -> core::result::Result<Limits, ProbeError> {
        // A queue using persistent grants keeps at most `budget` data pages
        // granted, and its parts are cut to fit it: the backend keeps every
        // grant it is given mapped, so the budget is all it ever holds.
        let free = self.gt.capacity().saturating_sub(self.gt.in_use());
        let nq = queues.len().max(1);
        let budget = (free / (PERSISTENT_SHARE * nq))
            .min(PERSISTENT_MAX)
            .min(self.cfg.max_kept_pages / nq);
        // Like Linux's blkfront: offer persistent grants now, decide at
        // Connected (real blkback publishes `feature-persistent` only then).
        // Not offered when the budget would be too small to be worth it:
        // once offered, blkback uses them on the offer alone.
        let advertise_persistent =
            self.cfg.persistent_grants && self.trusted && budget >= PERSISTENT_MIN;
        self.publish(queues, order, advertise_persistent, large_sectors)?;
        self.switch(XenbusState::Initialised)?;
        let mut counts_512 = false;
        match self.wait_backend(XenbusState::Connected) {
            Ok(()) => {}
            Err(e)
                if large_sectors
                    && e.stall.as_ref().map(|r| r.cause) == Some(StallCause::QdiskSectorSize) =>
            {
                // A qdisk that follows blkif.h's 2024 rule counts in 512-byte
                // units and refuses the flag: once more without it (QEMU
                // tries to connect again on any write of the frontend's
                // state), and if that works, count in 512-byte units.
                log::warn!(
                    "xenblk {}: qdisk did not connect with feature-large-sector-size; trying \
                     without it",
                    self.ends.vdev
                );
                let key = format!("{}/feature-large-sector-size", self.ends.frontend);
                match self.store.lock().rm(&key) {
                    Ok(()) | Err(XsError::Errno(XsErrno::ENOENT)) => {}
                    Err(e) => return Err(e.into()),
                }
                self.switch(XenbusState::Initialised)?;
                self.wait_backend(XenbusState::Connected)?;
                counts_512 = true;
            }
            Err(e) => return Err(e),
        }
        let raw = snapshot(self.store, &self.ends.backend)?;
        let mut info = BackendInfo::from_keys(&self.ends, XenbusState::Connected, raw, true)?;
        if counts_512 {
            let ss = SectorSize::new(info.sector_size)
                .ok_or(XenbusError::MalformedKey("sector-size"))?;
            let sectors = info.sectors_raw.ok_or(XenbusError::MissingKey("sectors"))?;
            info.capacity_bytes = keys::capacity_bytes(sectors, SectorsUnit::Bytes512, ss)?;
            info.sectors_unit = SectorsUnit::Bytes512;
        }
        let sector_size =
            SectorSize::new(info.sector_size).ok_or(XenbusError::MalformedKey("sector-size"))?;
        let persistent = advertise_persistent
            && keys::persistent_in_use(info.raw.get("feature-persistent").map(String::as_str));
        for q in queues.iter_mut() {
            if persistent {
                q.use_persistent_grants(budget);
            } else {
                q.keep_idle_private(self.cfg.max_kept_pages / nq);
            }
        }
        let indirect = info
            .offered
            .max_indirect_segments
            .min(self.cfg.max_indirect_segments)
            .min(MAX_INDIRECT_SEGMENTS as u32);
        let indirect = if indirect as usize > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            indirect
        } else {
            0
        };
        let mut flush = if info.offered.flush_cache {
            Some(FlushMethod::FlushCache)
        } else if info.offered.barrier {
            Some(FlushMethod::Barrier)
        } else {
            None
        };
        let mut discard = info.offered.discard;
        // What was learnt at run time stays learnt across reconnects.
        info.disabled = core::mem::take(&mut self.info.disabled);
        for (feat, _) in &info.disabled {
            match feat {
                Feature::FlushCache | Feature::Barrier => flush = None,
                Feature::Discard | Feature::SecureDiscard => discard = None,
                Feature::Persistent | Feature::Indirect => {}
            }
        }
        info.negotiated = Negotiated {
            ring_page_order: order,
            ring_slots: queues.first().map_or(0, |q| q.size() as u32),
            queues: queues.len() as u32,
            indirect_segments: indirect,
            persistent,
            flush,
            discard: discard.is_some(),
            trusted: self.trusted,
        };
        let mut segs = match indirect as usize {
            0 => BLKIF_MAX_SEGMENTS_PER_REQUEST,
            n => n,
        };
        while persistent && segs + indirect_pages(segs) > budget {
            segs -= 1;
        }
        let wire_unit = match info.sectors_unit {
            SectorsUnit::Bytes512 => WireUnit::BYTES_512,
            SectorsUnit::LogicalBlocks => WireUnit::logical(sector_size),
        };
        for q in queues.iter_mut() {
            q.set_wire_unit(wire_unit);
            if advertise_persistent {
                q.offered_persistent_grants();
            }
        }
        let limits = Limits {
            handle: self.ends.vdev as u16,
            wire_unit,
            sector_size,
            sectors: info.logical_sectors(),
            read_only: info.read_only(),
            part_bytes: segs * PAGE_SIZE,
            indirect_segments: indirect as usize,
            flush,
            discard,
        };
        self.switch(XenbusState::Connected)?;
        self.info = info;
        log::info!(
            "xenblk {}: connected ({} queue{}, ring order {order})",
            self.ends.vdev,
            queues.len(),
            if queues.len() == 1 { "" } else { "s" }
        );
        Ok(limits)
    }

    /// The frontend keys of `talk_to_blkback`, written in one transaction.
    fn publish(
        &mut self,
        queues: &[Queue<'a, H>],
        order: u32,
        persistent: bool,
        large_sectors: bool,
    ) -> Result<(), XsError> {
        let fe = &self.ends.frontend;
        let mut kv: Vec<(String, String)> = Vec::new();
        if order > 0 {
            kv.push((format!("{fe}/ring-page-order"), format!("{order}")));
            kv.push((format!("{fe}/num-ring-pages"), format!("{}", 1u32 << order)));
        }
        let ring_keys = |dir: &str, q: &Queue<'a, H>, kv: &mut Vec<(String, String)>| {
            match q.ring_grefs() {
                [g] if order == 0 => kv.push((format!("{dir}/ring-ref"), format!("{}", g.0))),
                grefs => {
                    for (i, g) in grefs.iter().enumerate() {
                        kv.push((format!("{dir}/ring-ref{i}"), format!("{}", g.0)));
                    }
                }
            }
            kv.push((format!("{dir}/event-channel"), format!("{}", q.port().0)));
        };
        if let [q] = queues {
            ring_keys(fe, q, &mut kv);
        } else {
            kv.push((
                format!("{fe}/multi-queue-num-queues"),
                format!("{}", queues.len()),
            ));
            for (i, q) in queues.iter().enumerate() {
                ring_keys(&format!("{fe}/queue-{i}"), q, &mut kv);
            }
        }
        kv.push((format!("{fe}/protocol"), PROTOCOL.into()));
        kv.push((
            format!("{fe}/feature-persistent"),
            if persistent { "1" } else { "0" }.into(),
        ));
        if large_sectors {
            kv.push((format!("{fe}/feature-large-sector-size"), "1".into()));
        }
        // Remembered before writing: a failed transaction may have written
        // nothing, and removing a missing key is harmless.
        self.published = kv.iter().map(|(k, _)| k.clone()).collect();
        self.published.extend(
            (0..queues.len())
                .filter(|_| queues.len() > 1)
                .map(|i| format!("{fe}/queue-{i}")),
        );
        self.store
            .lock()
            .transaction(self.cfg.transaction_retries, |xs, tx| {
                for (k, v) in &kv {
                    xs.write_tx(tx, k, v)?;
                }
                Ok(())
            })
    }

    /// Removes the keys [`publish`](Self::publish) wrote: in one
    /// transaction, or, when xenstore keeps refusing to commit it, one key
    /// at a time outside any transaction (which `EAGAIN` cannot refuse).
    ///
    /// # Errors
    ///
    /// The error of the last removal that failed: some key may still be
    /// there.
    fn unpublish(&mut self) -> Result<(), XsError> {
        let keys = core::mem::take(&mut self.published);
        if keys.is_empty() {
            return Ok(());
        }
        let rm_all = |xs: &mut XenStore<T>, tx: Option<TxId>| {
            let mut r = Ok(());
            for k in &keys {
                let one = match tx {
                    Some(tx) => xs.rm_tx(tx, k),
                    None => xs.rm(k),
                };
                match one {
                    Ok(()) | Err(XsError::Errno(XsErrno::ENOENT)) => {}
                    Err(e) if tx.is_some() => return Err(e),
                    Err(e) => r = Err(e),
                }
            }
            r
        };
        let mut xs = self.store.lock();
        match xs.transaction(self.cfg.transaction_retries, |xs, tx| rm_all(xs, Some(tx))) {
            Ok(()) => Ok(()),
            Err(e) => {
                log::warn!(
                    "xenblk {}: removing the ring keys in a transaction failed ({e}); \
                     removing them one by one",
                    self.ends.vdev
                );
                rm_all(&mut xs, None)
            }
        }
    }

    /// Removes the keys a frontend of this protocol writes (ring references,
    /// event channels, queues, the negotiated values) that an earlier life
    /// left in the frontend directory, so that the backend never reads a
    /// stale one beside the new ones.
    fn remove_stale_keys(&mut self) -> Result<(), XsError> {
        let fe = self.ends.frontend.clone();
        let names = match self.store.lock().directory(&fe) {
            Ok(n) => n,
            Err(XsError::Errno(XsErrno::ENOENT)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let stale: Vec<String> = names
            .into_iter()
            .filter(|n| is_protocol_key(n))
            .map(|n| format!("{fe}/{n}"))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        self.published = stale;
        self.unpublish()
    }

    /// Moves the frontend to `s`; a directory the toolstack removed is not
    /// recreated.
    fn switch(&self, s: XenbusState) -> Result<(), XenbusError> {
        xenbus::switch_state(&mut self.store.lock(), &self.ends.frontend, s)
    }

    /// Waits, bounded by the close timeout, until the backend's state
    /// satisfies `ok` (or its directory is gone).
    fn wait_backend_until(&mut self, ok: impl Fn(XenbusState) -> bool) {
        let Ok(token) = self.watch_token() else {
            return;
        };
        let deadline = self.hal.now_ns().saturating_add(self.cfg.close_timeout_ns);
        let _ = xenbus::wait_state_until(
            &mut self.store.lock(),
            &self.ends.backend,
            &token,
            deadline,
            |s| s == XenbusState::Unknown || ok(s),
        );
    }

    /// Gives back `queues` in the protocol's order: frontend Closing (the
    /// backend stops using the rings), Closed (it unmaps them), revoke the
    /// ring grants, remove the frontend's ring keys, then free references
    /// and pages (or quarantine what the backend still maps).
    ///
    /// # Errors
    ///
    /// The first xenstore error of the state switches or the key removal;
    /// everything is given back anyway. A frontend directory that is gone
    /// is no error.
    pub(super) fn teardown(&mut self, mut queues: Vec<Queue<'a, H>>) -> Result<()> {
        let gone = |r: Result<(), XenbusError>| match r {
            Err(XenbusError::NoDevice) => Ok(()),
            r => r.map_err(Error::from),
        };
        let r1 = gone(self.switch(XenbusState::Closing));
        self.wait_backend_until(|s| s >= XenbusState::Closing);
        let r2 = gone(self.switch(XenbusState::Closed));
        self.wait_backend_until(|s| matches!(s, XenbusState::Closed | XenbusState::InitWait));
        for q in &mut queues {
            if let Err(e) = q.revoke_ring() {
                log::warn!(
                    "xenblk {}: ring still mapped at teardown: {e}",
                    self.ends.vdev
                );
            }
        }
        let r3 = self.unpublish();
        if r3.is_err() {
            // A key may still name the ring's grant references: they are
            // never handed out again (to another disk's ring, say).
            for q in &mut queues {
                q.keep_ring_refs();
            }
        }
        drop(queues);
        self.unwatch();
        self.gt.retry_quarantine();
        r1.and(r2).and(r3.map_err(Error::from))
    }

    /// Looks at the backend's state (and, while connected, its size).
    ///
    /// # Errors
    ///
    /// xenstore errors; `MalformedKey` for a `state` or `sectors` value
    /// that does not parse (nothing changes then).
    pub(super) fn check(&mut self, connected: bool) -> Result<Change> {
        let s = match self.backend_state() {
            Ok(s) => s.unwrap_or(XenbusState::Unknown),
            // The directory is gone (`xl block-detach -f`): reading under it
            // is ENOENT, or EACCES where the nearest node left is one the
            // guest may not read. Either way the backend left.
            Err(XenbusError::Store(XsError::Errno(XsErrno::ENOENT | XsErrno::EACCES))) => {
                XenbusState::Unknown
            }
            Err(e) => return Err(e.into()),
        };
        if connected && s == XenbusState::Connected {
            return self.check_size();
        }
        // Only a toolstack that takes the device away writes `online` 0
        // (libxl's device removal); any other value, or none, leaves the
        // door open, and waiting for a backend that never returns is
        // bounded by the caller.
        let offline = s == XenbusState::Unknown
            || matches!(
                self.store
                    .lock()
                    .read_opt(&format!("{}/online", self.ends.backend)),
                Ok(Some(v)) if v.trim() == "0"
            );
        self.info.state = s;
        if connected {
            log::warn!(
                "xenblk {}: backend left Connected ({s}{})",
                self.ends.vdev,
                if offline { ", going away" } else { "" }
            );
            return Ok(Change::Left { for_good: offline });
        }
        Ok(match s {
            _ if offline => Change::Gone,
            XenbusState::InitWait => Change::Back,
            XenbusState::Closed => Change::Closed,
            _ => Change::None,
        })
    }

    /// A new `sectors` value of a connected backend.
    fn check_size(&mut self) -> Result<Change> {
        let Some(v) = self
            .store
            .lock()
            .read_opt(&format!("{}/sectors", self.ends.backend))?
        else {
            return Ok(Change::None);
        };
        let raw = keys::parse_sectors(&v)?;
        if Some(raw) == self.info.sectors_raw {
            return Ok(Change::None);
        }
        let ss = SectorSize::new(self.info.sector_size)
            .ok_or(XenbusError::MalformedKey("sector-size"))?;
        let bytes = keys::capacity_bytes(raw, self.info.sectors_unit, ss)?;
        self.info.sectors_raw = Some(raw);
        self.info.capacity_bytes = bytes;
        self.info.raw.insert("sectors".into(), v);
        Ok(Change::Resized(bytes))
    }

    /// Whether the backend's state may have changed since the last look: an
    /// event of this disk's watch arrived. Never blocks; costs a look at the
    /// xenstore ring.
    pub(super) fn backend_moved(&mut self) -> bool {
        let Some(token) = self.watch.as_deref() else {
            return false;
        };
        let mut xs = self.store.lock();
        let mut moved = false;
        while let Ok(Some(_)) = xs.take_watch_event_for(token) {
            moved = true;
        }
        moved
    }

    /// Watches the backend's state again after a teardown (which stops
    /// watching), so that a disconnected device learns when it returns.
    ///
    /// # Errors
    ///
    /// xenstore errors.
    pub(super) fn keep_watching(&mut self) -> Result<()> {
        self.watch_token().map(drop)
    }

    /// Asks a closed backend to come back (frontend Initialising).
    ///
    /// # Errors
    ///
    /// xenstore errors.
    pub(super) fn request_reconnect(&self) -> Result<(), XenbusError> {
        self.switch(XenbusState::Initialising)
    }

    /// Records features the backend refused at run time.
    pub(super) fn turned_off(&mut self, feats: &[Feature]) {
        let n = &mut self.info.negotiated;
        for &f in feats {
            match f {
                Feature::FlushCache | Feature::Barrier => n.flush = None,
                Feature::Discard | Feature::SecureDiscard => n.discard = false,
                Feature::Persistent | Feature::Indirect => {}
            }
            self.info.disabled.push((f, "backend answered EOPNOTSUPP"));
        }
    }
}

impl<H: Hal, T: XsTransport> Connection<'_, H, T> {
    /// Gives up this driver's claim on the device (at close; dropping the
    /// connection does it too).
    pub(super) fn release(&mut self) {
        self.unwatch();
        self.store.lock().release(&self.ends.frontend);
    }
}

impl<H: Hal, T: XsTransport> Drop for Connection<'_, H, T> {
    fn drop(&mut self) {
        self.release();
    }
}
