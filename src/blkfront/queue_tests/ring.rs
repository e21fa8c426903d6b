//! What goes on the ring: parts, ids, all-or-nothing pushes, notifications.

use super::*;

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
