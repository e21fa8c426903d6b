//! A backend going away under the non-blocking API alone (`submit_*`,
//! `kick`, `poll`, `wait`; never `check_backend`): `xl block-detach` (the
//! backend goes Closing) and `xl block-detach -f` (its directories are
//! removed). Every request in flight completes at once, the device
//! disconnects, the event is there to take, and `close` succeeds.
#![cfg(feature = "sim")]

mod common;
use common::pattern;

use xenblk::blkfront::{BackendEvent, Config, DeviceState, IoError};
use xenblk::hal::{DomId, Hal};
use xenblk::sim::blkback::BackendConfig;
use xenblk::sim::{SimDisk, Testbed};

const N: usize = 16;

/// Polls (waiting in 10 ms slices) until `N` completions came or a
/// simulated second passed; returns them and the simulated time it took.
fn drain(tb: &Testbed, disk: &mut SimDisk<'_>) -> (Vec<Result<(), IoError>>, u64) {
    let t0 = tb.hal().now_ns();
    let mut done = Vec::new();
    while done.len() < N && tb.hal().now_ns() - t0 < 1_000_000_000 {
        while let Some(c) = disk.poll() {
            done.push(c.result);
        }
        let _ = disk.wait(tb.hal().now_ns() + 10_000_000);
    }
    (done, tb.hal().now_ns() - t0)
}

/// Submits `N` writes to a backend slowed down to answer each after 50 ms,
/// and lets it take some but not all of them.
fn writes_in_flight(tb: &Testbed, disk: &mut SimDisk<'_>) {
    tb.backend(0).update_faults(|f| f.delay_ns = 50_000_000);
    for i in 0..N as u64 {
        disk.submit_write(i * 64, pattern(i, 32 << 10)).unwrap();
    }
    disk.kick();
    let _ = tb
        .xen()
        .wait_until(Some(tb.hal().now_ns() + 1_000_000), || false);
}

fn slow_blkback() -> BackendConfig {
    let mut b = BackendConfig::blkback();
    b.disk_bytes = 16 << 20;
    b.hotplug_delay_ns = 0;
    b
}

#[test]
fn block_detach_under_the_non_blocking_api_fails_what_is_in_flight_and_disconnects() {
    let tb = Testbed::new([slow_blkback()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    writes_in_flight(&tb, &mut disk);
    be.close_backend(); // xl block-detach
    let (done, ns) = drain(&tb, &mut disk);
    assert_eq!(done.len(), N, "every request completed ({ns} ns)");
    assert!(
        done.iter()
            .all(|r| matches!(r, Ok(()) | Err(IoError::Aborted))),
        "{done:?}"
    );
    assert!(done.contains(&Err(IoError::Aborted)), "some were in flight");
    assert_eq!(disk.take_backend_event(), Some(BackendEvent::Closed));
    assert_eq!(disk.take_backend_event(), None, "taken once");
    assert_eq!(disk.state(), DeviceState::Disconnected);
    let fe = tb
        .xenstored()
        .read(DomId(0), &format!("{}/state", be.frontend_path()))
        .unwrap();
    assert_eq!(fe, "6", "the frontend is Closed: the detach can finish");
    assert_eq!(
        disk.submit_read(0, vec![0; 512]).unwrap_err().error,
        IoError::NotConnected
    );
    disk.close().expect("close");
    assert_eq!(guest.held(), (0, 0, 0));
}

#[test]
fn a_vanished_backend_directory_fails_what_is_in_flight_at_once_and_close_succeeds() {
    let tb = Testbed::new([slow_blkback()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    writes_in_flight(&tb, &mut disk);
    // xl block-detach -f: both directories go
    tb.xenstored().rm(DomId(0), &be.backend_path()).unwrap();
    tb.xenstored().rm(DomId(0), &be.frontend_path()).unwrap();
    let (done, ns) = drain(&tb, &mut disk);
    assert_eq!(done.len(), N, "every request completed");
    assert!(
        ns < 500_000_000,
        "at once, not after the I/O bound: {ns} ns"
    );
    assert!(done.contains(&Err(IoError::Aborted)), "{done:?}");
    assert_eq!(disk.take_backend_event(), Some(BackendEvent::Closed));
    disk.close()
        .expect("close writes nothing into the vanished directory");
    assert_eq!(
        tb.xenstored()
            .read_opt(DomId(0), &format!("{}/state", be.frontend_path()))
            .unwrap(),
        None,
        "nothing was recreated"
    );
}
