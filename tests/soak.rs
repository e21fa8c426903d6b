//! Data-integrity soak: random reads, writes, flushes and discards, blocking
//! and several in flight at once, against the simulated blkback and qdisk
//! in every transport configuration, checked against an in-memory model of
//! the disk. Now and then the backend answers with I/O errors or goes
//! Closing mid-I/O and the driver reconnects; after each round the whole
//! backend disk is compared with the model.
//!
//! `cargo test --features sim --test soak` runs a short fixed round.
//! `XENBLK_SOAK_SECS=N` (what `make soak` / `make soak-smoke` set, in
//! release mode) runs rounds for N seconds and prints the totals.
#![cfg(feature = "sim")]

mod common;
use common::Rng;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use xenblk::blkfront::{Config, DeviceState, RequestToken};
use xenblk::sim::blkback::BackendConfig;
use xenblk::sim::Testbed;

const DISK: usize = 4 << 20;

#[derive(Default, Debug)]
struct Totals {
    rounds: u64,
    reads: u64,
    writes: u64,
    flushes: u64,
    discards: u64,
    bytes_verified: u64,
    io_errors_injected: u64,
    closes_injected: u64,
    reconnects: u64,
}

impl Totals {
    fn ops(&self) -> u64 {
        self.reads + self.writes + self.flushes + self.discards
    }
}

/// Asserts `got == want` (bytes from disk offset `off`), naming the first
/// differing byte instead of printing megabytes.
fn same(got: &[u8], want: &[u8], off: usize, seed: u64, what: &str) {
    assert_eq!(got.len(), want.len());
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "seed {seed}: {what}: byte {} is {:#x}, the model says {:#x}",
            off + i,
            got[i],
            want[i]
        );
    }
}

/// A write that failed (an injected I/O error, or aborted when the backend
/// closed) may or may not have reached the disk: each sector must hold
/// either the old or the new data; the model takes what is there.
fn settle_failed_write(
    be: &xenblk::sim::blkback::SimBlkBackHandle,
    model: &mut [u8],
    off: usize,
    data: &[u8],
    seed: u64,
) {
    let now = be.disk_read(off as u64, data.len()).unwrap();
    for (k, chunk) in now.chunks(512).enumerate() {
        let r = k * 512..(k + 1) * 512;
        assert!(
            chunk == &model[off + r.start..off + r.end] || chunk == &data[r],
            "seed {seed}: failed write left sector at byte {} torn",
            off + k * 512
        );
    }
    model[off..off + data.len()].copy_from_slice(&now);
}

enum Op {
    Read {
        off: usize,
        len: usize,
        sentinel: u8,
    },
    Write {
        off: usize,
        data: Vec<u8>,
    },
}

fn len_of(o: &Op) -> usize {
    match o {
        Op::Read { len, .. } => *len,
        Op::Write { data, .. } => data.len(),
    }
}

/// One round: a fresh simulated machine, one configuration, `ops` operations.
fn round(seed: u64, ops: u64, t: &mut Totals) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let v = seed % 16;
    let mut bcfg = if v & 1 == 0 {
        BackendConfig::blkback()
    } else {
        BackendConfig::qdisk()
    };
    bcfg.disk_bytes = DISK as u64;
    bcfg.hotplug_delay_ns = 0;
    if v & 3 == 2 {
        bcfg.sector_size = 4096;
        bcfg.physical_sector_size = Some(4096);
    }
    let cfg = Config {
        max_ring_page_order: (v >> 2) as u32 % 3,
        max_queues: 1 + (v >> 3) as u32,
        max_indirect_segments: if v & 4 != 0 { 0 } else { 64 },
        persistent_grants: v & 8 == 0,
        io_timeout_ns: 5_000_000_000,
        ..Config::default()
    };
    let tb = Testbed::new([bcfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, cfg).expect("probe");
    let ss = disk.sector_size() as usize;
    let sectors = disk.sectors();
    let mut model = vec![0u8; DISK];
    let mut live: BTreeMap<RequestToken, Op> = BTreeMap::new();

    let check = |model: &mut [u8], c: xenblk::blkfront::Completion, op: Op, t: &mut Totals| match (
        op, c.result,
    ) {
        (Op::Read { off, .. }, Ok(())) => {
            let buf = c.buf.expect("read buffer");
            same(&buf, &model[off..off + buf.len()], off, seed, "read");
            t.bytes_verified += buf.len() as u64;
        }
        (Op::Read { sentinel, .. }, Err(e)) => {
            assert!(
                c.buf.expect("buf").iter().all(|&b| b == sentinel),
                "seed {seed}: failed read ({e}) wrote into its buffer"
            );
        }
        (Op::Write { off, data }, Ok(())) => model[off..off + data.len()].copy_from_slice(&data),
        (Op::Write { off, data }, Err(_)) => settle_failed_write(&be, model, off, &data, seed),
    };

    for _ in 0..ops {
        let big = rng.below(4) == 0;
        let mut n = 1 + rng.below(if big { 512 } else { 16 });
        n = n.min(sectors);
        let sector = rng.below(sectors - n + 1);
        let off = sector as usize * ss;
        let len = n as usize * ss;
        // What a new request would race in flight: blkif defines no order
        // between requests in flight, so a read overlapping a write may see
        // either, and two overlapping writes may land in either order.
        let hits = |o: &Op| match o {
            Op::Write { off: o2, data } => off < o2 + data.len() && *o2 < off + len,
            Op::Read { off: o2, .. } => off < o2 + len_of(o) && *o2 < off + len,
        };
        let over_write = live
            .values()
            .any(|o| matches!(o, Op::Write { .. }) && hits(o));
        let over_any = live.values().any(hits);
        match rng.below(100) {
            // Blocking read, checked at once; not over a write in flight.
            0..=24 if over_write => {}
            // Blocking write; not over anything in flight.
            25..=44 if over_any => {}
            0..=24 => {
                let mut buf = vec![0x5a; len];
                match disk.read(sector, &mut buf) {
                    Ok(()) => {
                        same(&buf, &model[off..off + len], off, seed, "blocking read");
                        t.bytes_verified += len as u64;
                    }
                    Err(e) => assert!(buf.iter().all(|&b| b == 0x5a), "{e}"),
                }
                t.reads += 1;
            }
            25..=44 => {
                let data = rng.bytes(len);
                match disk.write(sector, &data) {
                    Ok(()) => model[off..off + len].copy_from_slice(&data),
                    Err(_) => settle_failed_write(&be, &mut model, off, &data, seed),
                }
                t.writes += 1;
            }
            // Non-blocking, several in flight; a write over nothing in
            // flight, a read over no write in flight.
            45..=79 => {
                let r = if rng.below(2) == 0 && !over_any {
                    let data = rng.bytes(len);
                    disk.submit_write(sector, data.clone())
                        .ok()
                        .map(|tk| (tk, Op::Write { off, data }))
                } else if !over_write {
                    let sentinel = rng.below(256) as u8;
                    disk.submit_read(sector, vec![sentinel; len])
                        .ok()
                        .map(|tk| (tk, Op::Read { off, len, sentinel }))
                } else {
                    // It would race a write in flight: not submitted.
                    None
                };
                if let Some((tk, op)) = r {
                    match &op {
                        Op::Read { .. } => t.reads += 1,
                        _ => t.writes += 1,
                    }
                    live.insert(tk, op);
                }
                disk.kick();
            }
            80..=84 => {
                if disk.flush().is_ok() {
                    t.flushes += 1;
                }
            }
            85..=92 => {
                // Only with nothing in flight: a discard may race a write.
                if live.is_empty() {
                    let before = be.disk_read(off as u64, len).unwrap();
                    same(
                        &before,
                        &model[off..off + len],
                        off,
                        seed,
                        "disk before discard",
                    );
                    if disk.discard(sector, n, false).is_ok() {
                        let after = be.disk_read(off as u64, len).unwrap();
                        for (i, (&a, &b)) in after.iter().zip(&before).enumerate() {
                            assert!(a == b || a == 0, "seed {seed}: discard wrote byte {i}");
                        }
                        model[off..off + len].copy_from_slice(&after);
                        t.discards += 1;
                    }
                }
            }
            93..=96 => {
                be.update_faults(|f| f.io_errors = 1 + rng.below(3) as u32);
                t.io_errors_injected += 1;
            }
            _ => {
                // The backend goes Closing mid-I/O; the driver reconnects.
                be.update_faults(|f| f.closing_after = Some(1 + rng.below(3)));
                t.closes_injected += 1;
            }
        }
        // Harvest whatever finished.
        let _ = tb.xen().run_until_idle();
        while let Some(c) = disk.poll() {
            let op = live
                .remove(&c.token)
                .expect("completion for a token in flight");
            check(&mut model, c, op, t);
        }
        if disk.state() == DeviceState::Connected {
            let _ = disk.check_backend();
        }
        if disk.state() == DeviceState::Disconnected {
            while let Some(c) = disk.poll() {
                let op = live.remove(&c.token).expect("token in flight");
                check(&mut model, c, op, t);
            }
            be.update_faults(|f| f.closing_after = None);
            disk.reconnect().expect("reconnect");
            t.reconnects += 1;
        }
        assert!(
            !matches!(disk.state(), DeviceState::Broken(_)),
            "seed {seed}: device broke: {:?}",
            disk.state()
        );
    }
    be.update_faults(|f| {
        f.io_errors = 0;
        f.closing_after = None;
    });
    while !live.is_empty() {
        match disk.poll() {
            Some(c) => {
                let op = live.remove(&c.token).expect("token in flight");
                check(&mut model, c, op, t);
            }
            None => {
                let _ = tb.xen().run_until_idle();
                let _ = disk.check_backend();
                if disk.state() == DeviceState::Disconnected {
                    while let Some(c) = disk.poll() {
                        let op = live.remove(&c.token).expect("token in flight");
                        check(&mut model, c, op, t);
                    }
                    disk.reconnect().expect("reconnect");
                }
            }
        }
    }
    same(
        &be.disk_read(0, DISK).unwrap(),
        &model,
        0,
        seed,
        "whole disk",
    );
    t.bytes_verified += DISK as u64;
    assert_eq!(disk.close(), Ok(0));
    // (grants, ports, pages) beyond what the guest held before the probe;
    // held() also asserts that no free was refused.
    assert_eq!(
        guest.held(),
        (0, 0, 0),
        "seed {seed}: resources left after close"
    );
    t.rounds += 1;
}

#[test]
fn soak_random_io_matches_the_model() {
    let secs: Option<u64> = std::env::var("XENBLK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut t = Totals::default();
    let start = Instant::now();
    match secs {
        None => {
            for seed in 1..=4 {
                round(seed, 150, &mut t);
            }
        }
        Some(s) => {
            let mut seed = std::env::var("XENBLK_SOAK_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1u64);
            while start.elapsed() < Duration::from_secs(s) {
                round(seed, 2000, &mut t);
                seed += 1;
            }
        }
    }
    println!(
        "soak: {} ops verified ({} reads, {} writes, {} flushes, {} discards) in {} rounds, \
         {} MiB compared with the model, {} I/O-error bursts and {} mid-I/O closes injected, \
         {} reconnects, {:.1} s",
        t.ops(),
        t.reads,
        t.writes,
        t.flushes,
        t.discards,
        t.rounds,
        t.bytes_verified >> 20,
        t.io_errors_injected,
        t.closes_injected,
        t.reconnects,
        start.elapsed().as_secs_f64()
    );
    assert!(t.ops() > 0);
}
