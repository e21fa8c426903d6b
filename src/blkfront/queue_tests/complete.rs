//! `complete()`: validating each response against the shadow.

use super::*;

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
