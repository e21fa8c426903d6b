//! Unit tests of the request processor over a fake grant table.

use std::collections::BTreeMap;

use super::super::decode::{decode, RawSlot, SEGS_PER_INDIRECT_PAGE};
use super::super::test_slots::{self as slots, Prng};
use super::*;
use crate::abi::blkif::BLKIF_DISCARD_SECURE;

/// Frames by grant reference; `true` = granted read-only.
#[derive(Default)]
struct FakeGrants {
    frames: BTreeMap<u32, (Vec<u8>, bool)>,
    maps: Vec<(u32, Use)>,
}

impl FakeGrants {
    fn grant(&mut self, gref: u32, fill: u8, readonly: bool) {
        self.frames.insert(gref, (vec![fill; PAGE_SIZE], readonly));
    }
    fn frame(&self, gref: u32) -> &[u8] {
        &self.frames[&gref].0
    }
}

impl Grants for FakeGrants {
    type Frame = u32;
    fn map(&mut self, gref: u32, how: Use) -> Result<u32, HalError> {
        let (_, ro) = self.frames.get(&gref).ok_or(HalError::Hypercall(-1))?;
        if *ro && how == Use::ToGuest {
            return Err(HalError::Hypercall(-30));
        }
        self.maps.push((gref, how));
        Ok(gref)
    }
    fn read(&mut self, f: &u32, off: usize, buf: &mut [u8]) -> Result<(), HalError> {
        buf.copy_from_slice(&self.frames[f].0[off..off + buf.len()]);
        Ok(())
    }
    fn write(&mut self, f: &u32, off: usize, data: &[u8]) -> Result<(), HalError> {
        self.frames.get_mut(f).unwrap().0[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}

fn seg(gref: u32, first: u8, last: u8) -> Segment {
    Segment {
        gref,
        first_sect: first,
        last_sect: last,
    }
}

fn run(cfg: &BackendConfig, disk: &mut Disk, g: &mut FakeGrants, slot: RawSlot) -> Outcome<u32> {
    dispatch(cfg, disk, g, &decode(&slot), false)
}

fn setup(cfg: &BackendConfig) -> (Disk, FakeGrants) {
    (
        Disk::new(cfg.disk_bytes, cfg.null_disk).unwrap(),
        FakeGrants::default(),
    )
}

#[test]
fn direct_write_then_read_moves_the_right_bytes() {
    let cfg = BackendConfig::blkback();
    let (mut disk, mut g) = setup(&cfg);
    g.grant(10, 0xaa, true);
    g.grant(11, 0xbb, true);
    // Sectors 2..=3 of frame 10, then 0..=0 of frame 11, at disk sector 5.
    let w = slots::direct(BLKIF_OP_WRITE, 0, 77, 5, &[seg(10, 2, 3), seg(11, 0, 0)]);
    let out = run(&cfg, &mut disk, &mut g, w);
    assert_eq!(
        (out.id, out.operation, out.status),
        (77, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
    );
    assert_eq!(out.frames, vec![10, 11]);
    assert!(g.maps.iter().all(|&(_, h)| h == Use::FromGuest));
    let mut b = vec![0u8; 4 * 512];
    disk.read(4 * 512, &mut b).unwrap();
    assert!(b[..512].iter().all(|&x| x == 0));
    assert!(b[512..1536].iter().all(|&x| x == 0xaa));
    assert!(b[1536..].iter().all(|&x| x == 0xbb));

    g.grant(12, 0, false);
    let r = slots::direct(BLKIF_OP_READ, 0, 78, 6, &[seg(12, 7, 7)]);
    let out = run(&cfg, &mut disk, &mut g, r);
    assert_eq!(out.status, BLKIF_RSP_OKAY);
    assert!(g.frame(12)[7 * 512..].iter().all(|&x| x == 0xaa));
    assert!(g.frame(12)[..7 * 512].iter().all(|&x| x == 0));
}

/// Writes `n` descriptors for frames `1000..` (sector 0..=7 each) into
/// indirect pages granted as 500.. and returns their refs.
fn indirect_pages(g: &mut FakeGrants, n: usize, fill: u8) -> Vec<u32> {
    let pages = n.div_ceil(SEGS_PER_INDIRECT_PAGE);
    let mut refs = Vec::new();
    for p in 0..pages {
        let mut page = vec![0u8; PAGE_SIZE];
        for i in 0..SEGS_PER_INDIRECT_PAGE.min(n - p * SEGS_PER_INDIRECT_PAGE) {
            let gref = 1000 + (p * SEGS_PER_INDIRECT_PAGE + i) as u32;
            g.grant(gref, fill, false);
            page[i * 8..i * 8 + 8].copy_from_slice(&slots::segment(seg(gref, 0, 7)));
        }
        g.frames.insert(500 + p as u32, (page, true));
        refs.push(500 + p as u32);
    }
    refs
}

#[test]
fn indirect_requests_span_several_pages_and_answer_with_indirect_op() {
    let mut cfg = BackendConfig::blkback();
    cfg.max_indirect_segments = Some(1024);
    let (mut disk, mut g) = setup(&cfg);
    let refs = indirect_pages(&mut g, 600, 0x5c);
    let w = slots::indirect(BLKIF_OP_WRITE, 600, 9, 8, 0, &refs);
    let out = run(&cfg, &mut disk, &mut g, w);
    assert_eq!(
        (out.operation, out.status),
        (BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
    );
    assert!(out.indirect);
    assert_eq!(out.frames.len(), 600);
    assert_eq!(g.maps.iter().filter(|m| m.1 == Use::Indirect).count(), 2);
    let mut b = vec![0u8; 600 * 4096];
    disk.read(8 * 512, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x5c));
    // Too many for what was advertised, and an indirect flush.
    cfg.max_indirect_segments = Some(256);
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::indirect(BLKIF_OP_READ, 257, 1, 0, 0, &refs),
    );
    assert_eq!(out.status, BLKIF_RSP_ERROR);
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::indirect(BLKIF_OP_FLUSH_DISKCACHE, 1, 2, 0, 0, &refs),
    );
    assert_eq!(
        (out.operation, out.status),
        (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_ERROR)
    );
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::indirect(BLKIF_OP_READ, 0, 3, 0, 0, &refs),
    );
    assert_eq!(out.status, BLKIF_RSP_ERROR);
    // A bad descriptor inside an indirect page.
    g.frames.get_mut(&500).unwrap().0[8 * 5..8 * 6]
        .copy_from_slice(&slots::segment(seg(1005, 3, 2)));
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::indirect(BLKIF_OP_READ, 8, 4, 0, 0, &refs),
    );
    assert_eq!(out.status, BLKIF_RSP_ERROR);
    // Not offered at all.
    cfg.max_indirect_segments = None;
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::indirect(BLKIF_OP_READ, 1, 5, 0, 0, &refs),
    );
    assert_eq!(
        (out.operation, out.status),
        (BLKIF_OP_INDIRECT, BLKIF_RSP_EOPNOTSUPP)
    );
}

#[test]
fn blkback_rejects_malformed_requests_without_touching_the_disk() {
    let mut cfg = BackendConfig::blkback();
    cfg.disk_bytes = 64 * 512;
    let (mut disk, mut g) = setup(&cfg);
    g.grant(1, 0xff, true);
    let sectors = 64;
    let bad = [
        slots::direct(BLKIF_OP_READ, 0, 1, 0, &[]),
        slots::direct(BLKIF_OP_WRITE, 0, 1, 0, &[seg(1, 3, 2)]),
        slots::direct(BLKIF_OP_WRITE, 0, 1, 0, &[seg(1, 0, 8)]),
        slots::direct(BLKIF_OP_WRITE, 0, 1, sectors - 1, &[seg(1, 0, 1)]),
        slots::direct(BLKIF_OP_WRITE, 0, 1, u64::MAX, &[seg(1, 0, 0)]),
        slots::direct(BLKIF_OP_WRITE, 0, 1, 0, &[seg(99, 0, 0)]),
    ];
    for (i, slot) in bad.into_iter().enumerate() {
        let out = run(&cfg, &mut disk, &mut g, slot);
        assert_eq!(out.status, BLKIF_RSP_ERROR, "case {i}");
        assert!(out.frames.is_empty());
    }
    // A valid request whose second grant is bad writes nothing.
    let w = slots::direct(BLKIF_OP_WRITE, 0, 1, 20, &[seg(1, 0, 0), seg(99, 0, 0)]);
    assert_eq!(run(&cfg, &mut disk, &mut g, w).status, BLKIF_RSP_ERROR);
    let mut b = [1u8; 512];
    disk.read(20 * 512, &mut b).unwrap();
    assert_eq!(b, [0; 512]);
    // Reading into a read-only grant fails.
    let r = slots::direct(BLKIF_OP_READ, 0, 1, 0, &[seg(1, 0, 0)]);
    assert_eq!(run(&cfg, &mut disk, &mut g, r).status, BLKIF_RSP_ERROR);
    // Unknown operations: EOPNOTSUPP, echoed.
    for op in [4u8, 7, 200] {
        let out = run(&cfg, &mut disk, &mut g, slots::direct(op, 0, 5, 0, &[]));
        assert_eq!(
            (out.id, out.operation, out.status),
            (5, op, BLKIF_RSP_EOPNOTSUPP)
        );
    }
}

#[test]
fn more_than_eleven_direct_segments_are_refused() {
    let cfg = BackendConfig::blkback();
    let (mut disk, mut g) = setup(&cfg);
    g.grant(1, 0, false);
    // Eleven segments in the slot, and `nr_segments` claiming `n`.
    let claiming = |n: u8| {
        let mut s = slots::direct(BLKIF_OP_READ, 0, 1, 0, &[seg(1, 0, 0); 11]);
        s.0[1] = n; // struct blkif_request.nr_segments
        s
    };
    let out = run(&cfg, &mut disk, &mut g, claiming(11));
    assert_eq!(out.status, BLKIF_RSP_OKAY);
    for n in [12, 255] {
        let out = run(&cfg, &mut disk, &mut g, claiming(n));
        assert_eq!(
            (out.id, out.operation, out.status),
            (1, BLKIF_OP_READ, BLKIF_RSP_ERROR)
        );
        assert!(out.frames.is_empty());
        let out = run(&BackendConfig::qdisk(), &mut disk, &mut g, claiming(n));
        assert_eq!(
            (out.id, out.operation, out.status),
            (1, BLKIF_OP_READ, BLKIF_RSP_ERROR)
        );
    }
    assert!(g.maps.iter().all(|m| m.0 == 1));
    assert_eq!(g.maps.len(), 11, "only the well-formed request mapped");
}

#[test]
fn read_only_disks_refuse_everything_but_reads() {
    let mut cfg = BackendConfig::blkback();
    cfg.read_only = true;
    let (mut disk, mut g) = setup(&cfg);
    g.grant(1, 1, false);
    for slot in [
        slots::direct(BLKIF_OP_WRITE, 0, 1, 0, &[seg(1, 0, 0)]),
        slots::direct(BLKIF_OP_FLUSH_DISKCACHE, 0, 1, 0, &[]),
        slots::direct(BLKIF_OP_WRITE_BARRIER, 0, 1, 0, &[]),
        slots::discard(0, 0, 1, 0, 8),
    ] {
        assert_eq!(run(&cfg, &mut disk, &mut g, slot).status, BLKIF_RSP_ERROR);
    }
    let r = slots::direct(BLKIF_OP_READ, 0, 1, 0, &[seg(1, 0, 0)]);
    assert_eq!(run(&cfg, &mut disk, &mut g, r).status, BLKIF_RSP_OKAY);
    let mut q = BackendConfig::qdisk();
    q.read_only = true;
    let w = slots::direct(BLKIF_OP_WRITE, 0, 1, 0, &[seg(1, 0, 0)]);
    assert_eq!(run(&q, &mut disk, &mut g, w).status, BLKIF_RSP_ERROR);
}

#[test]
fn flush_and_barrier_follow_their_offers() {
    let mut cfg = BackendConfig::blkback();
    let (mut disk, mut g) = setup(&cfg);
    let flush = || slots::direct(BLKIF_OP_FLUSH_DISKCACHE, 0, 3, 0, &[]);
    let barrier = || slots::direct(BLKIF_OP_WRITE_BARRIER, 0, 4, 0, &[]);
    let out = run(&cfg, &mut disk, &mut g, flush());
    assert_eq!((out.kind, out.status), (Kind::Flush, BLKIF_RSP_OKAY));
    assert_eq!(
        run(&cfg, &mut disk, &mut g, barrier()).status,
        BLKIF_RSP_OKAY
    );
    cfg.flush = Offer::No;
    cfg.barrier = Offer::Eopnotsupp;
    let out = run(&cfg, &mut disk, &mut g, flush());
    assert_eq!(
        (out.status, out.disable_feature),
        (BLKIF_RSP_EOPNOTSUPP, None)
    );
    let out = run(&cfg, &mut disk, &mut g, barrier());
    assert_eq!(out.status, BLKIF_RSP_EOPNOTSUPP);
    assert_eq!(out.disable_feature, Some("feature-barrier"));
    // A barrier with data writes it.
    cfg.barrier = Offer::Yes;
    g.grant(7, 0x77, true);
    let b = slots::direct(BLKIF_OP_WRITE_BARRIER, 0, 4, 1, &[seg(7, 0, 0)]);
    assert_eq!(run(&cfg, &mut disk, &mut g, b).status, BLKIF_RSP_OKAY);
    let mut x = [0u8; 1];
    disk.read(512, &mut x).unwrap();
    assert_eq!(x, [0x77]);
}

#[test]
fn flushes_without_data_ignore_their_sector_number() {
    // io/blkif.h gives sector_number a meaning for reads and writes only.
    let (mut disk, mut g) = setup(&BackendConfig::blkback());
    for cfg in [BackendConfig::blkback(), BackendConfig::qdisk()] {
        for sector in [u64::MAX, 1 << 60] {
            let f = slots::direct(BLKIF_OP_FLUSH_DISKCACHE, 0, 3, sector, &[]);
            let out = run(&cfg, &mut disk, &mut g, f);
            assert_eq!((out.id, out.status), (3, BLKIF_RSP_OKAY));
        }
    }
    let b = slots::direct(BLKIF_OP_WRITE_BARRIER, 0, 4, u64::MAX, &[]);
    let out = run(&BackendConfig::blkback(), &mut disk, &mut g, b);
    assert_eq!((out.id, out.status), (4, BLKIF_RSP_OKAY));
}

#[test]
fn discard_zeroes_within_the_disk_and_honours_secure_only_when_offered() {
    let mut cfg = BackendConfig::blkback();
    cfg.disk_bytes = 64 * 512;
    let (mut disk, mut g) = setup(&cfg);
    disk.write(0, &[9u8; 64 * 512]).unwrap();
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::discard(BLKIF_DISCARD_SECURE, 0, 8, 2, 3),
    );
    assert_eq!(
        (out.operation, out.status, out.secure),
        (BLKIF_OP_DISCARD, BLKIF_RSP_OKAY, false)
    );
    let mut b = vec![0u8; 6 * 512];
    disk.read(512, &mut b).unwrap();
    assert!(b[..512].iter().all(|&x| x == 9));
    assert!(b[512..2048].iter().all(|&x| x == 0));
    assert!(b[2048..].iter().all(|&x| x == 9));
    cfg.discard_secure = true;
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::discard(BLKIF_DISCARD_SECURE, 0, 8, 2, 3),
    );
    assert!(out.secure);
    let out = run(&cfg, &mut disk, &mut g, slots::discard(0, 0, 8, 60, 5));
    assert_eq!(out.status, BLKIF_RSP_ERROR);
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::discard(0, 0, 8, u64::MAX, 2),
    );
    assert_eq!(out.status, BLKIF_RSP_ERROR);
    cfg.discard = Offer::No;
    let out = run(&cfg, &mut disk, &mut g, slots::discard(0, 0, 8, 0, 1));
    assert_eq!(out.status, BLKIF_RSP_EOPNOTSUPP);
    // qdisk ignores a discard it was not configured for.
    let mut q = BackendConfig::qdisk();
    q.discard = Offer::No;
    let out = run(&q, &mut disk, &mut g, slots::discard(0, 0, 8, 0, 1));
    assert_eq!(out.status, BLKIF_RSP_OKAY);
    let mut x = [0u8; 1];
    disk.read(0, &mut x).unwrap();
    assert_eq!(x, [9]);
}

#[test]
fn four_k_sectors_need_aligned_requests_on_blkback() {
    let mut cfg = BackendConfig::blkback();
    cfg.sector_size = 4096;
    cfg.physical_sector_size = Some(4096);
    let (mut disk, mut g) = setup(&cfg);
    g.grant(1, 1, true);
    let ok = slots::direct(BLKIF_OP_WRITE, 0, 1, 8, &[seg(1, 0, 7)]);
    assert_eq!(run(&cfg, &mut disk, &mut g, ok).status, BLKIF_RSP_OKAY);
    let odd_start = slots::direct(BLKIF_OP_WRITE, 0, 1, 4, &[seg(1, 0, 7)]);
    assert_eq!(
        run(&cfg, &mut disk, &mut g, odd_start).status,
        BLKIF_RSP_ERROR
    );
    let short = slots::direct(BLKIF_OP_WRITE, 0, 1, 8, &[seg(1, 0, 3)]);
    assert_eq!(run(&cfg, &mut disk, &mut g, short).status, BLKIF_RSP_ERROR);
    let disc = slots::discard(0, 0, 1, 8, 4);
    assert_eq!(run(&cfg, &mut disk, &mut g, disc).status, BLKIF_RSP_ERROR);
}

#[test]
fn qdisk_counts_in_logical_blocks_and_refuses_what_qemu_refuses() {
    let mut cfg = BackendConfig::qdisk();
    cfg.sector_size = 4096;
    cfg.disk_bytes = 16 * 4096;
    let (mut disk, mut g) = setup(&cfg);
    g.grant(1, 0x31, true);
    // sector 3 = byte 12288; first=last=0 is one whole 4096-byte block.
    let w = slots::direct(BLKIF_OP_WRITE, 0, 1, 3, &[seg(1, 0, 0)]);
    assert_eq!(run(&cfg, &mut disk, &mut g, w).status, BLKIF_RSP_OKAY);
    let mut b = vec![0u8; 4096];
    disk.read(3 * 4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x31));
    for (slot, want_op) in [
        (
            slots::direct(BLKIF_OP_WRITE, 0, 1, 3, &[seg(1, 0, 1)]),
            BLKIF_OP_WRITE,
        ),
        (
            slots::direct(BLKIF_OP_WRITE, 0, 1, 16, &[seg(1, 0, 0)]),
            BLKIF_OP_WRITE,
        ),
        (
            slots::direct(BLKIF_OP_WRITE_BARRIER, 0, 1, 0, &[]),
            BLKIF_OP_WRITE_BARRIER,
        ),
        (
            slots::indirect(BLKIF_OP_READ, 1, 1, 0, 0, &[1]),
            BLKIF_OP_INDIRECT,
        ),
        (slots::direct(4, 0, 1, 0, &[]), 4),
    ] {
        let out = run(&cfg, &mut disk, &mut g, slot);
        assert_eq!((out.operation, out.status), (want_op, BLKIF_RSP_ERROR));
    }
    // QEMU answers an empty read with success.
    let r = slots::direct(BLKIF_OP_READ, 0, 1, 0, &[]);
    assert_eq!(run(&cfg, &mut disk, &mut g, r).status, BLKIF_RSP_OKAY);
    // Flush without segments, and with them (a write after the flush).
    let f = slots::direct(BLKIF_OP_FLUSH_DISKCACHE, 0, 1, 0, &[]);
    assert_eq!(run(&cfg, &mut disk, &mut g, f).status, BLKIF_RSP_OKAY);
    let f = slots::direct(BLKIF_OP_FLUSH_DISKCACHE, 0, 1, 5, &[seg(1, 0, 0)]);
    assert_eq!(run(&cfg, &mut disk, &mut g, f).status, BLKIF_RSP_OKAY);
    disk.read(5 * 4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x31));
}

#[test]
fn injected_io_errors_and_null_disks() {
    let cfg = BackendConfig::blkback();
    let (mut disk, mut g) = setup(&cfg);
    g.grant(1, 1, true);
    let w = slots::direct(BLKIF_OP_WRITE, 0, 1, 0, &[seg(1, 0, 0)]);
    assert_eq!(
        dispatch(&cfg, &mut disk, &mut g, &decode(&w), true).status,
        BLKIF_RSP_ERROR
    );
    let mut x = [5u8; 1];
    disk.read(0, &mut x).unwrap();
    assert_eq!(x, [0]);
    let mut n = BackendConfig::blkback();
    n.null_disk = true;
    let (mut disk, mut g) = setup(&n);
    let r = slots::direct(BLKIF_OP_READ, 0, 1, 0, &[seg(42, 0, 7)]);
    let out = run(&n, &mut disk, &mut g, r);
    assert_eq!(out.status, BLKIF_RSP_OKAY);
    assert!(g.maps.is_empty(), "a null disk maps nothing");
}

#[test]
fn indirect_requests_to_a_backend_without_them_are_unknown_even_when_malformed() {
    let mut cfg = BackendConfig::blkback();
    cfg.max_indirect_segments = None;
    let (mut disk, mut g) = setup(&cfg);
    for slot in [
        slots::indirect(BLKIF_OP_READ, 1, 3, 0, 0, &[1]),
        slots::indirect(BLKIF_OP_FLUSH_DISKCACHE, 1, 3, 0, 0, &[1]),
        slots::indirect(BLKIF_OP_WRITE, 0, 3, 0, 0, &[1]),
    ] {
        let out = run(&cfg, &mut disk, &mut g, slot);
        assert_eq!(
            (out.id, out.operation, out.status, out.kind),
            (3, BLKIF_OP_INDIRECT, BLKIF_RSP_EOPNOTSUPP, Kind::Unknown)
        );
        let out = run(&BackendConfig::qdisk(), &mut disk, &mut g, slot);
        assert_eq!(
            (out.id, out.operation, out.status),
            (3, BLKIF_OP_INDIRECT, BLKIF_RSP_ERROR)
        );
    }
    // Offered: malformed ones are answered with their indirect_op.
    cfg.max_indirect_segments = Some(4096);
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::indirect(BLKIF_OP_FLUSH_DISKCACHE, 1, 4, 0, 0, &[1]),
    );
    assert_eq!(
        (out.operation, out.status, out.indirect),
        (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_ERROR, true)
    );
    let out = run(
        &cfg,
        &mut disk,
        &mut g,
        slots::indirect(BLKIF_OP_WRITE, 4097, 4, 0, 0, &[1]),
    );
    assert_eq!(
        (out.operation, out.status, out.indirect),
        (BLKIF_OP_WRITE, BLKIF_RSP_ERROR, true)
    );
    assert!(g.maps.is_empty(), "nothing was mapped for any of them");
}

/// Random slots and indirect pages through every personality: each gets a
/// response with its id and a defined status, and the disk of a read-only
/// backend never changes.
#[test]
fn garbage_requests_get_answers_and_never_panic() {
    let mut rng = Prng(0x0ddb_a11c_0ffe_e0dd);
    let mut configs = Vec::new();
    for personality in 0..2 {
        for sector_size in [512, 4096] {
            for read_only in [false, true] {
                let mut c = if personality == 0 {
                    BackendConfig::blkback()
                } else {
                    BackendConfig::qdisk()
                };
                c.sector_size = sector_size;
                c.physical_sector_size = c.physical_sector_size.map(|_| sector_size);
                c.read_only = read_only;
                c.disk_bytes = 64 * 4096;
                if personality == 0 && sector_size == 4096 {
                    c.max_indirect_segments = None;
                }
                c.validate().unwrap();
                configs.push(c);
            }
        }
    }
    let mut statuses = BTreeMap::new();
    for cfg in &configs {
        let (mut disk, mut g) = setup(cfg);
        let mut image = vec![0u8; cfg.disk_bytes as usize];
        rng.fill(&mut image);
        disk.write(0, &image).unwrap();
        for gref in 0..16 {
            g.grant(gref, gref as u8, gref % 3 == 0);
        }
        // Indirect pages 500..508 of garbage, but for descriptors naming
        // frames 0..20 near the start of each (rewritten as it goes).
        for p in 500..508 {
            let mut page = vec![0u8; PAGE_SIZE];
            rng.fill(&mut page);
            g.frames.insert(p, (page, p % 2 == 0));
        }
        for _ in 0..1500 {
            for p in 500..508 {
                let page = &mut g.frames.get_mut(&p).unwrap().0;
                for d in page.chunks_exact_mut(8).take(40) {
                    d.copy_from_slice(&slots::segment(some_segment(&mut rng)));
                }
            }
            let mut b = [0u8; 112];
            rng.fill(&mut b);
            if rng.below(4) != 0 {
                b[0] = rng.below(8) as u8;
            }
            match rng.below(4) {
                0 => b[1] = rng.below(13) as u8,
                1 | 2 => b[1] = rng.below(4) as u8,
                _ => {}
            }
            if rng.below(2) == 0 {
                b[2..4].copy_from_slice(&(rng.below(100) as u16).to_le_bytes());
            }
            if rng.below(4) != 0 {
                // Inside the disk, often aligned to 4096-byte sectors.
                let sector = rng.below(64) * [1, 8][rng.below(2) as usize];
                b[16..24].copy_from_slice(&sector.to_le_bytes());
            }
            for i in 0..11 {
                if rng.below(4) != 0 {
                    let s = slots::segment(some_segment(&mut rng));
                    b[24 + 8 * i..32 + 8 * i].copy_from_slice(&s);
                }
            }
            if b[0] == BLKIF_OP_INDIRECT {
                for i in 0..8 {
                    let gref = 500 + rng.below(9) as u32;
                    b[28 + 4 * i..32 + 4 * i].copy_from_slice(&gref.to_le_bytes());
                }
            }
            let slot = RawSlot(b);
            let req = decode(&slot);
            let out = dispatch(cfg, &mut disk, &mut g, &req, rng.below(8) == 0);
            assert_eq!(out.id, req.id());
            assert!(
                out.operation == b[0] || (b[0] == BLKIF_OP_INDIRECT && out.operation == b[1]),
                "{req:?} answered as {}",
                out.operation
            );
            assert!(
                [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP].contains(&out.status),
                "{req:?}: {}",
                out.status
            );
            if out.status != BLKIF_RSP_OKAY {
                assert!(out.frames.is_empty(), "{req:?}");
            }
            *statuses.entry(out.status).or_insert(0u32) += 1;
            g.maps.clear();
        }
        assert_eq!(disk.len(), cfg.disk_bytes);
        if cfg.read_only {
            assert!(disk_image(&disk) == image, "a read-only disk changed");
        }
    }
    // Every outcome was reached, so the loop went past the first checks.
    assert!(statuses.values().all(|&n| n > 50), "{statuses:?}");
    assert_eq!(statuses.len(), 3, "{statuses:?}");
}

/// A segment naming one of frames 0..20, usually with a sector range that
/// fits a page.
fn some_segment(rng: &mut Prng) -> Segment {
    let gref = rng.below(20) as u32;
    if rng.below(4) == 0 {
        return seg(gref, rng.below(256) as u8, rng.below(10) as u8);
    }
    let first = rng.below(8) as u8;
    seg(gref, first, first + rng.below(u64::from(8 - first)) as u8)
}

fn disk_image(disk: &Disk) -> Vec<u8> {
    let mut b = vec![0u8; disk.len() as usize];
    disk.read(0, &mut b).unwrap();
    b
}
