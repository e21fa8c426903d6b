//! What a red team broke in the block frontend from outside the crate (its
//! own crate, the public `sim` API only), one regression test per finding
//! (`fN_`). Each states the promise the fix of 5bfdd76 keeps; each fails on
//! 4447eca, the commit before it. A finding made of several cases checks
//! them all and lists every one that breaks.
#![cfg(feature = "sim")]

mod common;
use common::pattern;

use std::collections::BTreeSet;

use xenblk::blkfront::{BackendEvent, Broken, Completion, Config, DeviceState, IoError};
use xenblk::error::Error;
use xenblk::hal::DomId;
use xenblk::sim::blkback::{BackendConfig, BadId, SimBlkBackHandle};
use xenblk::sim::xenstored::XenStored;
use xenblk::sim::{Guest, SimConfig, SimDevice, SimDisk, SimXen, Testbed};
use xenblk::xenbus::XenbusError;

const SENTINEL: u8 = 0xa5;

// ----- helpers ---------------------------------------------------------------

fn blkback(bytes: u64, persistent: bool) -> BackendConfig {
    let mut c = BackendConfig::blkback();
    c.disk_bytes = bytes;
    c.hotplug_delay_ns = 0;
    c.persistent = persistent;
    c
}

fn qdisk(bytes: u64) -> BackendConfig {
    let mut c = BackendConfig::qdisk();
    c.disk_bytes = bytes;
    c
}

/// The three kinds of backend that differ in how they treat grants:
/// blkback with and without persistent grants, and qdisk.
fn backends(bytes: u64) -> [(&'static str, BackendConfig); 3] {
    [
        ("blkback", blkback(bytes, true)),
        ("blkback-np", blkback(bytes, false)),
        ("qdisk", qdisk(bytes)),
    ]
}

/// Default queues and rings, short bounds.
fn fast() -> Config {
    Config {
        io_timeout_ns: 1_000_000_000,
        connect_timeout_ns: 2_000_000_000,
        close_timeout_ns: 1_000_000_000,
        ..Config::default()
    }
}

/// One queue of one ring page, no indirect segments: 32 requests in flight.
fn one_queue() -> Config {
    Config {
        max_queues: 1,
        max_ring_page_order: 0,
        max_indirect_segments: 0,
        ..fast()
    }
}

/// Polls (and waits) until `n` completions arrived or `rounds` passed.
fn drain_n(xen: &SimXen, disk: &mut SimDisk<'_>, n: usize, rounds: usize) -> Vec<Completion> {
    let mut got = Vec::new();
    for _ in 0..rounds {
        while let Some(c) = disk.poll() {
            got.push(c);
        }
        if got.len() >= n {
            break;
        }
        let _ = disk.wait(xen.now_ns() + 10_000_000);
    }
    got
}

fn dom0_read(tb: &Testbed, path: &str) -> Option<String> {
    tb.xenstored().read_opt(DomId::DOM0, path).unwrap()
}

fn dom0_write(tb: &Testbed, path: &str, value: &str) {
    tb.xenstored().write(DomId::DOM0, path, value).unwrap();
}

fn fe_state(tb: &Testbed, be: &SimBlkBackHandle) -> Option<String> {
    dom0_read(tb, &format!("{}/state", be.frontend_path()))
}

/// The frontend keys that name a ring or an event channel.
fn ring_keys(tb: &Testbed, be: &SimBlkBackHandle) -> Vec<String> {
    let dir = be.frontend_path();
    let names = tb
        .xenstored()
        .directory(DomId::DOM0, &dir)
        .unwrap_or_default();
    names
        .into_iter()
        .filter(|n| n.starts_with("ring-ref") || n.starts_with("queue-") || n == "event-channel")
        .collect()
}

/// A write and a read-back through `disk`, checked against the backend's
/// disk.
fn roundtrip(disk: &mut SimDisk<'_>, be: &SimBlkBackHandle) -> Result<(), String> {
    let ss = disk.sector_size() as usize;
    let data = pattern(77, 8192.max(ss * 2));
    disk.write(8, &data).map_err(|e| format!("write: {e:?}"))?;
    if be.disk_read(8 * ss as u64, data.len()).unwrap() != data {
        return Err("write: the disk does not hold the data".into());
    }
    let mut back = vec![0; data.len()];
    disk.read(8, &mut back)
        .map_err(|e| format!("read: {e:?}"))?;
    if back != data {
        return Err("read: wrong data".into());
    }
    Ok(())
}

fn cause_of(d: &SimDisk<'_>) -> Broken {
    match d.state() {
        DeviceState::Broken(c) => c,
        s => panic!("not broken: {s:?}"),
    }
}

/// The error of a probe of disk 0 that must fail.
fn probe_err<'tb>(guest: &'tb Guest<'tb>, what: &str) -> Error {
    match guest.probe(0, fast()) {
        Ok(_) => panic!("{what}: the probe connected"),
        Err(e) => e.error,
    }
}

/// Takes every free grant reference of the guest's table but `left`.
fn take_grants(guest: &Guest<'_>, left: usize) -> Vec<xenblk::hal::GrantRef> {
    let mut taken = Vec::new();
    while let Ok(r) = guest.grants().alloc() {
        taken.push(r);
    }
    for _ in 0..left {
        if let Some(r) = taken.pop() {
            guest.grants().free(r).unwrap();
        }
    }
    taken
}

fn give_back(guest: &Guest<'_>, taken: Vec<xenblk::hal::GrantRef>) {
    for r in taken {
        guest.grants().free(r).unwrap();
    }
}

/// An adversary: the first time the key at `path` reads `when`, it writes
/// `then` there as dom0, in the same simulator round (so before the
/// frontend acts on `when`).
struct Flip {
    xsd: XenStored,
    path: String,
    when: &'static str,
    then: &'static str,
    done: bool,
}

impl SimDevice for Flip {
    fn step(&mut self, _xen: &SimXen) -> bool {
        if self.done {
            return false;
        }
        let now = self.xsd.read_opt(DomId::DOM0, &self.path).ok().flatten();
        if now.as_deref() != Some(self.when) {
            return false;
        }
        let _ = self.xsd.write(DomId::DOM0, &self.path, self.then);
        self.done = true;
        true
    }

    fn name(&self) -> &str {
        "flip"
    }
}

/// Submits one write and waits for it: `Ok` done, `Err("rejected ..")`
/// refused at submit (with its buffer handed back unchanged, else
/// `Err("rejected, buffer changed")`), `Err("failed ..")` accepted then
/// failed.
fn one_write(tb: &Testbed, d: &mut SimDisk<'_>, data: &[u8]) -> Result<(), String> {
    match d.submit_write(0, data.to_vec()) {
        Err(r) if r.buf != data => Err(format!("rejected {:?}, buffer changed", r.error)),
        Err(r) => Err(format!("rejected {:?}", r.error)),
        Ok(t) => match drain_n(tb.xen(), d, 1, 200).first() {
            Some(c) if c.token == t => c.result.map_err(|e| format!("failed {e:?}")),
            _ => Err("never completed".into()),
        },
    }
}

// ----- F1 --------------------------------------------------------------------

/// F1: a request that runs out of grant references or pages midway waits
/// for what is in flight (its own parts included) to give them back; it
/// never fails after part of it was written. A big request on an idle
/// device completes whole; with someone else holding most of the grant
/// table or of the memory, a write is refused with nothing sent or done
/// whole; several disks sharing one small table complete every request they
/// accepted.
#[test]
fn f1_a_request_short_of_grants_or_pages_is_all_or_nothing() {
    let mut bad = Vec::new();

    // A request bigger than the whole grant table (one frame: 504 usable
    // references, one a page) on an idle device: a 4 MiB write was
    // Err(Grant(Exhausted)) after part of it was written, a 4 MiB read
    // likewise after part of it was read.
    let small_table = |cfg: BackendConfig| {
        Testbed::builder()
            .sim_config(SimConfig {
                grant_frames: 1,
                ..SimConfig::default()
            })
            .disk(cfg)
            .build()
    };
    for (name, cfg) in backends(8 << 20) {
        let tb = small_table(cfg);
        let be = tb.backend(0);
        let guest = tb.guest();
        let mut d = guest.probe(0, fast()).unwrap();
        let data = pattern(1, 4 << 20);
        let r = d.write(0, &data);
        let whole = be.disk_read(0, data.len()).unwrap() == data;
        if r.is_err() || !whole {
            bad.push(format!(
                "{name}: 4 MiB write on an idle device: {r:?}, {} parts sent, on disk whole: {whole}",
                be.stats().writes
            ));
        }
        let data = pattern(2, 4 << 20);
        be.disk_write(0, &data).unwrap();
        let mut buf = vec![SENTINEL; data.len()];
        let reads = be.stats().reads;
        let r = d.read(0, &mut buf);
        if r.is_err() || buf != data {
            bad.push(format!(
                "{name}: 4 MiB read on an idle device: {r:?} after {} parts were read, data right: {}",
                be.stats().reads - reads,
                buf == data
            ));
        }
        d.close().unwrap();
        assert_eq!(guest.held(), (0, 0, 0), "{name}");
    }

    // Only `free` grant references left (the others held by someone else
    // sharing the table): a write is refused untouched, or done whole.
    for (name, cfg) in backends(8 << 20) {
        for (free, len) in [(12, 64 << 10), (100, 1 << 20), (300, 2 << 20)] {
            let tb = Testbed::new([cfg.clone()]);
            let be = tb.backend(0);
            let guest = tb.guest();
            let mut d = guest.probe(0, fast()).unwrap();
            let taken = take_grants(&guest, free);
            let old = be.disk_read(0, len).unwrap();
            let data = pattern(len as u64, len);
            let s0 = be.stats().writes;
            let r = one_write(&tb, &mut d, &data);
            let sent = be.stats().writes - s0;
            let now = be.disk_read(0, len).unwrap();
            let what = format!("{name}, {free} grants left, {len} B write: {r:?}");
            match &r {
                Ok(()) if now != data => bad.push(format!("{what}, but the disk is wrong")),
                Ok(()) => {}
                Err(e) if !e.starts_with("rejected") || e.ends_with("changed") => {
                    bad.push(format!("{what} after {sent} parts sent"));
                }
                Err(_) if sent > 0 || now != old => {
                    bad.push(format!("{what} after {sent} parts sent"));
                }
                Err(_) => {}
            }
            give_back(&guest, taken);
            d.close().unwrap();
            assert_eq!(guest.held(), (0, 0, 0), "{what}");
        }
    }

    // The same with guest memory: a page limit `extra` pages above what the
    // connected device holds.
    for (name, cfg) in backends(8 << 20) {
        for extra in [12, 100] {
            let tb = Testbed::new([cfg.clone()]);
            let be = tb.backend(0);
            let guest = tb.guest();
            let mut d = guest.probe(0, fast()).unwrap();
            let len = 1 << 20;
            let old = be.disk_read(0, len).unwrap();
            let data = pattern(5, len);
            tb.xen()
                .set_page_limit(tb.domid(), Some(tb.accounting().pages + extra));
            let s0 = be.stats().writes;
            let r = one_write(&tb, &mut d, &data);
            tb.xen().set_page_limit(tb.domid(), None);
            let sent = be.stats().writes - s0;
            let now = be.disk_read(0, len).unwrap();
            let what = format!("{name}, {extra} pages left, 1 MiB write: {r:?}");
            match &r {
                Ok(()) if now != data => bad.push(format!("{what}, but the disk is wrong")),
                Err(_) if sent > 0 || now != old => {
                    bad.push(format!("{what} after {sent} parts sent"));
                }
                _ => {}
            }
            d.close().unwrap();
            assert_eq!(guest.held(), (0, 0, 0), "{what}");
        }
    }

    // Three disks in one small grant table (2 frames), all writing 1 MiB
    // requests at once: every request accepted completes, successfully.
    {
        let tb = Testbed::builder()
            .sim_config(SimConfig {
                grant_frames: 2,
                ..SimConfig::default()
            })
            .disk(blkback(8 << 20, true))
            .disk(blkback(8 << 20, false))
            .disk(qdisk(8 << 20))
            .build();
        let guest = tb.guest();
        let cfg = Config {
            max_queues: 2,
            max_ring_page_order: 1,
            ..fast()
        };
        let mut disks: Vec<_> = (0..3).map(|i| guest.probe(i, cfg).unwrap()).collect();
        let mut toks: Vec<Vec<_>> = vec![Vec::new(); 3];
        for round in 0..4u64 {
            for (i, d) in disks.iter_mut().enumerate() {
                if let Ok(t) = d.submit_write(round * 2048, pattern(round, 1 << 20)) {
                    toks[i].push(t);
                }
            }
        }
        for (i, d) in disks.iter_mut().enumerate() {
            let got = drain_n(tb.xen(), d, toks[i].len(), 2000);
            let seen: BTreeSet<_> = got.iter().map(|c| c.token).collect();
            if seen.len() != got.len() || seen != toks[i].iter().copied().collect() {
                bad.push(format!(
                    "shared table: disk {i}: {} accepted, {} completions",
                    toks[i].len(),
                    got.len()
                ));
            }
            let failed: Vec<_> = got.iter().filter_map(|c| c.result.err()).collect();
            if !failed.is_empty() {
                bad.push(format!(
                    "shared table: disk {i}: accepted requests failed: {failed:?}"
                ));
            }
        }
        for d in &mut disks {
            d.close().unwrap();
        }
        assert_eq!(guest.held(), (0, 0, 0));
    }

    assert!(
        bad.is_empty(),
        "{} cases broke:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

// ----- F2 --------------------------------------------------------------------

/// F2: with persistent grants, a queue keeps at most its budget of them.
/// After one big write, the same idle device can do a request of the same
/// size again, and another disk sharing the grant table can connect and do
/// I/O (the pool used to keep ~1800 of 2040 grants for good).
#[test]
fn f2_the_persistent_pool_stays_within_its_budget() {
    let tb = Testbed::new([blkback(8 << 20, true), blkback(4 << 20, true)]);
    let guest = tb.guest();
    let mut a = guest.probe(0, fast()).unwrap();
    assert!(a.info().negotiated.persistent);
    let len = 7 << 20;
    let data = pattern(3, len);
    a.write(0, &data).expect("A: 7 MiB write on an idle device");
    let kept = guest.grants().in_use();
    let of = guest.grants().capacity();
    let mut bad = Vec::new();

    // Another disk, while A is idle.
    match guest.probe(1, fast()) {
        Err(e) => bad.push(format!(
            "B cannot connect ({kept} of {of} grants kept by A): {}",
            e.error
        )),
        Ok(mut b) => {
            let mut buf = vec![SENTINEL; 1 << 20];
            let r = b.read(0, &mut buf);
            if r.is_err() {
                bad.push(format!(
                    "B: 1 MiB read: {r:?} ({kept} of {of} grants kept by A)"
                ));
            }
            b.close().unwrap();
        }
    }

    // A again, the same size as the write that just worked.
    let mut buf = vec![SENTINEL; len];
    let r = a.read(0, &mut buf);
    if r.is_err() || buf != data {
        bad.push(format!(
            "A: 7 MiB read after the 7 MiB write: {r:?} ({kept} of {of} grants kept after the write)"
        ));
    }
    a.close().unwrap();
    assert_eq!(guest.held(), (0, 0, 0));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ----- F3 --------------------------------------------------------------------

/// F3: a frontend `state` left by an earlier life — a BlockFront dropped
/// without close with I/O in flight, a rebooted guest — does not make the
/// disk unprobeable: the next probe resets the device (Closing, Closed,
/// Initialising, as Linux's xenbus does) and connects.
#[test]
fn f3_a_stale_frontend_state_does_not_block_the_next_probe() {
    let mut bad = Vec::new();

    // Dropped without close, with writes in flight.
    for (name, cfg) in [
        ("blkback", blkback(4 << 20, true)),
        ("qdisk", qdisk(4 << 20)),
    ] {
        let tb = Testbed::new([cfg]);
        let be = tb.backend(0);
        let guest = tb.guest();
        {
            let mut d = guest.probe(0, one_queue()).unwrap();
            d.write(0, &pattern(1, 8192)).unwrap();
            be.update_faults(|f| f.delay_ns = 5_000_000);
            for i in 0..8u64 {
                d.submit_write(i * 8, pattern(i, 4096)).unwrap();
            }
            d.kick();
        }
        tb.xen().advance_clock(50_000_000);
        tb.xen().run_until_idle();
        be.update_faults(|f| f.delay_ns = 0);
        match guest.probe(0, one_queue()) {
            Ok(mut d) => {
                if let Err(e) = roundtrip(&mut d, &be) {
                    bad.push(format!("{name}: dropped, probed again: {e}"));
                }
                d.close().unwrap();
            }
            Err(e) => bad.push(format!(
                "{name}: probe after a drop without close: {} (frontend {:?}, backend {:?})",
                e.error,
                fe_state(&tb, &be),
                be.state()
            )),
        }
        tb.xen().run_until_idle();
        assert_eq!(
            tb.accounting().bad_frees,
            0,
            "{name}: a page freed while mapped"
        );
        assert_eq!(be.stats().reused_while_mapped, 0, "{name}");
    }

    // A state written before this guest ever probed: the states that kept
    // each kind of backend from ever connecting.
    for (name, cfg, states) in [
        (
            "blkback",
            blkback(4 << 20, true),
            &["2", "3", "4", "5", "7", "8"][..],
        ),
        ("qdisk", qdisk(4 << 20), &["0", "5"][..]),
    ] {
        for st in states {
            let tb = Testbed::new([cfg.clone()]);
            let be = tb.backend(0);
            let guest = tb.guest();
            dom0_write(&tb, &format!("{}/state", be.frontend_path()), st);
            // The first probe connects, or fails leaving the frontend
            // Closed (qdisk answers a frontend in Unknown by closing) and
            // the next one connects.
            let probed = match guest.probe(0, fast()) {
                Ok(d) => Ok(d),
                Err(e) if fe_state(&tb, &be).as_deref() == Some("6") => guest
                    .probe(0, fast())
                    .map_err(|e2| format!("{}, then {}", e.error, e2.error)),
                Err(e) => Err(e.error.to_string()),
            };
            match probed {
                Ok(mut d) => {
                    if let Err(e) = roundtrip(&mut d, &be) {
                        bad.push(format!("{name}: stale state {st}: {e}"));
                    }
                    d.close().unwrap();
                }
                Err(e) => bad.push(format!(
                    "{name}: stale state {st}: {e} (frontend left {:?}, backend {:?})",
                    fe_state(&tb, &be),
                    be.state()
                )),
            }
            assert_eq!(guest.held(), (0, 0, 0), "{name}: stale state {st}");
        }
    }

    assert!(
        bad.is_empty(),
        "{} cases broke:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

// ----- F4 --------------------------------------------------------------------

/// F4: a probe that fails before its rings exist leaves the frontend
/// Closed (not Initialising), advertising no ring and holding no event
/// channel, so that a later probe can start again.
#[test]
fn f4_a_probe_failing_before_the_rings_leaves_the_frontend_closed() {
    let mut bad = Vec::new();
    let mut check = |what: &str, tb: &Testbed, guest: &Guest<'_>, be: &SimBlkBackHandle| {
        let st = fe_state(tb, be);
        let keys = ring_keys(tb, be);
        let ports = guest.held().1;
        if st.as_deref() != Some("6") || !keys.is_empty() || ports != 0 {
            bad.push(format!(
                "{what}: frontend state {st:?}, ring keys {keys:?}, {ports} ports open"
            ));
        }
    };

    // Five grant references left: too few for the rings.
    {
        let tb = Testbed::new([blkback(4 << 20, true)]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let taken = take_grants(&guest, 5);
        let e = probe_err(&guest, "a probe with 5 grants left");
        check(&format!("no grants ({e})"), &tb, &guest, &be);
        give_back(&guest, taken);
        let mut d = guest
            .probe(0, fast())
            .expect("probe once the grants are back");
        roundtrip(&mut d, &be).unwrap();
        d.close().unwrap();
        assert_eq!(guest.held(), (0, 0, 0));
    }

    // The frontend's `backend` key names the frontend's own directory, where
    // no backend answers: the probe times out waiting for InitWait.
    {
        let tb = Testbed::new([qdisk(4 << 20)]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let key = format!("{}/backend", be.frontend_path());
        dom0_write(&tb, &key, &be.frontend_path());
        let e = probe_err(&guest, "a probe of no backend");
        check(&format!("no backend ({e})"), &tb, &guest, &be);
    }

    let mut reset_broke = Vec::new();
    // The backend goes Closing the moment it reaches InitWait. If that
    // happens before the probe looks, the probe finds a backend left
    // Closing and takes it through Closed back to InitWait (as Linux's
    // xenbus_reset_state does), and connects; if it happens while the probe
    // waits, the probe fails and leaves the frontend Closed.
    for (name, cfg) in [
        ("blkback", blkback(4 << 20, true)),
        ("qdisk", qdisk(4 << 20)),
    ] {
        let tb = Testbed::new([cfg]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let _flip = tb.xen().add_device(Flip {
            xsd: tb.xenstored().clone(),
            path: format!("{}/state", be.backend_path()),
            when: "2",
            then: "5",
            done: false,
        });
        let failed = match guest.probe(0, fast()) {
            Ok(mut d) => {
                if let Err(e) = roundtrip(&mut d, &be) {
                    reset_broke.push(format!("{name}: reset from Closing, then {e}"));
                }
                None
            }
            Err(e) => Some(e.error),
        };
        if let Some(e) = failed {
            check(
                &format!("{name}: closing at InitWait ({e})"),
                &tb,
                &guest,
                &be,
            );
        }
    }

    // A malformed frontend state.
    {
        let tb = Testbed::new([blkback(4 << 20, true)]);
        let be = tb.backend(0);
        let guest = tb.guest();
        dom0_write(&tb, &format!("{}/state", be.frontend_path()), "abc");
        let e = probe_err(&guest, "a probe of state abc");
        check(&format!("state abc ({e})"), &tb, &guest, &be);
    }

    bad.extend(reset_broke);
    assert!(
        bad.is_empty(),
        "{} cases broke:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

// ----- F5 --------------------------------------------------------------------

/// F5: wait() on a broken device with nothing left to poll says why at
/// once, like a closed or disconnected one, instead of sleeping to its
/// deadline and answering Timeout.
#[test]
fn f5_wait_on_a_broken_idle_device_reports_the_cause() {
    let tb = Testbed::new([blkback(4 << 20, true)]);
    let guest = tb.guest();
    let mut d = guest.probe(0, fast()).unwrap();
    tb.backend(0).update_faults(|f| f.unknown_status = Some(9));
    let mut buf = vec![0; 512];
    assert!(d.read(0, &mut buf).is_err());
    let cause = cause_of(&d);
    assert!(d.poll().is_none());
    let r = d.wait(tb.xen().now_ns() + 5_000_000);
    assert_eq!(r, Err(IoError::Broken(cause)));
}

// ----- F6 --------------------------------------------------------------------

/// F6: reconnect() on a broken device names the device's broken cause, not
/// the backend's stale state.
#[test]
fn f6_reconnect_on_a_broken_device_says_why() {
    let tb = Testbed::new([blkback(4 << 20, true)]);
    let guest = tb.guest();
    let mut d = guest.probe(0, one_queue()).unwrap();
    tb.backend(0)
        .update_faults(|f| f.bad_id = Some(BadId::OutOfRange));
    let mut buf = vec![SENTINEL; 4096];
    assert!(d.read(0, &mut buf).is_err());
    let cause = cause_of(&d);
    let e = d
        .reconnect()
        .expect_err("reconnect of a broken device")
        .error;
    assert_eq!(e, Error::Io(IoError::Broken(cause)));
    assert_eq!(cause_of(&d), cause);
}

// ----- F7 --------------------------------------------------------------------

/// F7: a second probe of a device this domain already drives is refused
/// with `XenbusError::InUse`, and the first disk goes on working; once the
/// first is closed and dropped the device can be probed again.
#[test]
fn f7_a_second_probe_of_a_driven_device_is_refused() {
    for (name, cfg) in [
        ("blkback", blkback(4 << 20, true)),
        ("qdisk", qdisk(4 << 20)),
    ] {
        let tb = Testbed::new([cfg]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let mut a = guest.probe(0, one_queue()).unwrap();
        a.write(0, &pattern(1, 4096)).unwrap();
        let e = guest.probe(0, one_queue()).err().map(|e| e.error);
        assert_eq!(e, Some(Error::Xenbus(XenbusError::InUse)), "{name}");
        assert_eq!(a.state(), DeviceState::Connected, "{name}");
        assert_eq!(fe_state(&tb, &be).as_deref(), Some("4"), "{name}");
        roundtrip(&mut a, &be).unwrap_or_else(|e| panic!("{name}: the first disk: {e}"));
        a.close().unwrap();
        // The claim goes with the driver (its drop), not with close.
        drop(a);
        let mut b = guest
            .probe(0, one_queue())
            .expect("probe after the first is gone");
        roundtrip(&mut b, &be).unwrap();
        b.close().unwrap();
        assert_eq!(guest.held(), (0, 0, 0), "{name}");
    }
}

// ----- F8 --------------------------------------------------------------------

/// F8: after a shrink, the requests still waiting in the driver (not yet on
/// the ring) that reach past the new end fail with `OutOfRange`, and none
/// of them is sent; those already sent complete as the backend answers.
#[test]
fn f8_after_a_shrink_waiting_requests_past_the_end_fail_unsent() {
    for (name, cfg) in [
        ("blkback", blkback(8 << 20, true)),
        ("qdisk", qdisk(8 << 20)),
    ] {
        let tb = Testbed::new([cfg]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let mut d = guest.probe(0, one_queue()).unwrap();
        let ss = d.sector_size() as u64;
        be.update_faults(|f| f.hold_responses = true);
        let n = 40;
        let mut toks = BTreeSet::new();
        for i in 0..n {
            let s = (6 << 20) / ss + i * (4096 / ss);
            toks.insert(d.submit_write(s, pattern(i, 4096)).unwrap());
        }
        d.kick();
        tb.xen().run_until_idle();
        let sent = be.stats().writes;
        assert!(
            sent > 0 && sent < n,
            "{name}: {sent} of {n} sent: none left waiting"
        );

        be.set_size_bytes(1 << 20).unwrap();
        let ev = d.check_backend();
        assert!(
            matches!(ev, Ok(BackendEvent::Resized { .. })),
            "{name}: {ev:?}"
        );
        be.update_faults(|f| f.hold_responses = false);
        while be.release_held(tb.xen(), 0, |_| {}) {}
        let got = drain_n(tb.xen(), &mut d, n as usize, 100);

        let seen: BTreeSet<_> = got.iter().map(|c| c.token).collect();
        assert_eq!(got.len(), n as usize, "{name}: completions");
        assert_eq!(seen, toks, "{name}: every request completes once");
        assert_eq!(be.stats().writes, sent, "{name}: sent after the shrink");
        let out_of_range = got
            .iter()
            .filter(|c| c.result == Err(IoError::OutOfRange))
            .count();
        let results: BTreeSet<_> = got.iter().map(|c| format!("{:?}", c.result)).collect();
        assert_eq!(
            out_of_range as u64,
            n - sent,
            "{name}: {sent} sent; results {results:?}"
        );
        assert_eq!(d.state(), DeviceState::Connected, "{name}");
        d.close().unwrap();
        assert_eq!(guest.held(), (0, 0, 0), "{name}");
    }
}
