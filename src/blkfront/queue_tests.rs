//! `Queue` against a backend the tests play by hand ([`RingPeer`]): what
//! goes on the ring, what is granted and how, what `complete` accepts, and
//! where every page and grant ends up.
//!
//! Requests are decoded with the simulator's own decoder
//! (`sim::blkback::decode`, written from `blkif.h`), never with `wire.rs`.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::abi::blkif::BLKIF_OP_INDIRECT;
use crate::blkfront::request::{Op, Pending, PendingTable, RequestToken};
use crate::blkfront::Broken;
use crate::sim::blkback::decode::{self, Direct, Indirect, RawSlot, Request, Segment};
use crate::sim::errno::{EPERM, EROFS};
use crate::sim::{Accounting, RingPeer, SimConfig, SimHal, SimXen};

type Peer = RingPeer<RawSlot, BlkifResponse>;
type Q<'a> = Queue<'a, SimHal>;

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId::DOM0;
/// The device number: the queue's tag in the grant table's quarantine.
const VDEV: u32 = 51712;
const HANDLE: u16 = 51712;
const SECTORS_PER_PAGE: u8 = (PAGE_SIZE / 512) as u8;

// ----- fixtures ------------------------------------------------------------------

/// `n` distinct pending ids, as the driver's pending table hands them out.
fn pending_ids(n: u64) -> Vec<PendingId> {
    let mut t = PendingTable::default();
    (0..n)
        .map(|i| {
            t.insert(Pending {
                token: RequestToken(i),
                op: Op::Flush {
                    op: BLKIF_OP_FLUSH_DISKCACHE,
                },
                buf: None,
                pushed: 0,
                in_flight: 0,
                error: None,
                direct: true,
            })
        })
        .collect()
}

fn attach(xen: &SimXen, q: &Q<'_>) -> Peer {
    RingPeer::attach(xen, BACK, FRONT, q.ring_grefs(), q.port()).unwrap()
}

/// Bytes that differ from page to page and from `seed` to `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i / PAGE_SIZE) as u8 ^ seed)
        .collect()
}

fn read_part(pending: PendingId, sector: u64, len: usize) -> RwPart<'static> {
    RwPart {
        pending,
        sector: WireSector(sector),
        offset: 0,
        len,
        data: None,
    }
}

fn write_part(pending: PendingId, sector: u64, data: &[u8]) -> RwPart<'_> {
    RwPart {
        pending,
        sector: WireSector(sector),
        offset: 0,
        len: data.len(),
        data: Some(data),
    }
}

fn rsp(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation,
        status,
    }
}

fn ok(id: u64, operation: u8) -> BlkifResponse {
    rsp(id, operation, BLKIF_RSP_OKAY)
}

/// Every request the frontend published, decoded by the simulator.
fn take(peer: &mut Peer) -> Vec<Request> {
    peer.take_requests()
        .unwrap()
        .iter()
        .map(decode::decode)
        .collect()
}

fn direct(r: &Request) -> Direct {
    match r {
        Request::Direct(d) => *d,
        other => panic!("expected a direct request, got {other:?}"),
    }
}

fn indirect(r: &Request) -> Indirect {
    match r {
        Request::Indirect(i) => *i,
        other => panic!("expected an indirect request, got {other:?}"),
    }
}

/// The backend publishes `rsps` (one per request it took); returns what
/// the queue reads off the ring, in order.
fn answer(q: &mut Q<'_>, peer: &mut Peer, rsps: &[BlkifResponse]) -> Vec<BlkifResponse> {
    for r in rsps {
        peer.push_response(r).unwrap();
    }
    peer.publish().unwrap();
    let mut got = Vec::new();
    while let Some(r) = q.next_response().unwrap() {
        got.push(r);
    }
    assert_eq!(got, rsps, "the ring delivers each response once, in order");
    got
}

fn done(r: core::result::Result<Done, Violation>) -> Done {
    match r {
        Ok(d) => d,
        Err(v) => panic!("expected a valid response, got {v:?}"),
    }
}

fn violation(r: core::result::Result<Done, Violation>) -> Violation {
    match r {
        Ok(d) => panic!("expected a violation, got a completion of {:?}", d.slot),
        Err(v) => v,
    }
}

/// Whether the backend can map `gref` right now (read-only), i.e. it is
/// still granted.
fn granted(peer: &Peer, gref: u32) -> bool {
    peer.map_grant(GrantRef(gref), false).is_ok()
}

fn grefs(segs: &[Segment]) -> Vec<u32> {
    segs.iter().map(|s| s.gref).collect()
}

// ----- what goes on the ring ------------------------------------------------------

#[test]
fn a_read_part_goes_on_the_ring_with_its_sector_segments_and_writable_grants() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [p] = pending_ids(1)[..] else { panic!() };

    let len = 2 * PAGE_SIZE + 1024;
    assert!(q.push_rw(&read_part(p, 100, len), HANDLE, 0).unwrap());
    assert!(peer.take_request().unwrap().is_none(), "not before kick");
    assert_eq!(peer.req_prod(), 0);
    q.kick();

    let reqs = take(&mut peer);
    assert_eq!(reqs.len(), 1);
    let d = direct(&reqs[0]);
    assert_eq!(
        (d.operation, d.handle, d.id, d.sector),
        (BLKIF_OP_READ, HANDLE, 0, 100)
    );
    let segs = d.segments();
    assert_eq!(segs.len(), 3);
    let last: Vec<(u8, u8)> = segs.iter().map(|s| (s.first_sect, s.last_sect)).collect();
    assert_eq!(
        last,
        [(0, SECTORS_PER_PAGE - 1), (0, SECTORS_PER_PAGE - 1), (0, 1)],
        "whole pages, then the 1024 bytes of the last"
    );
    let mut g = grefs(segs);
    g.sort_unstable();
    g.dedup();
    assert_eq!(g.len(), 3, "one grant per page");
    assert!(!g.contains(&q.ring_grefs()[0].0));
    for s in segs {
        // The backend writes read data: the grant must be writable.
        let m = peer.map_grant(GrantRef(s.gref), true).unwrap();
        m.write(0, b"data").unwrap();
    }
    assert_eq!(q.in_flight(), 1);
    assert_eq!(q.free_slots(), q.size() - 1);
}

#[test]
fn a_write_part_carries_its_data_on_read_only_grants() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [p] = pending_ids(1)[..] else { panic!() };

    let data = pattern(PAGE_SIZE + 512, 7);
    assert!(q.push_rw(&write_part(p, 8, &data), HANDLE, 0).unwrap());
    q.kick();
    let d = direct(&take(&mut peer)[0]);
    assert_eq!((d.operation, d.sector), (BLKIF_OP_WRITE, 8));
    let segs = d.segments();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[1].last_sect, 0, "one sector on the last page");
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(
            peer.map_grant(GrantRef(s.gref), true).unwrap_err(),
            HalError::Hypercall(-EROFS),
            "without persistent grants the backend only reads a write's pages"
        );
        let page = peer.read_grant(GrantRef(s.gref)).unwrap();
        let chunk = &data[i * PAGE_SIZE..data.len().min((i + 1) * PAGE_SIZE)];
        assert_eq!(&page[..chunk.len()], chunk, "page {i}");
    }
}

#[test]
fn an_indirect_part_lists_its_segments_in_a_read_only_indirect_page() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [r, w] = pending_ids(2)[..] else { panic!() };

    let data = pattern(12 * PAGE_SIZE, 3);
    assert!(q
        .push_rw(&read_part(r, 64, 13 * PAGE_SIZE), HANDLE, 32)
        .unwrap());
    assert!(q.push_rw(&write_part(w, 512, &data), HANDLE, 32).unwrap());
    q.kick();
    let reqs = take(&mut peer);
    let (ri, wi) = (indirect(&reqs[0]), indirect(&reqs[1]));
    assert_eq!(
        (
            ri.indirect_op,
            ri.handle,
            ri.id,
            ri.sector,
            ri.nr_segments()
        ),
        (BLKIF_OP_READ, HANDLE, 0, 64, 13)
    );
    assert_eq!(
        (wi.indirect_op, wi.id, wi.sector, wi.nr_segments()),
        (BLKIF_OP_WRITE, 1, 512, 12)
    );
    for (ind, write) in [(ri, false), (wi, true)] {
        let [page_gref] = ind.page_grefs() else {
            panic!("one indirect page holds 13 segments")
        };
        assert_eq!(
            peer.map_grant(GrantRef(*page_gref), true).unwrap_err(),
            HalError::Hypercall(-EROFS),
            "the backend only reads an indirect page"
        );
        let page = peer.read_grant(GrantRef(*page_gref)).unwrap();
        let segs: Vec<Segment> = decode::indirect_page_segments(&page)
            .take(ind.nr_segments())
            .collect();
        let mut g = grefs(&segs);
        g.sort_unstable();
        g.dedup();
        assert_eq!(g.len(), ind.nr_segments());
        assert!(!g.contains(page_gref));
        for (i, s) in segs.iter().enumerate() {
            assert_eq!((s.first_sect, s.last_sect), (0, SECTORS_PER_PAGE - 1));
            let writable = peer.map_grant(GrantRef(s.gref), true).is_ok();
            assert_eq!(writable, !write, "segment {i}");
            if write {
                let got = peer.read_grant(GrantRef(s.gref)).unwrap();
                assert_eq!(got, data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], "segment {i}");
            }
        }
    }
    // Backends answer an indirect request with its `indirect_op`.
    answer(
        &mut q,
        &mut peer,
        &[ok(0, BLKIF_OP_READ), ok(1, BLKIF_OP_WRITE)],
    );
    let a = done(q.complete(&ok(0, BLKIF_OP_READ)));
    let b = done(q.complete(&ok(1, BLKIF_OP_WRITE)));
    assert_eq!((a.busy.len, b.busy.len), (13 * PAGE_SIZE, 12 * PAGE_SIZE));
    q.release(a.slot);
    q.release(b.slot);
    assert_eq!(
        xen.accounting(FRONT).grants_active,
        1,
        "data and indirect grants all ended; the ring's stays"
    );
}

#[test]
fn an_indirect_request_answered_with_op_indirect_is_the_wrong_operation() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [r] = pending_ids(1)[..] else { panic!() };
    assert!(q
        .push_rw(&read_part(r, 0, 12 * PAGE_SIZE), HANDLE, 16)
        .unwrap());
    q.kick();
    assert!(take(&mut peer)[0].is_indirect());
    let [got] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_INDIRECT)])[..] else {
        panic!()
    };
    assert_eq!(
        violation(q.complete(&got)),
        Violation::WrongOperation {
            id: 0,
            sent: BLKIF_OP_READ,
            got: BLKIF_OP_INDIRECT
        }
    );
    assert_eq!(q.in_flight(), 1);
}

#[test]
fn wire_ids_are_free_slots_lowest_first_and_are_reused() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(5);

    for (i, &p) in ps[..3].iter().enumerate() {
        assert!(q.push_rw(&read_part(p, i as u64, 512), HANDLE, 0).unwrap());
    }
    q.kick();
    let ids: Vec<u64> = take(&mut peer).iter().map(Request::id).collect();
    assert_eq!(ids, [0, 1, 2]);

    // The backend answers the middle one first.
    let [r] = answer(&mut q, &mut peer, &[ok(1, BLKIF_OP_READ)])[..] else {
        panic!()
    };
    let d = done(q.complete(&r));
    assert_eq!(d.slot, SlotId(1));
    assert_eq!(d.busy.pending, ps[1]);
    assert_eq!(q.free_slots(), q.size() - 3, "answered, not yet released");
    q.release(d.slot);
    assert_eq!(q.free_slots(), q.size() - 2);

    assert!(q.push_rw(&read_part(ps[3], 9, 512), HANDLE, 0).unwrap());
    assert!(q
        .push_control(ps[4], BLKIF_OP_FLUSH_DISKCACHE, |wid| {
            RequestSlot::direct(BLKIF_OP_FLUSH_DISKCACHE, HANDLE, wid, 0, &[])
        })
        .unwrap());
    q.kick();
    let reqs = take(&mut peer);
    assert_eq!(reqs[0].id(), 1, "the freed slot goes out again first");
    assert_eq!(direct(&reqs[0]).sector, 9);
    assert_eq!(reqs[1].id(), 3);
    assert_eq!(q.in_flight(), 4);
}

#[test]
fn a_full_ring_takes_no_more_and_holds_nothing_for_the_refused_part() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(q.size() as u64 + 1);
    assert_eq!(q.size(), 32, "a one-page blkif ring");

    for &p in &ps[..q.size()] {
        assert!(q.push_rw(&read_part(p, 0, 512), HANDLE, 0).unwrap());
    }
    let before = (xen.accounting(FRONT), gt.in_use());
    assert!(!q.push_rw(&read_part(ps[32], 0, 512), HANDLE, 0).unwrap());
    let ctl = q.push_control(ps[32], BLKIF_OP_FLUSH_DISKCACHE, |wid| {
        RequestSlot::direct(BLKIF_OP_FLUSH_DISKCACHE, HANDLE, wid, 0, &[])
    });
    assert!(!ctl.unwrap());
    assert_eq!((xen.accounting(FRONT), gt.in_use()), before);
    assert_eq!(q.free_slots(), 0);
    q.kick();
    assert_eq!(take(&mut peer).len(), 32);
}

#[test]
fn misaligned_parts_are_refused_before_anything_is_taken() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [p] = pending_ids(1)[..] else { panic!() };
    let before = (xen.accounting(FRONT), gt.in_use());

    let data = pattern(1024, 0);
    let short = RwPart {
        len: 2048,
        ..write_part(p, 0, &data)
    };
    let too_long = read_part(p, 0, 12 * PAGE_SIZE);
    for (what, part, indirect) in [
        ("empty", read_part(p, 0, 0), 0),
        ("not whole sectors", read_part(p, 0, 1000), 0),
        ("data of another length", short, 0),
        ("12 segments, no indirect", too_long, 0),
        (
            "more than the indirect limit",
            read_part(p, 0, 33 * PAGE_SIZE),
            32,
        ),
    ] {
        assert_eq!(
            q.push_rw(&part, HANDLE, indirect).unwrap_err(),
            IoError::Misaligned,
            "{what}"
        );
    }
    q.kick();
    assert!(take(&mut peer).is_empty());
    assert_eq!((xen.accounting(FRONT), gt.in_use()), before);
    assert_eq!(q.free_slots(), q.size());
}

// ----- all or nothing -------------------------------------------------------------

#[test]
fn a_grant_exhausted_mid_part_pushes_nothing_and_every_page_comes_back() {
    // One grant frame: 504 references, nearly all of them taken below.
    let cfg = SimConfig {
        grant_frames: 1,
        ..SimConfig::default()
    };
    let xen = SimXen::with_config(cfg, false);
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [p] = pending_ids(1)[..] else { panic!() };

    // Leave two references: the third page of the part finds none.
    let mut hog = Vec::new();
    gt.alloc_batch(gt.capacity() - gt.in_use() - 2, &mut hog)
        .unwrap();
    let in_use = gt.in_use();
    let data = pattern(4 * PAGE_SIZE, 9);
    assert_eq!(
        q.push_rw(&write_part(p, 0, &data), HANDLE, 0).unwrap_err(),
        IoError::Grant(GrantError::Exhausted)
    );
    q.kick();
    assert!(take(&mut peer).is_empty(), "nothing on the ring");
    assert_eq!(peer.req_prod(), 0);
    assert_eq!(gt.in_use(), in_use, "every grant of the part ended");
    let acct = xen.accounting(FRONT);
    assert_eq!(acct.grants_active, 1, "only the ring is granted");
    assert_eq!(acct.pages, 1 + 3, "the three pages taken wait in the pool");
    assert_eq!((q.free_slots(), q.in_flight()), (q.size(), 0));

    // With references back, the same part goes out on the pooled pages
    // (one new page) in the slot the failed attempt did not keep.
    for g in hog {
        gt.free(g).unwrap();
    }
    assert!(q.push_rw(&write_part(p, 0, &data), HANDLE, 0).unwrap());
    assert_eq!(xen.accounting(FRONT).pages, 1 + 4);
    q.kick();
    let d = direct(&take(&mut peer)[0]);
    assert_eq!(d.id, 0);
    for (i, s) in d.segments().iter().enumerate() {
        let page = peer.read_grant(GrantRef(s.gref)).unwrap();
        assert_eq!(page, data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], "page {i}");
    }
}

#[test]
fn memory_exhausted_mid_part_pushes_nothing_and_every_page_comes_back() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    q.use_persistent_grants(8);
    let mut peer = attach(&xen, &q);
    let [p] = pending_ids(1)[..] else { panic!() };

    // Room for two of the part's three pages.
    xen.set_page_limit(FRONT, Some(xen.accounting(FRONT).pages + 2));
    let err = q
        .push_rw(&read_part(p, 0, 3 * PAGE_SIZE), HANDLE, 0)
        .unwrap_err();
    assert_eq!(err, IoError::Grant(GrantError::Hal(HalError::OutOfMemory)));
    q.kick();
    assert!(take(&mut peer).is_empty());
    let acct = xen.accounting(FRONT);
    assert_eq!(
        (acct.pages, acct.grants_active),
        (1 + 2, 1 + 2),
        "the two pages granted persistently wait in the pool, still granted"
    );
    xen.set_page_limit(FRONT, None);
    assert!(q
        .push_rw(&read_part(p, 0, 3 * PAGE_SIZE), HANDLE, 0)
        .unwrap());
    assert_eq!(xen.accounting(FRONT).pages, 1 + 3);
}

#[test]
fn a_broken_ring_refuses_parts_and_every_page_comes_back() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let peer = attach(&xen, &q);
    let ps = pending_ids(3);

    assert!(q.push_rw(&read_part(ps[0], 0, 512), HANDLE, 0).unwrap());
    q.kick();
    // Five responses to one request.
    peer.poke_rsp_prod(5);
    let v = Violation::ProducerOverrun { prod: 5, cons: 0 };
    assert_eq!(q.next_response(), Err(RingError::Protocol(v)));

    let before = (xen.accounting(FRONT), gt.in_use());
    let data = pattern(2 * PAGE_SIZE, 1);
    assert_eq!(
        q.push_rw(&write_part(ps[1], 0, &data), HANDLE, 0)
            .unwrap_err(),
        IoError::Broken(Broken::Protocol(v))
    );
    let ctl = q.push_control(ps[2], BLKIF_OP_FLUSH_DISKCACHE, |wid| {
        RequestSlot::direct(BLKIF_OP_FLUSH_DISKCACHE, HANDLE, wid, 0, &[])
    });
    assert_eq!(ctl.unwrap_err(), IoError::Broken(Broken::Protocol(v)));
    let after = xen.accounting(FRONT);
    assert_eq!(after.grants_active, before.0.grants_active);
    assert_eq!(gt.in_use(), before.1);
    assert_eq!(q.in_flight(), 1);
    q.kick();
    assert_eq!(peer.req_prod(), 1, "only the request before the break");
}

// ----- notifications ----------------------------------------------------------------

#[test]
fn kick_notifies_only_when_the_backends_req_event_asks_for_it() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(8);
    let push = |q: &mut Q<'_>, i: usize| {
        assert!(q.push_rw(&read_part(ps[i], 0, 512), HANDLE, 0).unwrap());
    };

    q.kick();
    assert_eq!(peer.notifications(), 0, "nothing pushed, nothing sent");

    // A fresh ring asks for the first request (req_event = 1).
    push(&mut q, 0);
    q.kick();
    assert_eq!(peer.notifications(), 1);
    assert!(peer.take_event());
    q.kick();
    assert_eq!(peer.notifications(), 1, "nothing new: no notification");

    // The backend takes it but does not ask again: no notification.
    assert_eq!(take(&mut peer).len(), 1);
    push(&mut q, 1);
    q.kick();
    assert_eq!(peer.notifications(), 1);
    assert!(!peer.take_event());

    // The final check before sleeping finds request 1 first; the next one
    // arms req_event = req_cons + 1 and the push past it notifies.
    assert!(peer.final_check().unwrap());
    assert_eq!(take(&mut peer).len(), 1);
    assert!(!peer.final_check().unwrap());
    assert_eq!(peer.req_event(), 3);
    push(&mut q, 2);
    push(&mut q, 3);
    q.kick();
    assert_eq!(peer.notifications(), 2, "one kick, one notification");
    assert!(peer.take_event());

    // A backend that asks to be woken only at request 7 is not woken at 5.
    assert_eq!(take(&mut peer).len(), 2);
    peer.set_req_event(7);
    push(&mut q, 4);
    q.kick();
    assert_eq!(peer.notifications(), 2);
    push(&mut q, 5);
    push(&mut q, 6);
    q.kick();
    assert_eq!(peer.notifications(), 3, "req_prod passed 7");
}

#[test]
fn next_response_asks_for_an_event_before_it_reports_none() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(2);
    for &p in &ps {
        assert!(q.push_rw(&read_part(p, 0, 512), HANDLE, 0).unwrap());
    }
    q.kick();
    assert_eq!(take(&mut peer).len(), 2);

    peer.push_response(&ok(0, BLKIF_OP_READ)).unwrap();
    assert!(peer.publish().unwrap(), "rsp_event starts at 1");
    assert!(q.consume_event());
    assert!(!q.consume_event(), "consumed");
    assert_eq!(q.next_response().unwrap(), Some(ok(0, BLKIF_OP_READ)));
    assert_eq!(q.next_response().unwrap(), None);
    assert_eq!(peer.rsp_event(), 2, "asks for the next response");
    assert!(peer.respond(&ok(1, BLKIF_OP_READ)).unwrap());
    assert!(q.consume_event());
    assert_eq!(q.next_response().unwrap(), Some(ok(1, BLKIF_OP_READ)));
}

// ----- complete() -----------------------------------------------------------------

/// A queue with read `ids[0]` in slot 0 and read `ids[1]` in slot 1, both
/// taken by the backend; runs `check` on it.
fn with_two_reads(check: impl FnOnce(&SimXen, &mut Q<'_>, &mut Peer, [u32; 2])) {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    for &p in &pending_ids(2) {
        assert!(q.push_rw(&read_part(p, 0, 512), HANDLE, 0).unwrap());
    }
    q.kick();
    let reqs = take(&mut peer);
    let g = [
        direct(&reqs[0]).segments()[0].gref,
        direct(&reqs[1]).segments()[0].gref,
    ];
    check(&xen, &mut q, &mut peer, g);
}

/// `bad` is refused with `expect` and changes nothing: both slots stay in
/// flight with their grants, and slot 0 then completes normally.
fn refused_and_harmless(bad: BlkifResponse, expect: Violation) {
    with_two_reads(|xen, q, peer, g| {
        let before = xen.accounting(FRONT);
        let got = answer(q, peer, &[bad, ok(0, BLKIF_OP_READ)]);
        assert_eq!(violation(q.complete(&got[0])), expect);
        assert_eq!((q.in_flight(), q.free_slots()), (2, q.size() - 2));
        assert_eq!(xen.accounting(FRONT), before);
        assert!(granted(peer, g[0]) && granted(peer, g[1]));
        let d = done(q.complete(&got[1]));
        assert_eq!(
            (d.slot, d.busy.op, d.status),
            (SlotId(0), BLKIF_OP_READ, Ok(()))
        );
        q.release(d.slot);
        assert!(!granted(peer, g[0]), "ended once answered properly");
        assert!(granted(peer, g[1]));
    });
}

#[test]
fn an_id_outside_the_shadow_is_bad_id_and_changes_nothing() {
    refused_and_harmless(ok(32, BLKIF_OP_READ), Violation::BadId(32));
    refused_and_harmless(ok(u64::MAX, BLKIF_OP_READ), Violation::BadId(u64::MAX));
    refused_and_harmless(
        ok(u64::from(u32::MAX) + 1, BLKIF_OP_READ),
        Violation::BadId(1 << 32),
    );
}

#[test]
fn an_id_not_in_flight_is_refused_and_changes_nothing() {
    refused_and_harmless(ok(5, BLKIF_OP_READ), Violation::NotInFlight(5));
}

#[test]
fn a_duplicate_response_is_not_in_flight_before_and_after_release() {
    with_two_reads(|xen, q, peer, g| {
        let got = answer(q, peer, &[ok(0, BLKIF_OP_READ), ok(0, BLKIF_OP_READ)]);
        let d = done(q.complete(&got[0]));
        let answered = xen.accounting(FRONT);
        // Answered, pages held for the copy-out: a second answer is refused.
        assert_eq!(violation(q.complete(&got[1])), Violation::NotInFlight(0));
        assert_eq!(xen.accounting(FRONT), answered);
        q.release(d.slot);
        assert_eq!(violation(q.complete(&got[1])), Violation::NotInFlight(0));
        assert_eq!((q.in_flight(), q.free_slots()), (1, q.size() - 1));
        assert!(granted(peer, g[1]));
    });
}

#[test]
fn a_wrong_operation_is_refused_and_changes_nothing() {
    refused_and_harmless(
        ok(0, BLKIF_OP_WRITE),
        Violation::WrongOperation {
            id: 0,
            sent: BLKIF_OP_READ,
            got: BLKIF_OP_WRITE,
        },
    );
}

#[test]
fn an_unknown_status_is_refused_and_changes_nothing() {
    for status in [1, -3, i16::MIN] {
        refused_and_harmless(
            rsp(0, BLKIF_OP_READ, status),
            Violation::UnknownStatus(status),
        );
    }
}

#[test]
fn eopnotsupp_turns_off_a_control_feature_and_fails_data_as_an_io_error() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(6);

    for (&p, op) in ps
        .iter()
        .zip([BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER])
    {
        assert!(q
            .push_control(p, op, |wid| RequestSlot::direct(op, HANDLE, wid, 0, &[]))
            .unwrap());
    }
    assert!(q
        .push_control(ps[2], BLKIF_OP_DISCARD, |wid| {
            RequestSlot::discard(0, HANDLE, wid, 4096, 2048)
        })
        .unwrap());
    let data = pattern(512, 0);
    assert!(q.push_rw(&read_part(ps[3], 0, 512), HANDLE, 0).unwrap());
    assert!(q.push_rw(&write_part(ps[4], 0, &data), HANDLE, 0).unwrap());
    assert!(q.push_rw(&read_part(ps[5], 0, 512), HANDLE, 0).unwrap());
    q.kick();
    let reqs = take(&mut peer);
    let flush = direct(&reqs[0]);
    assert_eq!(
        (flush.operation, flush.id, flush.segments().len()),
        (3, 0, 0)
    );
    assert_eq!(direct(&reqs[1]).operation, BLKIF_OP_WRITE_BARRIER);
    match reqs[2] {
        Request::Discard(d) => assert_eq!((d.id, d.sector, d.nr_sectors), (2, 4096, 2048)),
        other => panic!("{other:?}"),
    }

    let ops = [
        BLKIF_OP_FLUSH_DISKCACHE,
        BLKIF_OP_WRITE_BARRIER,
        BLKIF_OP_DISCARD,
        BLKIF_OP_READ,
        BLKIF_OP_WRITE,
    ];
    let mut rsps: Vec<BlkifResponse> = ops
        .iter()
        .enumerate()
        .map(|(i, &op)| rsp(i as u64, op, BLKIF_RSP_EOPNOTSUPP))
        .collect();
    rsps.push(rsp(5, BLKIF_OP_READ, BLKIF_RSP_ERROR));
    let got = answer(&mut q, &mut peer, &rsps);
    let statuses: Vec<Result<(), IoError>> =
        got.iter().map(|r| done(q.complete(r)).status).collect();
    assert_eq!(
        statuses,
        [
            Err(IoError::Unsupported(Feature::FlushCache)),
            Err(IoError::Unsupported(Feature::Barrier)),
            Err(IoError::Unsupported(Feature::Discard)),
            Err(IoError::Backend),
            Err(IoError::Backend),
            Err(IoError::Backend),
        ]
    );
    assert_eq!(q.in_flight(), 6, "answered, not released");
    for i in 0..6 {
        q.release(SlotId(i));
    }
    assert_eq!(q.free_slots(), q.size());
}

// ----- grants: per request, persistent, still mapped -----------------------------

#[test]
fn a_per_request_grant_still_mapped_after_the_response_is_a_violation() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [p] = pending_ids(1)[..] else { panic!() };

    assert!(q
        .push_rw(&read_part(p, 0, 2 * PAGE_SIZE), HANDLE, 0)
        .unwrap());
    q.kick();
    let g = grefs(direct(&take(&mut peer)[0]).segments());
    let keep = peer.map_grant(GrantRef(g[1]), true).unwrap();
    let [r] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_READ)])[..] else {
        panic!()
    };
    assert_eq!(violation(q.complete(&r)), Violation::StillMapped(0));
    assert_eq!(
        (q.in_flight(), q.free_slots()),
        (0, q.size()),
        "the slot is out of flight"
    );
    assert!(
        !granted(&peer, g[0]),
        "the grant the backend let go of ended"
    );
    assert_eq!(gt.quarantined_pages_of(VDEV), 1, "the mapped page");
    assert_eq!(gt.quarantined_pages_of(VDEV + 1), 0);
    assert_eq!(xen.accounting(FRONT).pages, 1 + 2);

    drop(keep);
    assert_eq!(gt.retry_quarantine(), 1);
    assert_eq!(gt.quarantined_pages_of(VDEV), 0);
    assert_eq!(
        xen.accounting(FRONT).pages,
        1 + 1,
        "the other page is pooled"
    );
}

#[test]
fn the_persistent_budget_is_a_hard_cap_and_parts_wait_for_it() {
    // blkback keeps every grant it is given mapped (up to 1056 per ring),
    // so with persistent grants a queue only ever grants its budget: a part
    // that needs more pages than are left waits instead.
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    const CAP: usize = 3;
    q.use_persistent_grants(CAP);
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(10);

    let data = pattern(2 * PAGE_SIZE, 1);
    assert!(q.push_rw(&write_part(ps[0], 0, &data), HANDLE, 0).unwrap());
    let before = xen.accounting(FRONT);
    assert!(
        !q.push_rw(&read_part(ps[1], 0, 2 * PAGE_SIZE), HANDLE, 0)
            .unwrap(),
        "one page of the budget is left: the part waits"
    );
    assert_eq!(xen.accounting(FRONT), before, "and took nothing");
    q.kick();
    let g0 = grefs(direct(&take(&mut peer)[0]).segments());
    for &gref in &g0 {
        // A write's pages too are granted writable: blkback maps every
        // grant writable, hoping to keep it.
        drop(peer.map_grant(GrantRef(gref), true).unwrap());
    }
    let [r] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_WRITE)])[..] else {
        panic!()
    };
    let d = done(q.complete(&r));
    q.release(d.slot);
    assert!(
        g0.iter().all(|&g| granted(&peer, g)),
        "persistent: still granted"
    );

    let mut kept: Option<Vec<u32>> = None;
    for round in 0..4 {
        let id = ps[2 + round];
        assert!(q
            .push_rw(&read_part(id, 0, CAP * PAGE_SIZE), HANDLE, 0)
            .unwrap());
        q.kick();
        let reqs = take(&mut peer);
        let mut g = grefs(direct(&reqs[0]).segments());
        assert!(
            g0.iter().all(|x| g.contains(x)),
            "round {round}: pooled pages reused"
        );
        assert_eq!(xen.accounting(FRONT).grants_active, 1 + CAP);
        let [r] = answer(&mut q, &mut peer, &[ok(reqs[0].id(), BLKIF_OP_READ)])[..] else {
            panic!()
        };
        let d = done(q.complete(&r));
        q.release(d.slot);
        g.sort_unstable();
        match &kept {
            None => kept = Some(g),
            Some(k) => assert_eq!(&g, k, "round {round}: the same grants again"),
        }
        assert_eq!(xen.accounting(FRONT).grants_active, 1 + CAP);
    }
    assert!(
        !q.push_rw(&read_part(ps[9], 0, (CAP + 1) * PAGE_SIZE), HANDLE, 0)
            .unwrap(),
        "a part larger than the budget never goes (the connection cuts parts to fit)"
    );
}

#[test]
fn purge_idle_frees_only_idle_persistent_pages_the_backend_no_longer_maps() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    q.use_persistent_grants(5);
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(2);

    // Five persistent pages, all idle afterwards.
    let data = pattern(5 * PAGE_SIZE, 0);
    assert!(q.push_rw(&write_part(ps[0], 0, &data), HANDLE, 0).unwrap());
    q.kick();
    let g = grefs(direct(&take(&mut peer)[0]).segments());
    let [r] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_WRITE)])[..] else {
        panic!()
    };
    let d = done(q.complete(&r));
    q.release(d.slot);
    let persistent: Vec<u32> = g.iter().copied().filter(|&x| granted(&peer, x)).collect();
    assert_eq!(persistent.len(), 5);
    assert_eq!(xen.accounting(FRONT).pages, 1 + 5);

    // The backend keeps one persistent grant mapped (blkback's cache), and
    // two pooled pages go back in flight.
    let kept = peer.map_grant(GrantRef(persistent[0]), true).unwrap();
    assert!(q
        .push_rw(&read_part(ps[1], 0, 2 * PAGE_SIZE), HANDLE, 0)
        .unwrap());
    q.kick();
    let busy = grefs(direct(&take(&mut peer)[0]).segments());
    let idle: Vec<u32> = persistent
        .iter()
        .copied()
        .filter(|x| *x != persistent[0] && !busy.contains(x))
        .collect();
    let unmapped_idle = idle.len();
    assert!(
        unmapped_idle >= 2,
        "{busy:?} uses at most one persistent page"
    );

    assert_eq!(q.purge_idle(), unmapped_idle);
    for &x in &idle {
        assert!(!granted(&peer, x), "idle and unmapped: ended");
    }
    assert!(granted(&peer, persistent[0]), "still mapped: kept");
    for &x in &busy {
        assert!(granted(&peer, x), "in flight: kept");
    }
    assert_eq!(xen.accounting(FRONT).pages, 1 + 5 - unmapped_idle);
    assert_eq!(q.purge_idle(), 0, "nothing more to give back yet");

    let [r] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_READ)])[..] else {
        panic!()
    };
    let d = done(q.complete(&r));
    q.release(d.slot);
    drop(kept);
    let freed = q.purge_idle();
    assert_eq!(freed, 5 - unmapped_idle, "the rest of the persistent pages");
    assert_eq!(xen.accounting(FRONT).grants_active, 1);
    assert_eq!(xen.accounting(FRONT).pages, 1, "only the ring is left");
}

// ----- copying out and giving back --------------------------------------------------

#[test]
fn read_data_copies_exactly_the_bytes_of_the_part() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [p] = pending_ids(1)[..] else { panic!() };

    let len = PAGE_SIZE + 1024;
    assert!(q.push_rw(&read_part(p, 0, len), HANDLE, 0).unwrap());
    q.kick();
    let g = grefs(direct(&take(&mut peer)[0]).segments());
    // The backend fills both pages whole; only `len` bytes are the part's.
    let disk = pattern(2 * PAGE_SIZE, 0x5a);
    for (i, &gref) in g.iter().enumerate() {
        let m = peer.map_grant(GrantRef(gref), true).unwrap();
        m.write(0, &disk[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])
            .unwrap();
    }
    let [r] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_READ)])[..] else {
        panic!()
    };
    let d = done(q.complete(&r));
    assert_eq!((d.busy.offset, d.busy.len), (0, len));
    for &gref in &g {
        assert!(
            !granted(&peer, gref),
            "grants end before the data is looked at"
        );
    }

    let mut buf = vec![0xee; 3 * PAGE_SIZE];
    q.read_data(d.slot, &mut buf[512..512 + len]).unwrap();
    assert_eq!(buf[512..512 + len], disk[..len]);
    assert!(buf[..512]
        .iter()
        .chain(&buf[512 + len..])
        .all(|&b| b == 0xee));

    let mut long = vec![0; 2 * PAGE_SIZE + 512];
    assert_eq!(q.read_data(d.slot, &mut long), Err(IoError::OutOfRange));
    q.release(d.slot);
    assert_eq!(
        q.read_data(d.slot, &mut [0; 512]),
        Err(IoError::OutOfRange),
        "a released slot has no pages"
    );
    assert_eq!(
        q.read_data(SlotId(99), &mut [0; 512]),
        Err(IoError::OutOfRange)
    );
}

#[test]
fn release_returns_pages_to_the_pool_and_the_slot_to_the_free_list_once() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(2);

    assert!(q
        .push_rw(&read_part(ps[0], 0, 3 * PAGE_SIZE), HANDLE, 0)
        .unwrap());
    let busy = xen.accounting(FRONT);
    assert_eq!((busy.pages, busy.grants_active), (1 + 3, 1 + 3));
    q.release(SlotId(0));
    assert_eq!(q.in_flight(), 1, "a slot in flight is not released");
    assert_eq!(xen.accounting(FRONT), busy);

    q.kick();
    take(&mut peer);
    let [r] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_READ)])[..] else {
        panic!()
    };
    let d = done(q.complete(&r));
    q.release(d.slot);
    q.release(d.slot);
    assert_eq!((q.in_flight(), q.free_slots()), (0, q.size()));
    let idle = xen.accounting(FRONT);
    assert_eq!(
        (idle.pages, idle.grants_active),
        (1 + 3, 1),
        "pages pooled, per-request grants ended"
    );

    let data = pattern(3 * PAGE_SIZE, 2);
    assert!(q.push_rw(&write_part(ps[1], 0, &data), HANDLE, 0).unwrap());
    assert_eq!(
        xen.accounting(FRONT).pages,
        1 + 3,
        "the pooled pages are reused"
    );
    q.kick();
    assert_eq!(take(&mut peer)[0].id(), 0);
    // Had the double release listed slot 0 twice, the ring would run out of
    // free slots before the shadow does.
    let more = pending_ids(q.size() as u64);
    let mut pushed = 1;
    for &p in &more {
        if !q.push_rw(&read_part(p, 0, 512), HANDLE, 0).unwrap() {
            break;
        }
        pushed += 1;
    }
    assert_eq!(pushed, q.size());
}

#[test]
fn idle_private_pages_are_kept_up_to_a_bound() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(q.size() as u64);

    let part = BLKIF_MAX_SEGMENTS_PER_REQUEST * PAGE_SIZE;
    for &p in &ps {
        assert!(q.push_rw(&read_part(p, 0, part), HANDLE, 0).unwrap());
    }
    let n = q.size();
    assert_eq!(
        xen.accounting(FRONT).pages,
        1 + n * BLKIF_MAX_SEGMENTS_PER_REQUEST
    );
    q.kick();
    take(&mut peer);
    let rsps: Vec<BlkifResponse> = (0..n as u64).map(|i| ok(i, BLKIF_OP_READ)).collect();
    for r in answer(&mut q, &mut peer, &rsps) {
        let d = done(q.complete(&r));
        q.release(d.slot);
    }
    let acct = xen.accounting(FRONT);
    assert_eq!(acct.pages, 1 + n + IDLE_PRIVATE_PAGES);
    assert_eq!(acct.grants_active, 1);
}

// ----- taking the queue down ----------------------------------------------------------

#[test]
fn abort_all_retires_every_slot_in_flight_and_reports_each_once() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [a, b, c, d] = pending_ids(4)[..] else {
        panic!()
    };

    let data = pattern(512, 1);
    assert!(q.push_rw(&read_part(a, 0, 512), HANDLE, 0).unwrap());
    let second = RwPart {
        offset: 512,
        ..read_part(a, 1, 512)
    };
    assert!(q.push_rw(&second, HANDLE, 0).unwrap());
    assert!(q.push_rw(&write_part(b, 0, &data), HANDLE, 0).unwrap());
    assert!(q
        .push_control(c, BLKIF_OP_FLUSH_DISKCACHE, |wid| {
            RequestSlot::direct(BLKIF_OP_FLUSH_DISKCACHE, HANDLE, wid, 0, &[])
        })
        .unwrap());
    assert!(q.push_rw(&read_part(d, 0, 512), HANDLE, 0).unwrap());
    q.kick();
    let reqs = take(&mut peer);
    let g: Vec<u32> = [0, 1, 2]
        .iter()
        .map(|&i| direct(&reqs[i]).segments()[0].gref)
        .collect();

    // d is answered (its pages held for the copy-out); a's second part
    // stays mapped by the backend.
    let [r] = answer(&mut q, &mut peer, &[ok(4, BLKIF_OP_READ)])[..] else {
        panic!()
    };
    let answered = done(q.complete(&r));
    let keep = peer.map_grant(GrantRef(g[1]), true).unwrap();

    let mut reported = Vec::new();
    q.abort_all(|p| reported.push(p));
    assert_eq!(reported, [a, a, b, c], "each slot in flight, once");
    assert_eq!(q.in_flight(), 1, "the answered slot waits for its release");
    assert!(!granted(&peer, g[0]) && !granted(&peer, g[2]));
    assert_eq!(gt.quarantined_pages_of(VDEV), 1, "the page still mapped");

    // A late answer to an aborted request matches nothing.
    let [late] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_READ)])[..] else {
        panic!()
    };
    assert_eq!(violation(q.complete(&late)), Violation::NotInFlight(0));

    q.release(answered.slot);
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.free_slots(), 0, "a retired queue takes no requests");
    q.abort_all(|p| reported.push(p));
    assert_eq!(reported.len(), 4, "nothing left to abort");
    drop(keep);
    assert_eq!(gt.retry_quarantine(), 1);
}

#[test]
fn revoke_ring_ends_the_ring_grants_and_the_dropped_queue_frees_everything() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 1, VDEV).unwrap();
    let ring: Vec<GrantRef> = q.ring_grefs().to_vec();
    assert_eq!((ring.len(), q.size()), (2, 64));
    let mut peer = attach(&xen, &q);
    assert_eq!(peer.size(), 64);
    let [p] = pending_ids(1)[..] else { panic!() };
    assert!(q.push_rw(&read_part(p, 0, 512), HANDLE, 0).unwrap());
    q.kick();
    take(&mut peer);
    let [r] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_READ)])[..] else {
        panic!()
    };
    let d = done(q.complete(&r));
    q.release(d.slot);

    assert!(
        matches!(q.revoke_ring(), Err(GrantError::InUse(_))),
        "the backend still maps the ring"
    );
    peer.detach();
    q.revoke_ring().unwrap();
    for &g in &ring {
        assert_eq!(
            xen.map_grant(BACK, FRONT, g, false).unwrap_err(),
            HalError::Hypercall(-EPERM)
        );
    }
    assert!(Peer::attach(&xen, BACK, FRONT, &ring, q.port()).is_err());
    assert_eq!(
        gt.in_use(),
        2,
        "the references stay allocated until the drop"
    );

    drop(q);
    assert_eq!(gt.in_use(), 0);
    assert_eq!(gt.quarantined_pages(), 0);
    assert_eq!(xen.accounting(FRONT), Accounting::default());
    assert_eq!(xen.accounting(BACK).mappings_held, 0);
}

#[test]
fn dropping_the_queue_quarantines_what_the_backend_still_maps() {
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    q.use_persistent_grants(3);
    let mut peer = attach(&xen, &q);
    let ps = pending_ids(2);

    // Two persistent pages, idle; then a read in flight on both of them and
    // a third, persistent too.
    let data = pattern(2 * PAGE_SIZE, 4);
    assert!(q.push_rw(&write_part(ps[0], 0, &data), HANDLE, 0).unwrap());
    q.kick();
    take(&mut peer);
    let [r] = answer(&mut q, &mut peer, &[ok(0, BLKIF_OP_WRITE)])[..] else {
        panic!()
    };
    let d = done(q.complete(&r));
    q.release(d.slot);
    assert!(q
        .push_rw(&read_part(ps[1], 0, 3 * PAGE_SIZE), HANDLE, 0)
        .unwrap());
    q.kick();
    let g = grefs(direct(&take(&mut peer)[0]).segments());
    // The backend maps two of them (the new one and an old one) and the
    // ring, and never lets go before the queue is dropped.
    let persistent = *g.iter().find(|&&x| x != g[2]).unwrap();
    let keep = [
        peer.map_grant(GrantRef(g[2]), true).unwrap(),
        peer.map_grant(GrantRef(persistent), true).unwrap(),
    ];
    let before = xen.accounting(FRONT);
    assert_eq!((before.pages, before.ports_open), (1 + 3, 1));

    drop(q);
    assert_eq!(
        gt.quarantined_pages_of(VDEV),
        1 + 2,
        "the ring and two pages"
    );
    let acct = xen.accounting(FRONT);
    assert_eq!(
        (acct.pages, acct.grants_active, acct.ports_open),
        (3, 3, 0),
        "the unmapped page freed, the channel closed"
    );
    assert_eq!((acct.bad_frees, acct.leaked_pages), (0, 0));
    assert_eq!(gt.retry_quarantine(), 0, "still mapped");

    drop(keep);
    drop(peer);
    assert_eq!(gt.retry_quarantine(), 3);
    assert_eq!(gt.in_use(), 0);
    assert_eq!(xen.accounting(FRONT), Accounting::default());
    assert_eq!(xen.accounting(BACK), Accounting::default());
}

#[test]
fn after_abort_all_nothing_aborted_is_published_and_the_ring_takes_no_more() {
    // Found by these tests: abort_all used to leave a request pushed but
    // not yet published in the ring's private producer index, so the next
    // kick published it under a wire id the shadow had handed out again.
    let xen = SimXen::new();
    let hal = xen.hal(FRONT);
    let gt = GrantTable::new(&hal).unwrap();
    let mut q = Q::new(&hal, &gt, BACK, 0, VDEV).unwrap();
    let mut peer = attach(&xen, &q);
    let [a, b] = pending_ids(2)[..] else { panic!() };

    assert!(q.push_rw(&read_part(a, 1, 512), HANDLE, 0).unwrap());
    let mut reported = Vec::new();
    q.abort_all(|p| reported.push(p));
    assert_eq!(reported, [a]);
    assert_eq!((q.free_slots(), q.in_flight()), (0, 0));
    assert!(
        !q.push_rw(&read_part(b, 2, 512), HANDLE, 0).unwrap(),
        "retired"
    );
    q.kick();
    assert!(
        take(&mut peer).is_empty(),
        "the aborted request never went out"
    );
}
