//! Connecting, reacting to the backend's state, reconnecting and closing.
//!
//! The transitions follow `io/blkif.h`'s state diagram and what Linux
//! blkback really does (`drivers/block/xen-blkback/xenbus.c`,
//! `frontend_changed`): the backend answers a frontend Closing with Closing,
//! unmaps rings and grants only when the frontend goes Closed, and answers a
//! frontend Initialising after Closed with InitWait (a reconnect).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::info::{parse_offered, BackendInfo, FlushMethod, StallReport};
use super::queue::{BlkRing, Queue};
use super::wire::MAX_INDIRECT_SEGMENTS;
use super::{BackendEvent, BlockFront, Config, DeviceState, ProbeError, SharedStore};
use crate::abi::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST;
use crate::error::XsErrno;
use crate::gnttab::GrantTable;
use crate::hal::{DomId, Hal, XsTransport};
use crate::ring::{FrontRing, MAX_RING_ORDER};
use crate::xenbus::XenbusState;
use crate::{Error, Result};

/// The ABI name written to the frontend's `protocol` key.
const PROTOCOL: &str = "x86_64-abi";

fn frontend_path(vdev: u32) -> String {
    format!("device/vbd/{vdev}")
}

fn read_opt<T: XsTransport>(store: &SharedStore<T>, path: &str) -> Result<Option<String>> {
    store.lock().read_opt(path)
}

fn write<T: XsTransport>(store: &SharedStore<T>, path: &str, value: &str) -> Result<()> {
    store.lock().write(path, value)
}

/// Reads a `state` key; `None` when it (or its directory) is missing. A
/// value that is not a state is an error naming the key.
fn read_state<T: XsTransport>(store: &SharedStore<T>, path: &str) -> Result<Option<XenbusState>> {
    match read_opt(store, &format!("{path}/state"))? {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(XenbusState::from_u32)
            .map(Some)
            .ok_or(Error::MalformedKey("state")),
    }
}

fn switch_state<T: XsTransport>(store: &SharedStore<T>, fe: &str, s: XenbusState) -> Result<()> {
    write(store, &format!("{fe}/state"), s.as_str())
}

/// Every key of a directory with its value (one level: sub-directories
/// such as `queue-0` are skipped when they hold no value).
fn snapshot<T: XsTransport>(store: &SharedStore<T>, dir: &str) -> Result<BTreeMap<String, String>> {
    let mut xs = store.lock();
    let names = match xs.directory(dir) {
        Ok(n) => n,
        Err(Error::XenStore(XsErrno::ENOENT)) => return Ok(BTreeMap::new()),
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

/// Waits until the state under `path` satisfies `ok`, or `deadline`.
/// Returns `Err(last seen)` at the deadline.
fn wait_state<H: Hal, T: XsTransport>(
    hal: &H,
    store: &SharedStore<T>,
    path: &str,
    deadline: u64,
    ok: impl Fn(XenbusState) -> bool,
) -> Result<core::result::Result<XenbusState, Option<XenbusState>>> {
    let token = format!("xenblk:{path}");
    let watch_path = format!("{path}/state");
    let watching = store.lock().watch(&watch_path, &token).is_ok();
    let r = loop {
        let s = read_state(store, path)?;
        if let Some(s) = s.filter(|s| ok(*s)) {
            break Ok(s);
        }
        let now = hal.now_ns();
        if now >= deadline {
            break Err(s);
        }
        if watching {
            match store.lock().wait_watch_event_for(&token, deadline) {
                Ok(_) | Err(Error::Timeout) => {}
                Err(e) => return Err(e),
            }
        } else {
            // No watch (xenstored refused it): poll at a modest pace.
            let _ = hal.evtchn_wait(&[], Some(now.saturating_add(5_000_000).min(deadline)));
        }
    };
    if watching {
        let _ = store.lock().unwatch(&watch_path, &token);
    }
    Ok(r)
}

fn stall<T: XsTransport>(
    store: &SharedStore<T>,
    vdev: u32,
    be: &str,
    wanted: XenbusState,
    seen: Option<XenbusState>,
) -> ProbeError {
    let raw = snapshot(store, be).unwrap_or_default();
    let report = StallReport::new(vdev, be, wanted, seen, raw);
    ProbeError {
        error: report.error(),
        stall: Some(report),
    }
}

/// Rings and ports of a connection, before `BlockFront` exists.
struct Transport {
    queues: Vec<Queue>,
    order: u32,
}

/// Gives back what the queues hold; returns the pages that had to be
/// leaked because the backend still maps them.
fn release<H: Hal>(hal: &H, gt: &GrantTable<'_, H>, queues: &mut Vec<Queue>) -> usize {
    let mut leaked = 0;
    for mut q in queues.drain(..) {
        q.drain_pool(hal, gt);
        let _ = hal.evtchn_close(q.port);
        let mut all_revoked = true;
        for g in q.ring_grefs.drain(..) {
            if gt.end_access_and_free(g).is_err() {
                all_revoked = false;
            }
        }
        if let Some(p) = q.ring_pages.take() {
            if all_revoked {
                // SAFETY: every grant of the ring pages was revoked and the
                // ring (which pointed into them) is dropped with `q`.
                unsafe { hal.free_pages(p) };
            } else {
                log::warn!("ring pages still mapped by the backend: leaked, never reused");
                // `Pages` has no destructor: letting the token go leaks the
                // memory on purpose, so it can never be handed out again.
                leaked += p.count();
            }
        }
        for (g, p) in q.quarantine.drain(..) {
            if gt.end_access_and_free(g).is_ok() {
                // SAFETY: the grant is revoked; nobody else refers to the page.
                unsafe { hal.free_pages(p) };
            } else {
                // `Pages` has no destructor: letting the token go leaks the
                // memory on purpose, so it can never be handed out again.
                leaked += p.count();
            }
        }
    }
    leaked
}

fn setup_queues<H: Hal>(
    hal: &H,
    gt: &GrantTable<'_, H>,
    backend: DomId,
    nq: u32,
    order: u32,
    persistent: bool,
) -> Result<Transport> {
    let mut queues = Vec::new();
    for _ in 0..nq {
        match setup_queue(hal, gt, backend, order, persistent) {
            Ok(q) => queues.push(q),
            Err(e) => {
                let _ = release(hal, gt, &mut queues);
                return Err(e);
            }
        }
    }
    Ok(Transport { queues, order })
}

fn setup_queue<H: Hal>(
    hal: &H,
    gt: &GrantTable<'_, H>,
    backend: DomId,
    order: u32,
    persistent: bool,
) -> Result<Queue> {
    let pages = hal.alloc_pages(1 << order)?;
    // SAFETY: `pages` is zeroed, page-aligned memory of 1 << order pages that
    // this queue owns until `release`, which drops the ring before freeing.
    let ring: BlkRing = match unsafe { FrontRing::init(pages.as_non_null(), order) } {
        Ok(r) => r,
        Err(e) => {
            // SAFETY: nothing was granted or shared yet.
            unsafe { hal.free_pages(pages) };
            return Err(e);
        }
    };
    let mut grefs = Vec::new();
    for i in 0..pages.count() {
        let gfn = pages.page_gfn(i).ok_or(Error::OutOfMemory)?;
        match gt.grant_access(backend, gfn, false) {
            Ok(g) => grefs.push(g),
            Err(e) => {
                for g in grefs {
                    let _ = gt.end_access_and_free(g);
                }
                // SAFETY: every grant made above was revoked; the backend has
                // not been told about them.
                unsafe { hal.free_pages(pages) };
                return Err(e);
            }
        }
    }
    let port = match hal.evtchn_alloc_unbound(backend) {
        Ok(p) => p,
        Err(e) => {
            for g in grefs {
                let _ = gt.end_access_and_free(g);
            }
            // SAFETY: as above.
            unsafe { hal.free_pages(pages) };
            return Err(e);
        }
    };
    Ok(Queue::new(ring, pages, grefs, port, persistent, backend))
}

/// Writes the ring keys of one queue under `dir` (`ring-ref` or
/// `ring-ref%u`, `event-channel`).
fn ring_keys(dir: &str, q: &Queue, order: u32, out: &mut Vec<(String, String)>) {
    if order == 0 {
        out.push((format!("{dir}/ring-ref"), format!("{}", q.ring_grefs[0].0)));
    } else {
        for (i, g) in q.ring_grefs.iter().enumerate() {
            out.push((format!("{dir}/ring-ref{i}"), format!("{}", g.0)));
        }
    }
    out.push((format!("{dir}/event-channel"), format!("{}", q.port.0)));
}

/// The frontend keys of `talk_to_blkback`, written in one transaction.
fn publish<T: XsTransport>(
    store: &SharedStore<T>,
    fe: &str,
    t: &Transport,
    persistent: bool,
    retries: u32,
) -> Result<()> {
    let mut kv: Vec<(String, String)> = Vec::new();
    if t.order > 0 {
        kv.push((format!("{fe}/ring-page-order"), format!("{}", t.order)));
        kv.push((
            format!("{fe}/num-ring-pages"),
            format!("{}", 1u32 << t.order),
        ));
    }
    if t.queues.len() == 1 {
        ring_keys(fe, &t.queues[0], t.order, &mut kv);
    } else {
        kv.push((
            format!("{fe}/multi-queue-num-queues"),
            format!("{}", t.queues.len()),
        ));
        for (i, q) in t.queues.iter().enumerate() {
            ring_keys(&format!("{fe}/queue-{i}"), q, t.order, &mut kv);
        }
    }
    kv.push((format!("{fe}/protocol"), PROTOCOL.into()));
    kv.push((
        format!("{fe}/feature-persistent"),
        if persistent { "1" } else { "0" }.into(),
    ));
    store.lock().transaction(retries, |xs, tx| {
        for (k, v) in &kv {
            xs.write_tx(tx, k, v)?;
        }
        Ok(())
    })
}

pub(super) fn probe<'a, H: Hal, T: XsTransport>(
    hal: &'a H,
    gt: &'a GrantTable<'a, H>,
    store: &'a SharedStore<T>,
    vdev: u32,
    cfg: Config,
) -> core::result::Result<BlockFront<'a, H, T>, ProbeError> {
    let fe = frontend_path(vdev);
    let be = read_opt(store, &format!("{fe}/backend"))?.ok_or(Error::MissingKey("backend"))?;
    let be_id = read_opt(store, &format!("{fe}/backend-id"))?
        .ok_or(Error::MissingKey("backend-id"))?
        .trim()
        .parse::<u16>()
        .map_err(|_| Error::MalformedKey("backend-id"))?;
    let trusted = match read_opt(store, &format!("{fe}/trusted"))? {
        None => true,
        Some(v) => v.trim() != "0",
    };
    let mut dev = BlockFront {
        hal,
        gt,
        store,
        cfg,
        info: BackendInfo::from_keys(
            vdev,
            &fe,
            &be,
            DomId(be_id),
            XenbusState::Unknown,
            BTreeMap::new(),
            false,
        )?,
        state: DeviceState::Disconnected,
        queues: Vec::new(),
        next_queue: 0,
        next_token: 1,
        pending: Default::default(),
        done: VecDeque::new(),
        staging: Vec::new(),
        handle: vdev as u16,
        leaked: 0,
    };
    dev.info.negotiated.trusted = trusted;
    connect(&mut dev)?;
    Ok(dev)
}

/// Runs the connection protocol from the backend's InitWait to Connected.
fn connect<H: Hal, T: XsTransport>(
    dev: &mut BlockFront<'_, H, T>,
) -> core::result::Result<(), ProbeError> {
    let (hal, gt, store, cfg) = (dev.hal, dev.gt, dev.store, dev.cfg);
    let vdev = dev.info.vdev;
    let fe = dev.info.frontend_path.clone();
    let be = dev.info.backend_path.clone();
    let be_id = dev.info.backend_id;
    let trusted = dev.info.negotiated.trusted;

    let deadline = hal.now_ns().saturating_add(cfg.connect_timeout_ns);
    match wait_state(hal, store, &be, deadline, |s| s == XenbusState::InitWait)? {
        Ok(_) => {}
        Err(seen) => return Err(stall(store, vdev, &be, XenbusState::InitWait, seen)),
    }
    let (offered, _) = parse_offered(&snapshot(store, &be)?);
    let order = offered
        .max_ring_page_order
        .min(cfg.max_ring_page_order)
        .min(MAX_RING_ORDER);
    let nq = offered.max_queues.min(cfg.max_queues).max(1);
    // Like Linux's blkfront: advertise persistent grants now, decide at
    // Connected. Real blkback publishes `feature-persistent` only with
    // Connected, so the InitWait snapshot cannot tell.
    let advertise_persistent = cfg.persistent_grants && trusted;
    let mut t = setup_queues(hal, gt, be_id, nq, order, false)?;
    let fail = |t: &mut Transport, e: ProbeError| {
        let _ = release(hal, gt, &mut t.queues);
        e
    };
    if let Err(e) = publish(
        store,
        &fe,
        &t,
        advertise_persistent,
        cfg.transaction_retries,
    ) {
        return Err(fail(&mut t, e.into()));
    }
    if let Err(e) = switch_state(store, &fe, XenbusState::Initialised) {
        return Err(fail(&mut t, e.into()));
    }
    let deadline = hal.now_ns().saturating_add(cfg.connect_timeout_ns);
    match wait_state(hal, store, &be, deadline, |s| s == XenbusState::Connected) {
        Ok(Ok(_)) => {}
        Ok(Err(seen)) => {
            let e = stall(store, vdev, &be, XenbusState::Connected, seen);
            return Err(fail(&mut t, e));
        }
        Err(e) => return Err(fail(&mut t, e.into())),
    }
    let raw = match snapshot(store, &be) {
        Ok(r) => r,
        Err(e) => return Err(fail(&mut t, e.into())),
    };
    let mut info =
        match BackendInfo::from_keys(vdev, &fe, &be, be_id, XenbusState::Connected, raw, true) {
            Ok(i) => i,
            Err(e) => return Err(fail(&mut t, e.into())),
        };
    let persistent = advertise_persistent && info.offered.persistent;
    for q in &mut t.queues {
        // No data page was granted yet: the pool starts in the right mode.
        q.persistent = persistent;
    }
    let slots = t.queues.first().map_or(0, |q| q.shadow.len() as u32);
    let indirect = info
        .offered
        .max_indirect_segments
        .min(cfg.max_indirect_segments)
        .min(MAX_INDIRECT_SEGMENTS as u32);
    info.negotiated = super::Negotiated {
        ring_page_order: order,
        ring_slots: slots,
        queues: t.queues.len() as u32,
        indirect_segments: if indirect as usize > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            indirect
        } else {
            0
        },
        persistent,
        flush: if info.offered.flush_cache {
            Some(FlushMethod::FlushCache)
        } else if info.offered.barrier {
            Some(FlushMethod::Barrier)
        } else {
            None
        },
        discard: info.offered.discard.is_some(),
        trusted,
    };
    // Keep what was learnt at run time across reconnects.
    info.disabled = core::mem::take(&mut dev.info.disabled);
    for (feat, _) in &info.disabled {
        match feat {
            crate::error::Feature::FlushCache | crate::error::Feature::Barrier => {
                info.negotiated.flush = None
            }
            crate::error::Feature::Discard | crate::error::Feature::SecureDiscard => {
                info.negotiated.discard = false
            }
            _ => {}
        }
    }
    if let Err(e) = switch_state(store, &fe, XenbusState::Connected) {
        return Err(fail(&mut t, e.into()));
    }
    dev.info = info;
    dev.queues = t.queues;
    dev.next_queue = 0;
    dev.state = DeviceState::Connected;
    log::info!(
        "xenblk {vdev}: connected ({} queues, ring order {order})",
        dev.queues.len()
    );
    Ok(())
}

/// Takes the connection down after the backend closed (or before close):
/// fails in-flight requests with `err`, moves the frontend through Closing
/// to Closed, waits (bounded) for the backend to let go of the rings, and
/// gives back every grant, port and page that it can.
fn disconnect<H: Hal, T: XsTransport>(dev: &mut BlockFront<'_, H, T>, err: Error) -> Result<()> {
    dev.abort_in_flight(err);
    let fe = dev.info.frontend_path.clone();
    let be = dev.info.backend_path.clone();
    let r1 = switch_state(dev.store, &fe, XenbusState::Closing);
    let deadline = dev.hal.now_ns().saturating_add(dev.cfg.connect_timeout_ns);
    let _ = wait_state(dev.hal, dev.store, &be, deadline, |s| {
        s >= XenbusState::Closing
    });
    let r2 = switch_state(dev.store, &fe, XenbusState::Closed);
    let deadline = dev.hal.now_ns().saturating_add(dev.cfg.connect_timeout_ns);
    let _ = wait_state(dev.hal, dev.store, &be, deadline, |s| {
        matches!(
            s,
            XenbusState::Closed | XenbusState::InitWait | XenbusState::Unknown
        )
    });
    dev.leaked += release(dev.hal, dev.gt, &mut dev.queues);
    r1.and(r2)
}

pub(super) fn check_backend<H: Hal, T: XsTransport>(
    dev: &mut BlockFront<'_, H, T>,
) -> Result<BackendEvent> {
    let be = dev.info.backend_path.clone();
    let s = read_state(dev.store, &be)?;
    match (dev.state, s) {
        (DeviceState::Connected, Some(XenbusState::Connected)) => {
            let Some(v) = read_opt(dev.store, &format!("{be}/sectors"))? else {
                return Ok(BackendEvent::None);
            };
            let Some(raw) = v.trim().parse::<u64>().ok() else {
                return Err(Error::MalformedKey("sectors"));
            };
            if Some(raw) == dev.info.sectors_raw {
                return Ok(BackendEvent::None);
            }
            let unit = match dev.info.sectors_unit {
                super::SectorsUnit::Bytes512 => 512,
                super::SectorsUnit::LogicalBlocks => u64::from(dev.info.sector_size),
            };
            let new_bytes = raw
                .checked_mul(unit)
                .ok_or(Error::MalformedKey("sectors"))?;
            let old_bytes = dev.info.capacity_bytes;
            dev.info.sectors_raw = Some(raw);
            dev.info.capacity_bytes = new_bytes;
            dev.info.raw.insert("sectors".into(), v);
            Ok(BackendEvent::Resized {
                old_bytes,
                new_bytes,
            })
        }
        (DeviceState::Connected, _) => {
            log::warn!("xenblk {}: backend left Connected ({s:?})", dev.info.vdev);
            dev.state = DeviceState::Disconnected;
            dev.info.state = s.unwrap_or(XenbusState::Unknown);
            disconnect(dev, Error::Aborted)?;
            Ok(BackendEvent::Closed)
        }
        (DeviceState::Disconnected, Some(XenbusState::InitWait)) => {
            connect(dev).map_err(|e| e.error)?;
            Ok(BackendEvent::Reconnected)
        }
        _ => Ok(BackendEvent::None),
    }
}

/// Asks a closed backend to come back (frontend Initialising; blkback
/// answers with InitWait) and reconnects.
pub(super) fn reconnect<H: Hal, T: XsTransport>(
    dev: &mut BlockFront<'_, H, T>,
) -> core::result::Result<(), ProbeError> {
    if dev.state != DeviceState::Disconnected {
        return Err(Error::UnexpectedState(dev.info.state).into());
    }
    switch_state(
        dev.store,
        &dev.info.frontend_path.clone(),
        XenbusState::Initialising,
    )?;
    connect(dev)
}

pub(super) fn close<H: Hal, T: XsTransport>(dev: &mut BlockFront<'_, H, T>) -> Result<usize> {
    if dev.state == DeviceState::Closed {
        return Ok(0);
    }
    let r = if dev.queues.is_empty() {
        Ok(())
    } else {
        disconnect(dev, Error::Closed)
    };
    dev.abort_in_flight(Error::Closed);
    dev.state = DeviceState::Closed;
    let left = dev.quarantined();
    r.map(|()| left)
}
