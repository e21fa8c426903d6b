//! Both ends together: round trips at every order, runs across the `u32`
//! wrap, an exhaustive check of the notification arithmetic against models
//! of `io/ring.h`, and a front and a back end in two threads.

use core::sync::atomic::Ordering::SeqCst;
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use std::vec::Vec;

use super::RingError;
use super::{ring_slots, BackRing, FrontRing, TestPages, MAX_RING_ORDER};
use crate::abi::blkif::{BlkifRequest, BlkifResponse, BLKIF_OP_READ, BLKIF_RSP_OKAY};

type Req = [u64; 14];
type Rsp = [u64; 2];

/// A front end on fresh memory and the back end attached to it.
fn pair<Q: Copy, P: Copy>(
    pages: &TestPages,
    order: u32,
    start: u32,
) -> (FrontRing<Q, P>, BackRing<Q, P>) {
    // SAFETY: `pages` holds `1 << order` zeroed pages and outlives both ends;
    // the two ends are each other's only peer; the entry types are plain
    // words (or blkif structs of integers), valid for every bit pattern.
    unsafe {
        let front = FrontRing::init_at(pages.ptr(), order, start).expect("order");
        let back = BackRing::attach(pages.ptr(), order).expect("order");
        (front, back)
    }
}

fn blk_req(id: u64) -> BlkifRequest {
    BlkifRequest {
        operation: BLKIF_OP_READ,
        nr_segments: 1,
        handle: 51712,
        id,
        sector_number: id * 8,
        ..BlkifRequest::default()
    }
}

#[test]
fn every_order_fills_drains_and_reuses_all_slots() {
    for order in 0..=MAX_RING_ORDER {
        let pages = TestPages::new(order);
        let (mut front, mut back) = pair::<BlkifRequest, BlkifResponse>(&pages, order, 0);
        let size = ring_slots(order, 112, 16) as u32;
        assert_eq!(front.size(), size);
        assert_eq!(back.size(), size);
        let mut next_id = 0u64;
        for round in 0..2 {
            let mut pushed = 0;
            loop {
                match front.push_request(&blk_req(next_id + pushed)) {
                    Ok(()) => pushed += 1,
                    Err(e) => {
                        assert_eq!(e, RingError::Full);
                        break;
                    }
                }
            }
            assert_eq!(pushed, u64::from(size), "order {order} round {round}");
            // Round 0: req_event is 1 from SHARED_RING_INIT; round 1: the back
            // end's final check re-armed it. Either way the back end sleeps.
            assert!(front.push_requests_and_check_notify());
            let mut expect = next_id;
            let taken = back.poll_requests(|r| {
                assert_eq!(r, blk_req(expect));
                expect += 1;
            });
            assert_eq!(taken, Ok(size));
            for i in 0..pushed {
                let rsp = BlkifResponse {
                    id: next_id + i,
                    operation: BLKIF_OP_READ,
                    status: BLKIF_RSP_OKAY,
                };
                back.push_response(&rsp).expect("taken");
            }
            assert_eq!(
                back.push_response(&BlkifResponse::default()),
                Err(RingError::Full)
            );
            assert!(back.push_responses_and_check_notify());
            let mut expect = next_id;
            let got = front.poll_responses(|r| {
                assert_eq!((r.id, r.status), (expect, BLKIF_RSP_OKAY));
                expect += 1;
            });
            assert_eq!(got, Ok(size));
            assert_eq!(front.free_requests(), size);
            assert_eq!(front.final_check_for_responses(), Ok(false));
            assert_eq!(back.final_check_for_requests(), Ok(false));
            next_id += pushed;
        }
    }
}

#[test]
fn a_ring_runs_across_the_u32_wrap() {
    let start = u32::MAX - 40;
    let pages = TestPages::new(0);
    let (mut front, mut back) = pair::<Req, Rsp>(&pages, 0, start);
    let total: u64 = if cfg!(miri) { 120 } else { 400 };
    let (mut sent, mut served, mut received) = (0u64, 0u64, 0u64);
    let mut batch = 1u64;
    while received < total {
        let want = batch
            .min(u64::from(front.free_requests()))
            .min(total - sent);
        for _ in 0..want {
            front.push_request(&[sent; 14]).expect("room");
            sent += 1;
        }
        front.push_requests_and_check_notify();
        // The back end answers all but the newest request of each batch, so
        // responses lag requests and the two indices wrap at different times.
        let mut taken = Vec::new();
        back.poll_requests(|r| taken.push(r[0])).expect("valid");
        for id in taken {
            assert_eq!(id, served);
            served += 1;
            back.push_response(&[id, !id]).expect("taken");
        }
        back.push_responses_and_check_notify();
        front
            .poll_responses(|r| {
                assert_eq!(r, [received, !received]);
                received += 1;
            })
            .expect("valid");
        batch = batch % 31 + 7;
    }
    let end = start.wrapping_add(total as u32);
    assert!(end < start, "the run crossed the wrap");
    assert_eq!((front.req_prod_pvt(), front.rsp_cons()), (end, end));
    assert_eq!((back.req_cons(), back.rsp_prod_pvt()), (end, end));
    assert_eq!(pages.header().req_prod.load(SeqCst), end);
    assert_eq!(pages.header().rsp_prod.load(SeqCst), end);
}

// ----- the notification arithmetic, exhaustively over small windows --------

/// Bases around which indices are placed: zero, the middle, and the wrap.
const BASES: [u32; 5] = [0, 1000, 0x7fff_fffe, u32::MAX - 3, u32::MAX];

fn bases() -> &'static [u32] {
    if cfg!(miri) {
        &BASES[2..]
    } else {
        &BASES
    }
}

/// The producer moved from `old` to `new`; the consumer asked to be woken
/// when the producer reaches `event`. Model 1: walk the published indices.
fn model_walk(old: u32, new: u32, event: u32) -> bool {
    let mut idx = old;
    while idx != new {
        idx = idx.wrapping_add(1);
        if idx == event {
            return true;
        }
    }
    false
}

/// Model 2: the ring.h expression, evaluated in 64 bits modulo 2^32.
fn model_ring_h(old: u32, new: u32, event: u32) -> bool {
    let m = 1u64 << 32;
    let d_event = (u64::from(new) + m - u64::from(event)) % m;
    let d_old = (u64::from(new) + m - u64::from(old)) % m;
    d_event < d_old
}

#[test]
fn push_requests_notify_matches_both_models() {
    let pages = TestPages::new(0);
    let (k2max, emax) = if cfg!(miri) { (3u32, 5i64) } else { (6, 9) };
    let mut cases = 0u32;
    for &base in bases() {
        for off in 0..3u32 {
            let start = base.wrapping_add(off);
            for k1 in 0..3u32 {
                for k2 in 0..=k2max {
                    for e in -3..=emax {
                        let event = start.wrapping_add(e as u32);
                        let (mut front, _back) = pair::<Req, Rsp>(&pages, 0, start);
                        for i in 0..k1 + k2 {
                            front.push_request(&[u64::from(i); 14]).expect("room");
                            if i + 1 == k1 {
                                front.push_requests_and_check_notify();
                            }
                        }
                        let old = start.wrapping_add(k1);
                        let new = old.wrapping_add(k2);
                        pages.header().req_event.store(event, SeqCst);
                        let got = front.push_requests_and_check_notify();
                        let want = model_walk(old, new, event);
                        assert_eq!(want, model_ring_h(old, new, event));
                        assert_eq!(got, want, "old {old:#x} new {new:#x} event {event:#x}");
                        assert_eq!(pages.header().req_prod.load(SeqCst), new);
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 100);
}

#[test]
fn push_responses_notify_matches_both_models() {
    let pages = TestPages::new(0);
    let (k2max, emax) = if cfg!(miri) { (3u32, 5i64) } else { (6, 9) };
    for &base in bases() {
        for off in 0..3u32 {
            let start = base.wrapping_add(off);
            for k1 in 0..3u32 {
                for k2 in 0..=k2max {
                    for e in -3..=emax {
                        let event = start.wrapping_add(e as u32);
                        let (mut front, mut back) = pair::<Req, Rsp>(&pages, 0, start);
                        for i in 0..k1 + k2 {
                            front.push_request(&[u64::from(i); 14]).expect("room");
                        }
                        front.push_requests();
                        for i in 0..k1 + k2 {
                            back.poll_request().expect("valid").expect("published");
                            back.push_response(&[u64::from(i), 0]).expect("taken");
                            if i + 1 == k1 {
                                back.push_responses_and_check_notify();
                            }
                        }
                        let old = start.wrapping_add(k1);
                        let new = old.wrapping_add(k2);
                        pages.header().rsp_event.store(event, SeqCst);
                        let got = back.push_responses_and_check_notify();
                        let want = model_walk(old, new, event);
                        assert_eq!(want, model_ring_h(old, new, event));
                        assert_eq!(got, want, "old {old:#x} new {new:#x} event {event:#x}");
                    }
                }
            }
        }
    }
}

/// `RING_FINAL_CHECK_FOR_RESPONSES` against its model: with `p` responses
/// published and `c` taken, it reports work iff `p > c`, arms
/// `rsp_event = rsp_cons + 1` iff idle, and then the back end's next
/// non-empty push notifies iff the consumer went idle (no lost wake-up,
/// no spurious one).
#[test]
fn final_check_for_responses_matches_the_model() {
    let pages = TestPages::new(0);
    const N: u32 = 5;
    for &base in bases() {
        for off in 0..3u32 {
            let start = base.wrapping_add(off);
            for p in 0..=N {
                for c in 0..=p {
                    for m in 0..=N - p {
                        let (mut front, mut back) = pair::<Req, Rsp>(&pages, 0, start);
                        for i in 0..N {
                            front.push_request(&[u64::from(i); 14]).expect("room");
                        }
                        front.push_requests();
                        assert_eq!(back.poll_requests(|_| ()), Ok(N));
                        for i in 0..p {
                            back.push_response(&[u64::from(i), 0]).expect("taken");
                        }
                        back.push_responses();
                        for _ in 0..c {
                            front.poll_response().expect("valid").expect("published");
                        }
                        let sentinel = start.wrapping_add(N + 7);
                        pages.header().rsp_event.store(sentinel, SeqCst);
                        let work = front.final_check_for_responses().expect("valid");
                        assert_eq!(work, p > c, "start {start:#x} p {p} c {c}");
                        let event = pages.header().rsp_event.load(SeqCst);
                        let armed = start.wrapping_add(c + 1);
                        assert_eq!(event, if p > c { sentinel } else { armed });
                        for i in 0..m {
                            back.push_response(&[u64::from(p + i), 0]).expect("taken");
                        }
                        let old = start.wrapping_add(p);
                        let new = old.wrapping_add(m);
                        let notify = back.push_responses_and_check_notify();
                        assert_eq!(notify, model_walk(old, new, event));
                        if !work {
                            assert_eq!(notify, m > 0, "an idle front end is woken");
                        }
                    }
                }
            }
        }
    }
}

/// The same for `RING_FINAL_CHECK_FOR_REQUESTS` and the front end's pushes.
#[test]
fn final_check_for_requests_matches_the_model() {
    let pages = TestPages::new(0);
    const N: u32 = 5;
    for &base in bases() {
        for off in 0..3u32 {
            let start = base.wrapping_add(off);
            for p in 0..=N {
                for c in 0..=p {
                    for m in 0..=N - p {
                        let (mut front, mut back) = pair::<Req, Rsp>(&pages, 0, start);
                        for i in 0..p {
                            front.push_request(&[u64::from(i); 14]).expect("room");
                        }
                        front.push_requests();
                        for _ in 0..c {
                            back.poll_request().expect("valid").expect("published");
                        }
                        let sentinel = start.wrapping_add(N + 7);
                        pages.header().req_event.store(sentinel, SeqCst);
                        let work = back.final_check_for_requests().expect("valid");
                        assert_eq!(work, p > c, "start {start:#x} p {p} c {c}");
                        let event = pages.header().req_event.load(SeqCst);
                        let armed = start.wrapping_add(c + 1);
                        assert_eq!(event, if p > c { sentinel } else { armed });
                        for i in 0..m {
                            front.push_request(&[u64::from(p + i); 14]).expect("room");
                        }
                        let old = start.wrapping_add(p);
                        let new = old.wrapping_add(m);
                        let notify = front.push_requests_and_check_notify();
                        assert_eq!(notify, model_walk(old, new, event));
                        if !work {
                            assert_eq!(notify, m > 0, "an idle back end is woken");
                        }
                    }
                }
            }
        }
    }
}

// ----- two threads ---------------------------------------------------------

/// An event channel: a pending bit, set by `notify`, consumed by `wait`.
struct Event {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Event {
    fn new() -> Event {
        Event {
            pending: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    fn notify(&self) {
        *self.pending.lock().expect("lock") = true;
        self.cv.notify_one();
    }

    /// Sleeps until notified. A lost wake-up would sleep forever; the bound
    /// turns that hang into a failure (it is not a timing assertion).
    fn wait(&self) {
        let mut pending = self.pending.lock().expect("lock");
        while !*pending {
            let (guard, timeout) = self
                .cv
                .wait_timeout(pending, Duration::from_secs(120))
                .expect("lock");
            pending = guard;
            assert!(!timeout.timed_out() || *pending, "lost wake-up");
        }
        *pending = false;
    }
}

#[test]
fn threads_exchange_requests_with_event_hold_off() {
    let n: u64 = if cfg!(miri) { 60 } else { 20_000 };
    let pages = TestPages::new(0);
    let (mut front, mut back) = pair::<Req, Rsp>(&pages, 0, u32::MAX - 16);
    let (to_back, to_front) = (Event::new(), Event::new());
    let (front_stats, back_stats) = std::thread::scope(|s| {
        let backend = s.spawn(|| {
            let (mut served, mut notifies, mut sleeps) = (0u64, 0u64, 0u64);
            loop {
                while let Some(r) = back.poll_request().expect("valid front") {
                    assert_eq!(r, [served; 14], "requests arrive in order, intact");
                    back.push_response(&[served, served * 3]).expect("taken");
                    served += 1;
                }
                if back.push_responses_and_check_notify() {
                    to_front.notify();
                    notifies += 1;
                }
                if served == n {
                    break;
                }
                if !back.final_check_for_requests().expect("valid front") {
                    to_back.wait();
                    sleeps += 1;
                }
            }
            (notifies, sleeps)
        });
        let (mut sent, mut received, mut notifies, mut sleeps) = (0u64, 0u64, 0u64, 0u64);
        while received < n {
            while sent < n && !front.is_full() {
                front.push_request(&[sent; 14]).expect("room");
                sent += 1;
            }
            if front.push_requests_and_check_notify() {
                to_back.notify();
                notifies += 1;
            }
            let got = front
                .poll_responses(|r| {
                    assert_eq!(r, [received, received * 3]);
                    received += 1;
                })
                .expect("valid back");
            let can_push = sent < n && !front.is_full();
            if got == 0 && !can_push && !front.final_check_for_responses().expect("valid") {
                to_front.wait();
                sleeps += 1;
            }
        }
        let back_stats = backend.join().expect("back end thread");
        ((notifies, sleeps), back_stats)
    });
    // Every message arrived, in order, and each end notified at least once
    // (the first push always does: req_event starts one past req_prod) but
    // never more often than it published.
    assert_eq!(front.rsp_cons(), (u32::MAX - 16).wrapping_add(n as u32));
    assert!(front_stats.0 >= 1 && front_stats.0 <= n, "{front_stats:?}");
    assert!(back_stats.0 >= 1 && back_stats.0 <= n, "{back_stats:?}");
    assert_eq!(front.final_check_for_responses(), Ok(false));
    assert_eq!(back.final_check_for_requests(), Ok(false));
}

/// Both ends poll without sleeping, so no lock orders their memory: only the
/// ring's own `Release`/`Acquire` pairs make the slot contents visible. Under
/// Miri (several seeds, see `tests/miri.sh`) a missing barrier shows up as a
/// data race. The front keeps a small window of requests in flight so the
/// two ends overlap on neighbouring slots.
#[test]
fn threads_busy_poll_without_locks() {
    let n: u64 = if cfg!(miri) { 80 } else { 50_000 };
    let window = 5;
    let pages = TestPages::new(0);
    let (mut front, mut back) = pair::<Req, Rsp>(&pages, 0, u32::MAX - 9);
    // Bounds the spinning: a ring that stops making progress fails the test
    // instead of hanging it.
    let spin_limit: u64 = if cfg!(miri) { 100_000 } else { 100_000_000 };
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut served, mut spins) = (0u64, 0u64);
            while served < n {
                let mut answers = Vec::new();
                back.poll_requests(|r| answers.push(r))
                    .expect("valid front");
                for r in answers {
                    assert_eq!(r, [served; 14]);
                    back.push_response(&[served, !served]).expect("taken");
                    served += 1;
                    // Publish one at a time: the front reads each slot as
                    // soon as it can.
                    back.push_responses();
                }
                spins += 1;
                assert!(spins < spin_limit, "back end starved at {served}");
                std::thread::yield_now();
            }
        });
        let (mut sent, mut received, mut spins) = (0u64, 0u64, 0u64);
        while received < n {
            while sent < n && front.requests_in_flight() < window {
                front.push_request(&[sent; 14]).expect("room");
                sent += 1;
                front.push_requests();
            }
            while let Some(r) = front.poll_response().expect("valid back") {
                assert_eq!(r, [received, !received]);
                received += 1;
            }
            spins += 1;
            assert!(spins < spin_limit, "front end starved at {received}");
            std::thread::yield_now();
        }
    });
    assert_eq!(front.rsp_cons(), (u32::MAX - 9).wrapping_add(n as u32));
    assert_eq!(back.rsp_prod_pvt(), front.rsp_cons());
}

/// The race the full fences exist for: one end's final check (arm its event
/// index, fence, re-read the peer's producer) runs at the same moment as the
/// peer's push (publish the producer, fence, read the event index). At least
/// one of them must see the other: either the checking end finds the new
/// message or the pushing end notifies. Each round races both directions;
/// rounds are separated by barriers, and within a race nothing but the ring
/// orders the two threads.
#[test]
fn threads_racing_final_checks_and_pushes_never_lose_a_wake_up() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Barrier;

    let rounds: u32 = if cfg!(miri) { 30 } else { 5_000 };
    let pages = TestPages::new(0);
    let (mut front, mut back) = pair::<Req, Rsp>(&pages, 0, u32::MAX - 20);
    let barrier = Barrier::new(2);
    let (req_notified, rsp_notified) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let backend = s.spawn(|| {
            let mut lost = 0;
            for round in 0..rounds {
                barrier.wait(); // 1: race the front end's push
                let work = back.final_check_for_requests().expect("valid front");
                barrier.wait(); // 2
                if !work && !req_notified.load(SeqCst) {
                    lost += 1;
                }
                let req = back.poll_request().expect("valid front");
                assert_eq!(req, Some([u64::from(round); 14]));
                barrier.wait(); // 3: race the front end's final check
                back.push_response(&[u64::from(round), 0]).expect("taken");
                rsp_notified.store(back.push_responses_and_check_notify(), SeqCst);
                barrier.wait(); // 4
            }
            lost
        });
        let mut lost = 0;
        for round in 0..rounds {
            front.push_request(&[u64::from(round); 14]).expect("room");
            barrier.wait(); // 1
            req_notified.store(front.push_requests_and_check_notify(), SeqCst);
            barrier.wait(); // 2
            barrier.wait(); // 3
            let work = front.final_check_for_responses().expect("valid back");
            barrier.wait(); // 4
            if !work && !rsp_notified.load(SeqCst) {
                lost += 1;
            }
            assert_eq!(front.poll_response(), Ok(Some([u64::from(round), 0])));
        }
        assert_eq!(lost, 0, "lost wake-ups of the front end");
        assert_eq!(
            backend.join().expect("back end"),
            0,
            "lost wake-ups of the back end"
        );
    });
}
