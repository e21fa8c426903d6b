//! Grants and pages: per request, persistent, still mapped; copying out and giving back.

use super::*;

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
