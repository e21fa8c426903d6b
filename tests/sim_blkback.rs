//! The simulated block backend driven through the real protocol by a small
//! hand-written frontend: xenstore keys, a `FrontRing` in guest pages,
//! grants from `GrantTable`, event channels through `SimHal`.
#![cfg(feature = "sim")]

use std::sync::Arc;

use xenblk::abi::blkif::*;
use xenblk::blkfront::wire::{encode_segment, RequestSlot};
use xenblk::blkfront::IoError;
use xenblk::error::Violation;
use xenblk::gnttab::{GrantError, GrantTable};
use xenblk::hal::{DomId, GrantRef, Hal, HalError, Pages, Port, PAGE_SIZE};
use xenblk::ring::{FrontRing, RingError};
use xenblk::sim::blkback::{
    BackendConfig, BadId, Faults, MemStore, Offer, Perm, SimBlkBack, SimBlkBackHandle,
};
use xenblk::sim::{SimHal, SimXen};
use xenblk::xenbus::XenbusState;
use xenblk::Error;

const FE: DomId = DomId(1);
const VDEV: u32 = 51712;
const SECOND: u64 = 1_000_000_000;

struct Queue {
    ring: FrontRing<RequestSlot, BlkifResponse>,
    _pages: Pages,
    refs: Vec<GrantRef>,
    port: Port,
}

struct Front {
    xen: SimXen,
    hal: &'static SimHal,
    gt: GrantTable<'static, SimHal>,
    store: Arc<MemStore>,
    be: SimBlkBackHandle,
    queues: Vec<Queue>,
}

fn seg(gref: GrantRef, first: u8, last: u8) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref: gref.0,
        first_sect: first,
        last_sect: last,
    }
}

impl Front {
    fn with(xen: SimXen, cfg: BackendConfig) -> Front {
        let hal: &'static SimHal = Box::leak(Box::new(xen.hal(FE)));
        let store = Arc::new(MemStore::new());
        let be = SimBlkBack::new(&xen, store.clone(), FE, VDEV, cfg).expect("backend");
        Front {
            gt: GrantTable::new(hal).expect("grant table"),
            xen,
            hal,
            store,
            be,
            queues: Vec::new(),
        }
    }

    fn new(cfg: BackendConfig) -> Front {
        Front::with(SimXen::new(), cfg)
    }

    fn fe(&self, key: &str) -> String {
        format!("{}/{key}", self.be.frontend_path())
    }

    fn fe_write(&self, key: &str, v: &str) {
        use xenblk::sim::blkback::BackendStore;
        self.store.write(&self.fe(key), v).unwrap();
    }

    fn be_key(&self, key: &str) -> Option<String> {
        use xenblk::sim::blkback::BackendStore;
        self.store
            .read(&format!("{}/{key}", self.be.backend_path()))
    }

    fn be_keys(&self) -> Vec<String> {
        self.store.directory(&self.be.backend_path())
    }

    fn settle(&self) {
        self.xen.run_until_idle();
    }

    fn set_state(&self, s: XenbusState) {
        self.fe_write("state", s.as_str());
        self.settle();
    }

    /// Allocates and grants the rings, writes the transport keys,
    /// Initialised.
    fn publish(&mut self, order: u32, queues: u32, persistent: bool) {
        let mut keys = Vec::new();
        for q in 0..queues {
            let pages = self.hal.alloc_pages(1 << order).unwrap();
            let refs: Vec<GrantRef> = (0..1 << order)
                .map(|i| {
                    let gfn = pages.page_gfn(i).unwrap();
                    self.gt.grant_access(DomId::DOM0, gfn, false).unwrap()
                })
                .collect();
            // SAFETY: fresh zeroed pages owned by this queue for the life of
            // the ring; the backend is the only peer.
            let ring = unsafe { FrontRing::init(pages.as_non_null(), order) }.unwrap();
            let port = self.hal.evtchn_alloc_unbound(DomId::DOM0).unwrap();
            let dir = if queues == 1 {
                String::new()
            } else {
                format!("queue-{q}/")
            };
            if order == 0 {
                keys.push((format!("{dir}ring-ref"), refs[0].0.to_string()));
            } else {
                for (i, r) in refs.iter().enumerate() {
                    keys.push((format!("{dir}ring-ref{i}"), r.0.to_string()));
                }
            }
            keys.push((format!("{dir}event-channel"), port.0.to_string()));
            self.queues.push(Queue {
                ring,
                _pages: pages,
                refs,
                port,
            });
        }
        if order > 0 {
            self.fe_write("ring-page-order", &order.to_string());
        }
        if queues > 1 {
            self.fe_write("multi-queue-num-queues", &queues.to_string());
        }
        for (k, v) in keys {
            self.fe_write(&k, &v);
        }
        self.fe_write("protocol", "x86_64-abi");
        self.fe_write("feature-persistent", if persistent { "1" } else { "0" });
        self.set_state(XenbusState::Initialised);
    }

    fn connect(cfg: BackendConfig) -> Front {
        let mut f = Front::new(cfg);
        f.settle();
        f.publish(0, 1, false);
        assert_eq!(
            f.be.state(),
            XenbusState::Connected,
            "{:?}",
            f.be.last_error()
        );
        f.set_state(XenbusState::Connected);
        f
    }

    fn submit_on(&mut self, q: usize, slots: &[RequestSlot]) {
        let queue = &mut self.queues[q];
        for s in slots {
            queue.ring.push_request(s).unwrap();
        }
        if queue.ring.push_requests_and_check_notify() {
            self.hal.evtchn_notify(queue.port).unwrap();
        }
    }

    fn submit(&mut self, slot: RequestSlot) {
        self.submit_on(0, &[slot]);
    }

    /// The next response on queue `q`, waiting up to a second.
    fn response_on(&mut self, q: usize) -> Result<BlkifResponse, Error> {
        let deadline = self.hal.now_ns() + SECOND;
        let queue = &mut self.queues[q];
        loop {
            if let Some(r) = queue.ring.poll_response()? {
                return Ok(r);
            }
            if !queue.ring.final_check_for_responses()? {
                self.hal.evtchn_wait(&[queue.port], Some(deadline))?;
                self.hal.evtchn_consume(queue.port);
            }
        }
    }

    fn response(&mut self) -> BlkifResponse {
        self.response_on(0).expect("a response")
    }

    /// A data page filled with `fill`, granted to dom0.
    fn page(&self, fill: u8, readonly: bool) -> (Pages, GrantRef) {
        let p = self.hal.alloc_pages(1).unwrap();
        // SAFETY: a fresh page of ours, not yet granted.
        unsafe { core::ptr::write_bytes(p.as_ptr(), fill, PAGE_SIZE) };
        let g = self
            .gt
            .grant_access(DomId::DOM0, p.gfn(), readonly)
            .unwrap();
        (p, g)
    }
}

fn bytes(p: &Pages) -> Vec<u8> {
    // SAFETY: our own page; in step mode the backend only runs inside our
    // waits, so nothing writes it concurrently.
    unsafe { std::slice::from_raw_parts(p.as_ptr(), PAGE_SIZE) }.to_vec()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

const TOOLSTACK_BE: [&str; 10] = [
    "bootable",
    "dev",
    "frontend",
    "frontend-id",
    "mode",
    "online",
    "params",
    "removable",
    "state",
    "type",
];

#[test]
fn blkback_publishes_transport_keys_at_initwait_and_the_rest_at_connected() {
    let mut f = Front::new(BackendConfig::blkback());
    f.settle();
    assert_eq!(f.be.state(), XenbusState::InitWait);
    let mut want: Vec<&str> = TOOLSTACK_BE.to_vec();
    // Real blkback (Linux 6.1, seen in the lab) publishes feature-persistent
    // only with Connected.
    want.extend([
        "max-ring-page-order",
        "multi-queue-max-queues",
        "physical-device",
    ]);
    assert_eq!(
        sorted(f.be_keys()),
        sorted(want.iter().map(|s| s.to_string()).collect())
    );
    assert_eq!(f.be_key("physical-device").as_deref(), Some("7:0"));
    assert_eq!(
        sorted(f.store.directory(&f.be.frontend_path())),
        [
            "backend",
            "backend-id",
            "device-type",
            "state",
            "trusted",
            "virtual-device"
        ]
    );
    let p = f.store.perms(&f.be.frontend_path()).unwrap();
    assert_eq!((p.owner, p.acl), (FE, vec![(DomId::DOM0, Perm::Read)]));
    let p = f.store.perms(&f.be.backend_path()).unwrap();
    assert_eq!((p.owner, p.acl), (DomId::DOM0, vec![(FE, Perm::Read)]));

    f.publish(0, 1, true);
    assert_eq!(f.be.state(), XenbusState::Connected);
    for (k, v) in [
        ("feature-barrier", "1"),
        ("feature-flush-cache", "1"),
        ("feature-discard", "1"),
        ("discard-granularity", "4096"),
        ("discard-alignment", "0"),
        ("discard-secure", "0"),
        ("feature-persistent", "1"),
        ("feature-max-indirect-segments", "256"),
        ("sector-size", "512"),
        ("physical-sector-size", "512"),
        ("sectors", "16384"),
        ("info", "0"),
        ("state", "4"),
    ] {
        assert_eq!(f.be_key(k).as_deref(), Some(v), "{k}");
    }
    assert!(f.be.stats().persistent);
}

#[test]
fn qdisk_publishes_geometry_at_initwait_and_never_blkback_keys() {
    let mut cfg = BackendConfig::qdisk();
    cfg.sector_size = 4096;
    let mut f = Front::new(cfg);
    f.settle();
    assert_eq!(f.be.state(), XenbusState::InitWait);
    assert!(f.be.backend_path().contains("/backend/qdisk/1/51712"));
    assert_eq!(f.be_key("sectors").as_deref(), Some("2048"));
    assert_eq!(f.be_key("sector-size").as_deref(), Some("4096"));
    assert_eq!(f.be_key("type").as_deref(), Some("qdisk"));
    for absent in [
        "feature-barrier",
        "feature-persistent",
        "feature-max-indirect-segments",
        "multi-queue-max-queues",
        "physical-sector-size",
        "physical-device",
        "direct-io-safe",
    ] {
        assert_eq!(f.be_key(absent), None, "{absent}");
    }
    // 4096-byte sectors need feature-large-sector-size: QEMU logs and waits.
    f.publish(0, 1, false);
    assert_eq!(f.be.state(), XenbusState::InitWait);
    assert!(f.be.last_error().unwrap().contains("logical_block_size"));
    f.fe_write("feature-large-sector-size", "1");
    f.set_state(XenbusState::Closing);
    f.set_state(XenbusState::Initialised);
    assert_eq!(f.be.state(), XenbusState::Connected);
}

#[test]
fn qdisk_with_direct_io_safe_stays_initialising() {
    let mut cfg = BackendConfig::qdisk();
    cfg.direct_io_safe = Some(true);
    let mut f = Front::new(cfg);
    f.settle();
    f.publish(0, 1, false);
    f.xen.advance_clock(60 * SECOND);
    f.settle();
    assert_eq!(f.be.state(), XenbusState::Initialising);
    assert_eq!(f.be_key("direct-io-safe").as_deref(), Some("1"));
    assert_eq!(f.be_key("sectors"), None);
    assert_eq!(f.be_key("state").as_deref(), Some("1"));
    // Without the stall switch, the same disk connects.
    let mut cfg = BackendConfig::qdisk();
    cfg.direct_io_safe = Some(true);
    cfg.stall_with_direct_io_safe = false;
    let f = Front::connect(cfg);
    assert_eq!(f.be_key("direct-io-safe").as_deref(), Some("1"));
}

#[test]
fn direct_write_and_read_reach_the_disk() {
    for cfg in [BackendConfig::blkback(), BackendConfig::qdisk()] {
        let mut f = Front::connect(cfg);
        let (_wp, wg) = f.page(0xa5, true);
        f.submit(RequestSlot::direct(
            BLKIF_OP_WRITE,
            0,
            7,
            10,
            &[seg(wg, 1, 2)],
        ));
        let r = f.response();
        assert_eq!(
            (r.id, r.operation, r.status),
            (7, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
        );
        assert_eq!(f.be.disk_read(10 * 512, 1024).unwrap(), vec![0xa5; 1024]);
        f.be.disk_write(20 * 512, &[0x3c; 512]).unwrap();
        let (rp, rg) = f.page(0, false);
        f.submit(RequestSlot::direct(
            BLKIF_OP_READ,
            0,
            8,
            20,
            &[seg(rg, 4, 4)],
        ));
        assert_eq!(f.response().status, BLKIF_RSP_OKAY);
        let b = bytes(&rp);
        assert_eq!(&b[4 * 512..5 * 512], &[0x3c; 512][..]);
        assert!(b[..4 * 512].iter().all(|&x| x == 0));
        let s = f.be.stats();
        assert_eq!((s.reads, s.writes, s.ok, s.grants_mapped), (1, 1, 2, 0));
    }
}

#[test]
fn indirect_requests_carry_many_segments_and_qdisk_refuses_them() {
    let mut f = Front::connect(BackendConfig::blkback());
    let data: Vec<(Pages, GrantRef)> = (0..40).map(|i| f.page(i as u8, true)).collect();
    let (ip, ig) = f.page(0, false);
    let mut table = Vec::new();
    for (_, g) in &data {
        table.extend(encode_segment(&seg(*g, 0, 7)));
    }
    // SAFETY: our own page, backend idle.
    unsafe { core::ptr::copy_nonoverlapping(table.as_ptr(), ip.as_ptr(), table.len()) };
    f.submit(RequestSlot::indirect(BLKIF_OP_WRITE, 40, 9, 0, 0, &[ig.0]));
    let r = f.response();
    // Linux answers with the indirect operation.
    assert_eq!(
        (r.id, r.operation, r.status),
        (9, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
    );
    for i in 0..40u64 {
        assert_eq!(f.be.disk_read(i * 4096, 4096).unwrap(), vec![i as u8; 4096]);
    }
    assert_eq!(f.be.stats().indirect, 1);
    f.submit(RequestSlot::indirect(
        BLKIF_OP_WRITE,
        257,
        10,
        0,
        0,
        &[ig.0],
    ));
    assert_eq!(f.response().status, BLKIF_RSP_ERROR);

    let mut q = Front::connect(BackendConfig::qdisk());
    let (_p, g) = q.page(0, false);
    q.submit(RequestSlot::indirect(BLKIF_OP_READ, 1, 11, 0, 0, &[g.0]));
    let r = q.response();
    assert_eq!(
        (r.operation, r.status),
        (BLKIF_OP_INDIRECT, BLKIF_RSP_ERROR)
    );
}

#[test]
fn flush_barrier_and_discard() {
    let mut f = Front::connect(BackendConfig::blkback());
    f.be.disk_write(0, &[1; 8192]).unwrap();
    f.submit(RequestSlot::direct(BLKIF_OP_FLUSH_DISKCACHE, 0, 1, 0, &[]));
    assert_eq!(f.response().status, BLKIF_RSP_OKAY);
    f.submit(RequestSlot::direct(BLKIF_OP_WRITE_BARRIER, 0, 2, 0, &[]));
    assert_eq!(f.response().status, BLKIF_RSP_OKAY);
    f.submit(RequestSlot::discard(0, 0, 3, 8, 8));
    let r = f.response();
    assert_eq!((r.operation, r.status), (BLKIF_OP_DISCARD, BLKIF_RSP_OKAY));
    assert_eq!(f.be.disk_read(4096, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(f.be.disk_read(0, 4096).unwrap(), vec![1; 4096]);
    let s = f.be.stats();
    assert_eq!((s.flushes, s.barriers, s.discards), (1, 1, 1));

    // Advertised but refused: EOPNOTSUPP, and blkback withdraws the key.
    let mut cfg = BackendConfig::blkback();
    cfg.flush = Offer::Eopnotsupp;
    cfg.discard = Offer::No;
    let mut f = Front::connect(cfg);
    assert_eq!(f.be_key("feature-flush-cache").as_deref(), Some("1"));
    f.submit(RequestSlot::direct(BLKIF_OP_FLUSH_DISKCACHE, 0, 1, 0, &[]));
    assert_eq!(f.response().status, BLKIF_RSP_EOPNOTSUPP);
    assert_eq!(f.be_key("feature-flush-cache").as_deref(), Some("0"));
    f.submit(RequestSlot::discard(0, 0, 3, 8, 8));
    assert_eq!(f.response().status, BLKIF_RSP_EOPNOTSUPP);
}

#[test]
fn malformed_requests_are_rejected_like_blkback() {
    let mut cfg = BackendConfig::blkback();
    cfg.read_only = true;
    let mut f = Front::connect(cfg);
    assert_eq!(f.be_key("info").as_deref(), Some("4"));
    assert_eq!(f.be_key("mode").as_deref(), Some("r"));
    let (_p, g) = f.page(0, false);
    let end = 16384;
    for (i, (slot, want)) in [
        (
            RequestSlot::direct(BLKIF_OP_READ, 0, 1, 0, &[seg(g, 5, 4)]),
            BLKIF_RSP_ERROR,
        ),
        (
            RequestSlot::direct(BLKIF_OP_READ, 0, 1, 0, &[seg(g, 0, 8)]),
            BLKIF_RSP_ERROR,
        ),
        (
            RequestSlot::direct(BLKIF_OP_READ, 0, 1, end, &[seg(g, 0, 0)]),
            BLKIF_RSP_ERROR,
        ),
        (
            RequestSlot::direct(BLKIF_OP_READ, 0, 1, 0, &[]),
            BLKIF_RSP_ERROR,
        ),
        (
            RequestSlot::direct(BLKIF_OP_WRITE, 0, 1, 0, &[seg(g, 0, 0)]),
            BLKIF_RSP_ERROR,
        ),
        (RequestSlot::direct(4, 0, 1, 0, &[]), BLKIF_RSP_EOPNOTSUPP),
        (RequestSlot::direct(42, 0, 1, 0, &[]), BLKIF_RSP_EOPNOTSUPP),
        (
            RequestSlot::direct(BLKIF_OP_READ, 0, 1, end - 1, &[seg(g, 0, 0)]),
            BLKIF_RSP_OKAY,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        f.submit(slot);
        assert_eq!(f.response().status, want, "case {i}");
    }
    let s = f.be.stats();
    assert_eq!((s.errors, s.eopnotsupp, s.ok, s.unknown_ops), (5, 2, 1, 2));
}

#[test]
fn persistent_grants_stay_mapped_until_the_frontend_closes() {
    let mut f = Front::new(BackendConfig::blkback());
    f.settle();
    f.publish(0, 1, true);
    f.set_state(XenbusState::Connected);
    let (_p, g) = f.page(9, false);
    f.submit(RequestSlot::direct(
        BLKIF_OP_WRITE,
        0,
        1,
        0,
        &[seg(g, 0, 7)],
    ));
    assert_eq!(f.response().status, BLKIF_RSP_OKAY);
    f.submit(RequestSlot::direct(BLKIF_OP_READ, 0, 2, 0, &[seg(g, 0, 7)]));
    assert_eq!(f.response().status, BLKIF_RSP_OKAY);
    let s = f.be.stats();
    assert_eq!((s.persistent_grants, s.grants_mapped), (1, 1));
    assert_eq!(f.gt.end_access(g), Err(GrantError::InUse(g.0)));
    f.set_state(XenbusState::Closing);
    assert_eq!(f.be.state(), XenbusState::Closing);
    f.set_state(XenbusState::Closed);
    assert_eq!(f.be.state(), XenbusState::Closed);
    assert_eq!(f.xen.accounting(DomId::DOM0).mappings_held, 0);
    assert_eq!(f.gt.end_access(g), Ok(()));
}

#[test]
fn the_backend_reconnects_after_closed() {
    let mut f = Front::connect(BackendConfig::blkback());
    f.set_state(XenbusState::Closing);
    f.set_state(XenbusState::Closed);
    assert_eq!(f.be.state(), XenbusState::Closed);
    assert_eq!(f.xen.accounting(DomId::DOM0).ports_open, 0);
    for q in f.queues.drain(..) {
        f.hal.evtchn_close(q.port).unwrap();
        for r in q.refs {
            f.gt.end_access(r).unwrap();
        }
    }
    f.set_state(XenbusState::Initialising);
    assert_eq!(f.be.state(), XenbusState::InitWait);
    f.publish(2, 2, false);
    assert_eq!(
        f.be.state(),
        XenbusState::Connected,
        "{:?}",
        f.be.last_error()
    );
    let s = f.be.stats();
    assert_eq!((s.connects, s.queues, s.ring_order), (2, 2, 2));
    assert_eq!(f.queues[1].ring.size(), 128);
    let (_p, g) = f.page(0x11, true);
    f.submit_on(
        1,
        &[RequestSlot::direct(
            BLKIF_OP_WRITE,
            0,
            5,
            0,
            &[seg(g, 0, 0)],
        )],
    );
    assert_eq!(f.response_on(1).unwrap().status, BLKIF_RSP_OKAY);
}

#[test]
fn missing_or_bad_frontend_keys_are_fatal() {
    let f = Front::new(BackendConfig::blkback());
    f.settle();
    f.fe_write("ring-ref", "8");
    f.set_state(XenbusState::Initialised);
    assert_eq!(f.be.state(), XenbusState::Closing);
    let err = f.store_read(&f.be.error_path()).unwrap();
    assert!(err.contains("event-channel"), "{err}");

    let mut f = Front::new(BackendConfig::blkback());
    f.settle();
    f.fe_write("multi-queue-num-queues", "3");
    f.publish(0, 1, false);
    assert_eq!(f.be.state(), XenbusState::Closing);
    assert!(f.be.last_error().unwrap().contains("3 queues"));

    let f = Front::new(BackendConfig::blkback());
    f.settle();
    f.set_state(XenbusState::InitWait);
    assert_eq!(f.be.state(), XenbusState::Closing);
}

impl Front {
    fn store_read(&self, path: &str) -> Option<String> {
        use xenblk::sim::blkback::BackendStore;
        self.store.read(path)
    }
}

#[test]
fn one_notification_can_carry_many_requests() {
    let mut f = Front::connect(BackendConfig::blkback());
    let pages: Vec<_> = (0..4).map(|i| f.page(i, true)).collect();
    let slots: Vec<_> = pages
        .iter()
        .enumerate()
        .map(|(i, (_, g))| {
            RequestSlot::direct(BLKIF_OP_WRITE, 0, i as u64, i as u64 * 8, &[seg(*g, 0, 7)])
        })
        .collect();
    f.submit_on(0, &slots);
    for _ in 0..4 {
        assert_eq!(f.response().status, BLKIF_RSP_OKAY);
    }
    let s = f.be.stats();
    assert_eq!(s.max_requests_per_wakeup, 4);
    assert_eq!(
        s.notifications_received, 2,
        "the bind's pending bit and one notify"
    );
    assert!(s.notifications_sent >= 1);
}

#[test]
fn a_frontend_that_never_notifies_gets_nothing() {
    let mut f = Front::connect(BackendConfig::blkback());
    let (_p, g) = f.page(0, false);
    f.queues[0]
        .ring
        .push_request(&RequestSlot::direct(
            BLKIF_OP_READ,
            0,
            1,
            0,
            &[seg(g, 0, 0)],
        ))
        .unwrap();
    f.queues[0].ring.push_requests();
    assert_eq!(f.response_on(0), Err(Error::Hal(HalError::Timeout)));
    assert_eq!(f.be.stats().reads, 0);
}

#[test]
fn a_bad_request_producer_halts_the_ring() {
    let f = Front::connect(BackendConfig::blkback());
    let ring_page = f.queues[0]._pages.as_ptr();
    // SAFETY: req_prod is the aligned u32 at offset 0 of our ring page.
    unsafe {
        (*ring_page.cast::<std::sync::atomic::AtomicU32>())
            .store(1000, std::sync::atomic::Ordering::SeqCst)
    };
    f.hal.evtchn_notify(f.queues[0].port).unwrap();
    f.settle();
    assert_eq!(f.be.stats().protocol_errors, 1);
}

fn faulty(faults: Faults) -> (Front, GrantRef, Pages) {
    let mut f = Front::connect(BackendConfig::blkback());
    let (p, g) = f.page(0, false);
    // One healthy request first, so NotInFlight has an old id to reuse.
    f.submit(RequestSlot::direct(
        BLKIF_OP_READ,
        0,
        100,
        0,
        &[seg(g, 0, 0)],
    ));
    assert_eq!(f.response().id, 100);
    f.be.set_faults(faults);
    f.submit(RequestSlot::direct(
        BLKIF_OP_READ,
        0,
        101,
        0,
        &[seg(g, 0, 0)],
    ));
    (f, g, p)
}

#[test]
fn faults_corrupt_one_response_each() {
    let (mut f, ..) = faulty(Faults {
        bad_id: Some(BadId::OutOfRange),
        ..Faults::default()
    });
    assert_eq!(f.response().id, u64::MAX);
    let (mut f, ..) = faulty(Faults {
        bad_id: Some(BadId::NotInFlight),
        ..Faults::default()
    });
    assert_eq!(f.response().id, 100);
    let (mut f, ..) = faulty(Faults {
        wrong_operation: true,
        ..Faults::default()
    });
    assert_eq!(f.response().operation, BLKIF_OP_WRITE);
    let (mut f, ..) = faulty(Faults {
        unknown_status: Some(7),
        ..Faults::default()
    });
    assert_eq!(f.response().status, 7);
    assert_eq!(f.be.faults(), Faults::default(), "one-shot faults clear");
    // The next response is healthy again.
    let (_p, g) = f.page(0, false);
    f.submit(RequestSlot::direct(
        BLKIF_OP_READ,
        0,
        102,
        0,
        &[seg(g, 0, 0)],
    ));
    let r = f.response();
    assert_eq!((r.id, r.status), (102, BLKIF_RSP_OKAY));
}

#[test]
fn a_response_producer_jump_breaks_the_frontend_ring() {
    let (mut f, ..) = faulty(Faults {
        rsp_prod_jump: Some(1000),
        ..Faults::default()
    });
    // The jump is published with the response: the frontend's first look
    // at rsp_prod already sees more responses than requests in flight.
    assert!(matches!(
        f.response_on(0),
        Err(Error::Ring(RingError::Protocol(
            Violation::ProducerOverrun { cons: 1, .. }
        )))
    ));
}

#[test]
fn swallowed_requests_are_never_answered() {
    let (mut f, ..) = faulty(Faults {
        swallow_requests: true,
        ..Faults::default()
    });
    assert_eq!(f.response_on(0), Err(Error::Hal(HalError::Timeout)));
    assert_eq!(f.be.stats().unanswered, 1);
}

#[test]
fn a_slow_backend_answers_after_its_delay() {
    let (mut f, ..) = faulty(Faults {
        delay_ns: 5_000_000,
        ..Faults::default()
    });
    let before = f.xen.now_ns();
    assert_eq!(f.response().id, 101);
    assert!(f.xen.now_ns() >= before + 5_000_000);
}

#[test]
fn closing_mid_io_leaves_requests_unanswered() {
    let (mut f, ..) = faulty(Faults {
        closing_after: Some(1),
        ..Faults::default()
    });
    assert_eq!(f.response_on(0), Err(Error::Hal(HalError::Timeout)));
    assert_eq!(f.be.state(), XenbusState::Closing);
    assert_eq!(f.be.stats().unanswered, 1);
    f.set_state(XenbusState::Closing);
    f.set_state(XenbusState::Closed);
    assert_eq!(f.be.state(), XenbusState::Closed);
    assert_eq!(f.xen.accounting(DomId::DOM0).mappings_held, 0);
}

#[test]
fn kept_grants_block_revocation_until_released() {
    let (mut f, g, _p) = faulty(Faults {
        keep_grants_mapped: true,
        ..Faults::default()
    });
    assert_eq!(f.response().status, BLKIF_RSP_OKAY);
    assert_eq!(f.be.stats().grants_kept, 1);
    assert_eq!(f.gt.end_access(g), Err(GrantError::InUse(g.0)));
    assert_eq!(f.be.release_kept_grants(), 1);
    assert_eq!(f.gt.end_access(g), Ok(()));
}

#[test]
fn spurious_notifications_arrive_with_nothing_on_the_ring() {
    let mut f = Front::connect(BackendConfig::blkback());
    let port = f.queues[0].port;
    f.hal.evtchn_consume(port);
    let sent = f.be.stats().notifications_sent;
    f.be.set_faults(Faults {
        spurious_notifications: 3,
        ..Faults::default()
    });
    f.settle();
    assert!(f.hal.evtchn_consume(port));
    assert_eq!(f.queues[0].ring.poll_response(), Ok(None));
    assert_eq!(f.be.stats().notifications_sent, sent + 3);
    assert_eq!(f.be.faults().spurious_notifications, 0);
}

#[test]
fn injected_io_errors_fail_requests_without_touching_the_disk() {
    let mut f = Front::connect(BackendConfig::blkback());
    f.be.update_faults(|x| x.io_errors = 1);
    let (_p, g) = f.page(0xee, true);
    f.submit(RequestSlot::direct(
        BLKIF_OP_WRITE,
        0,
        1,
        0,
        &[seg(g, 0, 0)],
    ));
    assert_eq!(f.response().status, BLKIF_RSP_ERROR);
    assert_eq!(f.be.disk_read(0, 512).unwrap(), vec![0; 512]);
    f.submit(RequestSlot::direct(
        BLKIF_OP_WRITE,
        0,
        2,
        0,
        &[seg(g, 0, 0)],
    ));
    assert_eq!(f.response().status, BLKIF_RSP_OKAY);
    assert_eq!(f.be.disk_read(0, 512).unwrap(), vec![0xee; 512]);
}

#[test]
fn resizing_rewrites_sectors_and_state() {
    let f = Front::connect(BackendConfig::blkback());
    f.be.set_size_bytes(16 << 20).unwrap();
    assert_eq!(f.be_key("sectors").as_deref(), Some("32768"));
    assert_eq!(f.be_key("state").as_deref(), Some("4"));
    assert_eq!(
        f.be.set_size_bytes(1000),
        Err(Error::Io(IoError::Misaligned))
    );
}

#[test]
fn the_toolstack_detaches_a_disk() {
    let f = Front::connect(BackendConfig::blkback());
    f.be.close_backend();
    assert_eq!(f.be_key("state").as_deref(), Some("5"));
    assert_eq!(f.be_key("online").as_deref(), Some("0"));
    f.set_state(XenbusState::Closing);
    f.set_state(XenbusState::Closed);
    assert_eq!(f.be.state(), XenbusState::Closed);
    f.set_state(XenbusState::Initialising);
    assert_eq!(
        f.be.state(),
        XenbusState::Closed,
        "no reconnect once offline"
    );
}

#[test]
fn threaded_mode_serves_requests() {
    let mut f = Front::with(SimXen::new_threaded(), BackendConfig::blkback());
    let deadline = f.hal.now_ns() + 10 * SECOND;
    f.xen
        .wait_until(Some(deadline), || f.be.state() == XenbusState::InitWait)
        .unwrap();
    f.publish(0, 1, false);
    f.xen
        .wait_until(Some(deadline), || f.be.state() == XenbusState::Connected)
        .unwrap();
    let (_w, wg) = f.page(0x42, true);
    f.submit(RequestSlot::direct(
        BLKIF_OP_WRITE,
        0,
        1,
        3,
        &[seg(wg, 0, 7)],
    ));
    assert_eq!(f.response().status, BLKIF_RSP_OKAY);
    assert_eq!(f.be.disk_read(3 * 512, 4096).unwrap(), vec![0x42; 4096]);
    f.xen.stop_threads();
}
