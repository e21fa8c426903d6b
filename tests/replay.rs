//! Replay (`Recovery::Replay`, opt-in): requests not yet completed
//! when the backend closes while staying online (a restart, a backend
//! rebuilt elsewhere) are parked, the device reconnects by itself when the
//! backend returns, and each request is sent again exactly once under the
//! new backend's limits, whatever changed between the two: ring order,
//! queues, indirect segments, persistent grants, flush method, discard,
//! read-only, sector size, capacity. Requests the new backend cannot take
//! fail with the error their submission would now get. Everything goes
//! through the non-blocking API (`submit_*`, `kick`, `poll`, `wait`),
//! except where a test says otherwise.
#![cfg(feature = "sim")]

mod common;
use common::pattern;

use std::collections::BTreeMap;

use xenblk::blkfront::{BackendEvent, Config, DeviceState, IoError, Recovery, RequestToken};
use xenblk::error::Feature;
use xenblk::hal::{DomId, Hal};
use xenblk::sim::blkback::{BackendConfig, Offer};
use xenblk::sim::{SimDisk, Testbed};

const MIB: u64 = 1 << 20;
/// The defaults, with replay.
const REPLAY: Config = Config {
    recovery: Recovery::Replay,
    ..Config::DEFAULT
};
/// What the disk holds where nothing was written.
const BACKGROUND: u64 = 99;
/// What a read's buffer holds until data lands in it.
const SENTINEL: u8 = 0xee;

/// One request of the workload, in bytes of the disk.
#[derive(Clone, Copy, Debug)]
enum Req {
    Write { off: u64, len: usize, seed: u64 },
    Read { off: u64, len: usize, seed: u64 },
    Flush,
    Discard { off: u64, len: u64 },
}

/// A mix of every kind: a large write and a large read that are cut into
/// many ring slots under some limits and fit one indirect request under
/// others, small ones, one that is 512-byte aligned only, one near the end
/// of a 16 MiB disk, a flush, a discard.
const WORKLOAD: [Req; 8] = [
    Req::Write {
        off: 0,
        len: 1 << 20,
        seed: 1,
    },
    Req::Read {
        off: 8 * MIB,
        len: 1 << 20,
        seed: 3,
    },
    Req::Write {
        off: 4 * MIB,
        len: 4096,
        seed: 2,
    },
    Req::Read {
        off: 12 * MIB,
        len: 4096,
        seed: 4,
    },
    Req::Write {
        off: 6 * MIB + 512,
        len: 512,
        seed: 5,
    },
    Req::Flush,
    Req::Discard {
        off: 10 * MIB,
        len: 64 << 10,
    },
    Req::Write {
        off: 16 * MIB - (64 << 10),
        len: 64 << 10,
        seed: 6,
    },
];

/// What a submission of `r` to a backend configured as `be` gets.
fn expected(r: Req, be: &BackendConfig) -> Result<(), IoError> {
    let ss = u64::from(be.sector_size);
    let aligned = |off: u64, len: u64| off % ss == 0 && len % ss == 0;
    match r {
        Req::Write { off, len, .. } | Req::Read { off, len, .. } => {
            let len = len as u64;
            if matches!(r, Req::Write { .. }) && be.read_only {
                Err(IoError::ReadOnly)
            } else if !aligned(off, len) {
                Err(IoError::Misaligned)
            } else if off + len > be.disk_bytes {
                Err(IoError::OutOfRange)
            } else {
                Ok(())
            }
        }
        Req::Flush if be.flush == Offer::No && be.barrier == Offer::No => {
            Err(IoError::Unsupported(Feature::FlushCache))
        }
        Req::Discard { .. } if be.discard == Offer::No => {
            Err(IoError::Unsupported(Feature::Discard))
        }
        Req::Flush | Req::Discard { .. } if be.read_only => Err(IoError::ReadOnly),
        Req::Discard { off, len } if off + len > be.disk_bytes => Err(IoError::OutOfRange),
        Req::Flush | Req::Discard { .. } => Ok(()),
    }
}

fn base(cfg: BackendConfig) -> BackendConfig {
    BackendConfig {
        disk_bytes: 16 * MIB,
        ..cfg
    }
}

/// blkback with one queue (so that nothing is answered on another queue
/// while the first goes Closing: every request is parked).
fn blkback1() -> BackendConfig {
    BackendConfig {
        max_queues: Some(1),
        ..base(BackendConfig::blkback())
    }
}

/// Writes the background and the data the workload's reads expect.
fn prepare(be: &xenblk::sim::blkback::SimBlkBackHandle) {
    let n = be.disk_bytes() as usize;
    be.disk_write(0, &pattern(BACKGROUND, n)).unwrap();
    for r in WORKLOAD {
        if let Req::Read { off, len, seed } = r {
            be.disk_write(off, &pattern(seed, len)).unwrap();
        }
    }
}

/// Submits the workload in units of the disk's current sector size.
/// Returns each request's token (`None`: refused at submission, which no
/// request of the workload is on the old backends used here).
fn submit(disk: &mut SimDisk<'_>) -> Vec<RequestToken> {
    let ss = u64::from(disk.sector_size());
    WORKLOAD
        .iter()
        .map(|&r| {
            let t = match r {
                Req::Write { off, len, seed } => disk
                    .submit_write(off / ss, pattern(seed, len))
                    .map_err(|r| r.error),
                Req::Read { off, len, .. } => disk
                    .submit_read(off / ss, vec![SENTINEL; len])
                    .map_err(|r| r.error),
                Req::Flush => disk.submit_flush(),
                Req::Discard { off, len } => disk.submit_discard(off / ss, len / ss, false),
            };
            t.unwrap_or_else(|e| panic!("{r:?} refused at submission: {e}"))
        })
        .collect()
}

/// A completion's result and buffer.
type Outcome = (Result<(), IoError>, Option<Vec<u8>>);

/// What a run saw: each token's completions, and the backend's events.
struct Run {
    done: BTreeMap<RequestToken, Vec<Outcome>>,
    events: Vec<BackendEvent>,
}

/// Polls (waiting in 10 ms slices) until `n` completions came or ten
/// simulated seconds passed, then a little longer, to catch a completion
/// that comes twice.
fn drain(tb: &Testbed, disk: &mut SimDisk<'_>, n: usize) -> Run {
    let t0 = tb.hal().now_ns();
    let mut run = Run {
        done: BTreeMap::new(),
        events: Vec::new(),
    };
    let mut count = 0;
    let mut extra_until = None;
    loop {
        while let Some(c) = disk.poll() {
            count += 1;
            run.done.entry(c.token).or_default().push((c.result, c.buf));
        }
        if let Some(ev) = disk.take_backend_event() {
            run.events.push(ev);
        }
        let now = tb.hal().now_ns();
        if count >= n && extra_until.is_none() {
            extra_until = Some(now + 100_000_000);
        }
        if extra_until.is_some_and(|t| now >= t) || now - t0 > 10_000_000_000 {
            return run;
        }
        if let Err(IoError::NotConnected | IoError::Closed | IoError::Broken(_)) =
            disk.wait(now + 10_000_000)
        {
            // Nothing to wait on (everything failed): let time pass.
            let _ = tb.xen().wait_until(Some(now + 10_000_000), || false);
        }
    }
}

/// The backend restarts as `new` while the whole workload is in flight on
/// `old`; checks every outcome, the data on the disk, and that everything
/// is given back at close.
fn restart_case(name: &str, old: BackendConfig, new: BackendConfig, fe: Config) {
    let tb = Testbed::new([old.clone()]);
    let be = tb.backend(0);
    prepare(&be);
    let guest = tb.guest();
    let mut disk = guest.probe(0, fe).unwrap_or_else(|e| panic!("{name}: {e}"));
    // Closing as soon as the first request is taken: none is answered by
    // the old backend (when it has one queue).
    be.update_faults(|f| f.closing_after = Some(1));
    be.replace_on_close(new.clone()).unwrap();
    let tokens = submit(&mut disk);
    disk.kick();
    let run = drain(&tb, &mut disk, tokens.len());
    assert_eq!(
        be.stats().restarts,
        1,
        "{name}: the backend was replaced ({:?}, {:?})",
        run.events,
        be.stats()
    );
    assert_eq!(disk.state(), DeviceState::Connected, "{name}");
    for (i, (&r, t)) in WORKLOAD.iter().zip(&tokens).enumerate() {
        let got = run.done.get(t).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(got.len(), 1, "{name}: request {i} ({r:?}) completed once");
        let (result, buf) = &got[0];
        let want = expected(
            r,
            if old.max_queues == Some(1) {
                &new
            } else {
                &old
            },
        );
        assert_eq!(*result, want, "{name}: request {i} ({r:?})");
        match r {
            Req::Write { off, len, seed } => {
                let bg = &pattern(BACKGROUND, be.disk_bytes() as usize);
                if off + len as u64 <= be.disk_bytes() {
                    let on_disk = be.disk_read(off, len).unwrap();
                    let ok = result.is_ok();
                    let wanted = if ok {
                        pattern(seed, len)
                    } else {
                        bg[off as usize..off as usize + len].to_vec()
                    };
                    assert!(on_disk == wanted, "{name}: the disk after {r:?} ({ok})");
                }
            }
            Req::Read { len, seed, .. } => {
                let buf = buf.as_deref().expect("a read's buffer comes back");
                if result.is_ok() {
                    assert!(buf == pattern(seed, len), "{name}: data of {r:?}");
                } else {
                    assert!(
                        buf.iter().all(|&b| b == SENTINEL),
                        "{name}: {r:?} untouched"
                    );
                }
            }
            Req::Flush | Req::Discard { .. } => {}
        }
    }
    let parked = run.events.iter().find_map(|e| match e {
        BackendEvent::Away { parked } => Some(*parked),
        _ => None,
    });
    let back = run.events.iter().find_map(|e| match e {
        BackendEvent::Reconnected { replayed, failed } => Some((*replayed, *failed)),
        _ => None,
    });
    let parked = parked.unwrap_or_else(|| panic!("{name}: no Away event in {:?}", run.events));
    let (replayed, failed) =
        back.unwrap_or_else(|| panic!("{name}: no Reconnected event in {:?}", run.events));
    assert_eq!(replayed + failed, parked, "{name}: every parked request");
    if old.max_queues == Some(1) {
        assert_eq!(parked, WORKLOAD.len(), "{name}: all were in flight");
        let fails = WORKLOAD.iter().filter(|&&r| expected(r, &new).is_err());
        assert_eq!(failed, fails.count(), "{name}: failed at replay");
    }
    // The new connection works, and gives everything back.
    let ss = disk.sector_size() as usize;
    let mut buf = vec![0; ss];
    disk.read(0, &mut buf).unwrap();
    assert_eq!(disk.close(), Ok(0), "{name}");
    assert_eq!(guest.held(), (0, 0, 0), "{name}: everything given back");
}

#[test]
fn a_restart_with_the_same_features_replays_everything_once() {
    restart_case("same", blkback1(), blkback1(), REPLAY);
    // Two queues: what the other queue had may be answered before the
    // close; the rest is replayed.
    let two = base(BackendConfig::blkback());
    restart_case("two queues", two.clone(), two, REPLAY);
}

#[test]
fn a_restart_under_other_ring_limits_cuts_requests_afresh() {
    let no_indirect = BackendConfig {
        max_indirect_segments: None,
        ..blkback1()
    };
    let order0 = BackendConfig {
        max_ring_page_order: Some(0),
        ..blkback1()
    };
    let four = BackendConfig {
        max_queues: Some(4),
        ..blkback1()
    };
    restart_case("indirect -> none", blkback1(), no_indirect.clone(), REPLAY);
    restart_case("none -> indirect", no_indirect.clone(), blkback1(), REPLAY);
    restart_case("order 4 -> 0", blkback1(), order0.clone(), REPLAY);
    restart_case("order 0 -> 4", order0, four.clone(), REPLAY);
    restart_case("1 -> 4 queues", no_indirect, four.clone(), REPLAY);
    restart_case(
        "4 -> 1 queues",
        base(BackendConfig::blkback()),
        blkback1(),
        REPLAY,
    );
    let small_ring = Config {
        max_ring_page_order: 0,
        max_indirect_segments: 0,
        ..REPLAY
    };
    restart_case("frontend's own small ring", blkback1(), four, small_ring);
}

#[test]
fn a_restart_that_changes_persistent_grants_replays_with_new_grants() {
    let no_persistent = BackendConfig {
        persistent: false,
        ..blkback1()
    };
    restart_case(
        "persistent -> none",
        blkback1(),
        no_persistent.clone(),
        REPLAY,
    );
    restart_case("none -> persistent", no_persistent, blkback1(), REPLAY);
}

#[test]
fn a_restart_that_drops_features_fails_only_what_needs_them() {
    let barrier_only = BackendConfig {
        flush: Offer::No,
        ..blkback1()
    };
    let no_flush = BackendConfig {
        flush: Offer::No,
        barrier: Offer::No,
        ..blkback1()
    };
    let no_discard = BackendConfig {
        discard: Offer::No,
        ..blkback1()
    };
    let coarse = BackendConfig {
        discard_granularity: 1 << 20,
        ..blkback1()
    };
    restart_case("flush -> barrier", blkback1(), barrier_only, REPLAY);
    restart_case("flush -> none", blkback1(), no_flush, REPLAY);
    restart_case("discard -> none", blkback1(), no_discard, REPLAY);
    // 64 KiB holds no whole 1 MiB unit: nothing to send, done.
    restart_case("discard 1 MiB units", blkback1(), coarse, REPLAY);
}

#[test]
fn a_restart_that_changes_the_disk_fails_what_no_longer_fits() {
    let ro = BackendConfig {
        read_only: true,
        ..blkback1()
    };
    let big_sectors = BackendConfig {
        sector_size: 4096,
        physical_sector_size: Some(4096),
        ..blkback1()
    };
    let smaller = BackendConfig {
        disk_bytes: 8 * MIB,
        ..blkback1()
    };
    restart_case("read-only", blkback1(), ro, REPLAY);
    restart_case(
        "512 -> 4096 sectors",
        blkback1(),
        big_sectors.clone(),
        REPLAY,
    );
    restart_case("16 -> 8 MiB", blkback1(), smaller, REPLAY);
    // The 512-byte write is refused at submission on a 4096-byte disk:
    // the rest of the workload, from 4096 to 512.
    let tb = Testbed::new([big_sectors.clone()]);
    let be = tb.backend(0);
    prepare(&be);
    let guest = tb.guest();
    let mut disk = guest.probe(0, REPLAY).unwrap();
    be.update_faults(|f| f.closing_after = Some(1));
    be.replace_on_close(blkback1()).unwrap();
    let t = disk.submit_write(2, pattern(7, 8192)).unwrap();
    disk.kick();
    let run = drain(&tb, &mut disk, 1);
    assert_eq!(run.done[&t].len(), 1);
    assert_eq!(run.done[&t][0].0, Ok(()));
    assert_eq!(disk.sector_size(), 512);
    assert!(be.disk_read(8192, 8192).unwrap() == pattern(7, 8192));
    assert_eq!(disk.close(), Ok(0));
}

#[test]
fn a_qdisk_restart_replays_a_request_cut_into_many_slots() {
    let q = BackendConfig {
        max_ring_page_order: Some(0),
        ..base(BackendConfig::qdisk())
    };
    let q4 = base(BackendConfig::qdisk());
    restart_case("qdisk order 0 -> 4", q.clone(), q4.clone(), REPLAY);
    restart_case("qdisk order 4 -> 0", q4, q, REPLAY);
}

/// A request cut into parts, some answered before the backend closed: it
/// completes once, after its replay, with the right data.
#[test]
fn a_split_request_half_answered_completes_once_after_the_replay() {
    let old = BackendConfig {
        max_indirect_segments: None,
        ..blkback1()
    };
    let tb = Testbed::new([old.clone()]);
    let be = tb.backend(0);
    prepare(&be);
    let guest = tb.guest();
    let mut disk = guest.probe(0, REPLAY).unwrap();
    // 1 MiB in 44 KiB parts: four answered, then Closing.
    be.update_faults(|f| f.closing_after = Some(5));
    be.replace_on_close(blkback1()).unwrap();
    let w = disk.submit_write(0, pattern(1, 1 << 20)).unwrap();
    let r = disk
        .submit_read(8 * MIB / 512, vec![SENTINEL; 1 << 20])
        .unwrap();
    disk.kick();
    let run = drain(&tb, &mut disk, 2);
    assert_eq!(be.stats().restarts, 1);
    assert_eq!(run.done[&w].len(), 1, "the write completed once");
    assert_eq!(run.done[&r].len(), 1, "the read completed once");
    assert_eq!(run.done[&w][0].0, Ok(()));
    assert_eq!(run.done[&r][0].0, Ok(()));
    assert!(run.done[&r][0].1.as_deref() == Some(&pattern(3, 1 << 20)[..]));
    assert!(be.disk_read(0, 1 << 20).unwrap() == pattern(1, 1 << 20));
    assert_eq!(run.done.len(), 2, "no other completion");
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// The same backend closes and comes back (the device asks it to:
/// frontend Initialising once it is Closed); a blocking read in progress
/// just takes longer.
#[test]
fn a_blocking_read_rides_out_a_backend_that_closes_and_returns() {
    let tb = Testbed::new([blkback1()]);
    let be = tb.backend(0);
    prepare(&be);
    let guest = tb.guest();
    let mut disk = guest.probe(0, REPLAY).unwrap();
    be.update_faults(|f| f.closing_after = Some(1));
    let mut buf = vec![0; 1 << 20];
    disk.read(8 * MIB / 512, &mut buf).expect("replayed read");
    assert!(buf == pattern(3, 1 << 20));
    assert_eq!(disk.state(), DeviceState::Connected);
    assert!(be.stats().connects >= 2, "it reconnected");
    assert_eq!(
        disk.take_backend_event(),
        Some(BackendEvent::Away { parked: 1 }),
        "the blocking call recorded the close"
    );
    assert_eq!(
        disk.take_backend_event(),
        Some(BackendEvent::Reconnected {
            replayed: 1,
            failed: 0
        }),
        "and the reconnect"
    );
    assert_eq!(disk.take_backend_event(), None);
    assert_eq!(disk.close(), Ok(0));
}

/// Parked requests fail with `Aborted` at once when the backend's
/// directory goes away while they wait (the toolstack removed the device).
#[test]
fn parked_requests_fail_when_the_backend_goes_for_good() {
    let tb = Testbed::new([blkback1()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, REPLAY).unwrap();
    // The backend closes, and is replaced by one that never leaves
    // InitWait... because its directory is removed first.
    be.update_faults(|f| f.closing_after = Some(1));
    let tokens: Vec<_> = (0..4u64)
        .map(|i| disk.submit_write(i * 8, pattern(i, 4096)).unwrap())
        .collect();
    disk.kick();
    let _ = tb.xen().run_until_idle();
    let ev = disk.check_backend().unwrap();
    assert_eq!(ev, BackendEvent::Away { parked: 4 });
    assert_eq!(disk.parked(), 4);
    assert_eq!(disk.state(), DeviceState::Disconnected);
    let path = be.backend_path();
    tb.remove_disk(0);
    drop(be);
    tb.xenstored().rm(DomId(0), &path).unwrap();
    let run = drain(&tb, &mut disk, tokens.len());
    for t in &tokens {
        assert_eq!(run.done[t].len(), 1);
        assert_eq!(run.done[t][0].0, Err(IoError::Aborted));
    }
    assert!(
        run.events.contains(&BackendEvent::Closed),
        "{:?}",
        run.events
    );
    assert_eq!(disk.parked(), 0);
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// `xl block-detach` (`online` 0, Closing) is for good: nothing is parked,
/// whatever the recovery setting.
#[test]
fn a_detach_aborts_instead_of_parking() {
    let tb = Testbed::new([blkback1()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, REPLAY).unwrap();
    be.update_faults(|f| f.swallow_requests = true);
    let t = disk.submit_write(0, pattern(1, 4096)).unwrap();
    disk.kick();
    let _ = tb.xen().run_until_idle();
    be.close_backend();
    let _ = tb.xen().run_until_idle();
    assert_eq!(disk.check_backend(), Ok(BackendEvent::Closed));
    assert_eq!(disk.parked(), 0);
    let c = disk.poll().expect("completed");
    assert_eq!((c.token, c.result), (t, Err(IoError::Aborted)));
    assert_eq!(disk.close(), Ok(0));
}

/// A backend that closes, stays online and never returns: parked requests
/// fail with `Aborted` once `replay_timeout_ns` has passed, not before.
#[test]
fn parked_requests_give_up_after_the_replay_bound() {
    let tb = Testbed::new([blkback1()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    // The device asks the dead backend back; each attempt to connect waits
    // for it up to the connect bound, and takes down what it set up within
    // the close bounds. The replay bound is checked between attempts.
    let cfg = Config {
        replay_timeout_ns: 2_000_000_000,
        connect_timeout_ns: 500_000_000,
        close_timeout_ns: 250_000_000,
        ..REPLAY
    };
    let mut disk = guest.probe(0, cfg).unwrap();
    be.update_faults(|f| f.closing_after = Some(1));
    let t = disk.submit_write(0, pattern(1, 4096)).unwrap();
    disk.kick();
    let _ = tb.xen().run_until_idle();
    assert_eq!(disk.check_backend(), Ok(BackendEvent::Away { parked: 1 }));
    // The backend dies where it stands; its directory stays, online.
    let t0 = tb.hal().now_ns();
    tb.remove_disk(0);
    drop(be);
    let run = drain(&tb, &mut disk, 1);
    let waited = tb.hal().now_ns() - t0;
    assert_eq!(run.done[&t].len(), 1);
    assert_eq!(run.done[&t][0].0, Err(IoError::Aborted));
    // At most one attempt (1 s) past the bound, and the drain's 0.1 s.
    assert!(
        (2_000_000_000..3_200_000_000).contains(&waited),
        "gave up after {waited} ns"
    );
    assert!(
        run.events.contains(&BackendEvent::Closed),
        "{:?}",
        run.events
    );
    assert_eq!(disk.state(), DeviceState::Disconnected);
    assert_eq!(disk.close(), Ok(0));
}
