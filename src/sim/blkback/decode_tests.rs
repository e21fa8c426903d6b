//! The simulator's request decoder: against hand-written bytes of
//! `io/blkif.h`, against the driver's own encoders (the check that catches an
//! encoding bug on either side), on malformed slots, and on garbage.

use std::vec::Vec;

use super::super::test_slots::{self as slots, Prng};
use super::*;
use crate::abi::blkif::{
    BlkifRequestSegment, BlkifResponse, BLKIF_DISCARD_SECURE, BLKIF_OP_RESERVED_1,
};
use crate::blkfront::wire::{encode_segment, RequestSlot};
use crate::ring::{BackRing, FrontRing, TestPages};

fn seg(gref: u32, first_sect: u8, last_sect: u8) -> Segment {
    Segment {
        gref,
        first_sect,
        last_sect,
    }
}

fn direct(r: Request) -> Direct {
    match r {
        Request::Direct(d) => d,
        other => panic!("not a direct request: {other:?}"),
    }
}

fn indirect(r: Request) -> Indirect {
    match r {
        Request::Indirect(i) => i,
        other => panic!("not an indirect request: {other:?}"),
    }
}

fn discard(r: Request) -> Discard {
    match r {
        Request::Discard(d) => d,
        other => panic!("not a discard: {other:?}"),
    }
}

// ----- the header's bytes ----------------------------------------------------

#[test]
fn hand_written_slots_decode_field_by_field() {
    // struct blkif_request: WRITE, 2 segments, handle 0xca00, id, sector,
    // seg[0] = {gref 0x11223344, 1, 6}, seg[1] = {gref 0xfffffffe, 0, 7}.
    let mut b = [0u8; 112];
    b[..4].copy_from_slice(&[1, 2, 0x00, 0xca]);
    b[4..8].copy_from_slice(&[0xee; 4]); // padding: ignored
    b[8..16].copy_from_slice(&[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
    b[16..24].copy_from_slice(&[0xf0, 0xde, 0xbc, 0x9a, 0x78, 0x56, 0x34, 0x12]);
    b[24..32].copy_from_slice(&[0x44, 0x33, 0x22, 0x11, 1, 6, 0xee, 0xee]);
    b[32..40].copy_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0, 7, 0, 0]);
    b[40..48].copy_from_slice(&[0x55; 8]); // seg[2], past nr_segments
    let d = direct(decode(&RawSlot(b)));
    assert_eq!(
        (d.operation, d.handle, d.id, d.sector),
        (1, 0xca00, 0x0102_0304_0506_0708, 0x1234_5678_9abc_def0)
    );
    assert_eq!(
        d.segments(),
        &[seg(0x1122_3344, 1, 6), seg(0xffff_fffe, 0, 7)]
    );

    // struct blkif_request_indirect: READ of 513 segments (two pages),
    // handle at 24, indirect_grefs from 28.
    let mut b = [0u8; 112];
    b[..4].copy_from_slice(&[6, 0, 0x01, 0x02]);
    b[8] = 9;
    b[16] = 0x20;
    b[24..26].copy_from_slice(&[0x02, 0x01]);
    b[28..32].copy_from_slice(&[0xaa, 0, 0, 0]);
    b[32..36].copy_from_slice(&[0xbb, 0, 0, 0x80]);
    b[36..40].copy_from_slice(&[0xcc; 4]); // a third gref: not a page of this request
    let i = indirect(decode(&RawSlot(b)));
    assert_eq!(
        (i.indirect_op, i.nr_segments(), i.id, i.sector, i.handle),
        (0, 513, 9, 0x20, 0x0102)
    );
    assert_eq!(i.page_grefs(), &[0xaa, 0x8000_00bb]);

    // struct blkif_request_discard: secure, handle 3, nr_sectors at 24.
    let mut b = [0u8; 112];
    b[..4].copy_from_slice(&[5, 1, 3, 0]);
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    b[16] = 64;
    b[24..32].copy_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(
        discard(decode(&RawSlot(b))),
        Discard {
            flag: 1,
            handle: 3,
            id: u64::MAX,
            sector: 64,
            nr_sectors: 1 << 32,
        }
    );

    // An indirect page: descriptor i at 8 * i.
    let mut page = [0u8; 4096];
    page[8..14].copy_from_slice(&[0x78, 0x56, 0x34, 0x12, 2, 3]);
    page[4088..4094].copy_from_slice(&[1, 0, 0, 0, 7, 7]);
    let segs: Vec<Segment> = indirect_page_segments(&page).collect();
    assert_eq!(segs.len(), 512);
    assert_eq!(segs[0], seg(0, 0, 0));
    assert_eq!(segs[1], seg(0x1234_5678, 2, 3));
    assert_eq!(segs[511], seg(1, 7, 7));
}

#[test]
fn the_test_encoder_and_the_decoder_agree() {
    let segs = [seg(7, 0, 7), seg(u32::MAX, 3, 3), seg(0x0102_0304, 255, 0)];
    let d = direct(decode(&slots::direct(3, 0xffff, 42, 1 << 50, &segs)));
    assert_eq!(
        (d.operation, d.handle, d.id, d.sector),
        (3, 0xffff, 42, 1 << 50)
    );
    assert_eq!(d.segments(), &segs);
    let i = indirect(decode(&slots::indirect(
        1,
        4096,
        5,
        6,
        7,
        &[1, 2, 3, 4, 5, 6, 7, 8],
    )));
    assert_eq!(
        (i.indirect_op, i.nr_segments(), i.id, i.sector, i.handle),
        (1, 4096, 5, 6, 7)
    );
    assert_eq!(i.page_grefs(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        discard(decode(&slots::discard(0, 9, 10, 11, 12))),
        Discard {
            flag: 0,
            handle: 9,
            id: 10,
            sector: 11,
            nr_sectors: 12
        }
    );
    let s = seg(0xdead_beef, 1, 2);
    assert_eq!(indirect_page_segments(&slots::segment(s)).next(), Some(s));
}

// ----- against the driver's encoders ----------------------------------------

/// A one-page ring with the driver's request type at the front and the
/// simulator's at the back, as in a real connection: what the driver's
/// encoding puts in a slot is exactly what the simulator decodes.
struct Wire {
    front: FrontRing<RequestSlot, BlkifResponse>,
    back: BackRing<RawSlot, BlkifResponse>,
    /// Declared last: both rings point into it.
    _pages: TestPages,
}

impl Wire {
    fn new() -> Wire {
        let pages = TestPages::new(0);
        // SAFETY: `pages` is one zeroed page that outlives both ends (it is
        // dropped after them); the two ends are each other's only peer; both
        // request types and the response are plain integers, valid for
        // every bit pattern.
        let (front, back) = unsafe {
            (
                FrontRing::init(pages.ptr(), 0).expect("order 0"),
                BackRing::attach(pages.ptr(), 0).expect("order 0"),
            )
        };
        Wire {
            front,
            back,
            _pages: pages,
        }
    }

    /// Sends `slot` through the next ring slot (walking all 32 and wrapping
    /// over a test, so a stride mismatch would show) and returns what the
    /// back end takes out.
    fn carry(&mut self, slot: &RequestSlot) -> RawSlot {
        self.front.push_request(slot).expect("room");
        self.front.push_requests();
        let raw = self.back.poll_request().expect("ring").expect("request");
        self.back
            .push_response(&BlkifResponse::default())
            .expect("taken");
        self.back.push_responses();
        self.front.poll_response().expect("ring").expect("response");
        raw
    }
}

fn driver_seg(s: Segment) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref: s.gref,
        first_sect: s.first_sect,
        last_sect: s.last_sect,
    }
}

const SECTORS: [u64; 5] = [0, 1, u64::MAX, 1 << 40, 0x0102_0304_0506_0708];
const IDS: [u64; 5] = [0, 1, u64::MAX, 0x8000_0000_0000_0001, 0xdead_beef_cafe_f00d];
const HANDLES: [u16; 4] = [0, 51712, 0xffff, 0x0102];

#[test]
fn driver_slot_is_one_simulator_slot() {
    assert_eq!(core::mem::size_of::<RequestSlot>(), SLOT_SIZE);
}

#[test]
fn driver_direct_requests_decode_to_every_field_they_carry() {
    let mut wire = Wire::new();
    let mut n = 0u32;
    for op in [
        BLKIF_OP_READ,
        BLKIF_OP_WRITE,
        BLKIF_OP_WRITE_BARRIER,
        BLKIF_OP_FLUSH_DISKCACHE,
    ] {
        for &sector in &SECTORS {
            for &id in &IDS {
                for &handle in &HANDLES {
                    for count in [0usize, 1, 11] {
                        n = n.wrapping_add(0x9e37_79b9);
                        let segs: Vec<Segment> = (0..count as u32)
                            .map(|i| {
                                let g = match i {
                                    0 => u32::MAX,
                                    1 => 0,
                                    _ => n.wrapping_mul(i + 1),
                                };
                                seg(g, (i * 37) as u8 ^ op, 255 - (i * 11) as u8)
                            })
                            .collect();
                        let theirs: Vec<_> = segs.iter().copied().map(driver_seg).collect();
                        let raw = wire.carry(&RequestSlot::direct(op, handle, id, sector, &theirs));
                        let d = direct(decode(&raw));
                        assert_eq!(
                            (d.operation, d.handle, d.id, d.sector),
                            (op, handle, id, sector)
                        );
                        assert_eq!(d.segments(), &segs[..]);
                    }
                }
            }
        }
    }
    // The driver never sends more than a slot holds.
    let twelve: Vec<_> = (0..12).map(|i| driver_seg(seg(i, 0, 7))).collect();
    let d = direct(decode(
        &wire.carry(&RequestSlot::direct(0, 0, 1, 2, &twelve)),
    ));
    assert_eq!(d.segments().len(), 11);
    assert_eq!(d.segments()[10], seg(10, 0, 7));
    // Operations without a request layout: only id is read.
    for op in [BLKIF_OP_RESERVED_1, 7, 128, 255] {
        for &id in &IDS {
            let raw = wire.carry(&RequestSlot::direct(op, 1, id, 2, &[]));
            assert_eq!(decode(&raw), Request::Unknown { operation: op, id });
        }
    }
}

#[test]
fn driver_indirect_requests_decode_to_every_field_they_carry() {
    let mut wire = Wire::new();
    let mut k = 0usize;
    for op in [BLKIF_OP_READ, BLKIF_OP_WRITE] {
        for pages in 1..=8usize {
            let grefs: Vec<u32> = (0..pages as u32)
                .map(|i| {
                    if i == 0 {
                        u32::MAX
                    } else {
                        0x0101_0101 * i + op as u32
                    }
                })
                .collect();
            let full = pages * SEGS_PER_INDIRECT_PAGE;
            for nr in [full - SEGS_PER_INDIRECT_PAGE + 1, full - 7, full] {
                k += 1;
                let (id, sector, handle) = (
                    IDS[k % IDS.len()],
                    SECTORS[k % SECTORS.len()],
                    HANDLES[k % HANDLES.len()],
                );
                let nr16 = u16::try_from(nr).unwrap();
                let raw = wire.carry(&RequestSlot::indirect(op, nr16, id, sector, handle, &grefs));
                let i = indirect(decode(&raw));
                assert_eq!(
                    (i.indirect_op, i.nr_segments(), i.id, i.sector, i.handle),
                    (op, nr, id, sector, handle)
                );
                assert_eq!(i.page_grefs(), &grefs[..]);
            }
        }
    }
    // All eight grefs sent, fewer pages used: only those are the request's.
    let eight = [11, 12, 13, 14, 15, 16, 17, 18];
    let raw = wire.carry(&RequestSlot::indirect(BLKIF_OP_READ, 600, 1, 2, 3, &eight));
    assert_eq!(indirect(decode(&raw)).page_grefs(), &[11, 12]);
    // What the driver's encoder can express but no backend can serve.
    let raw = wire.carry(&RequestSlot::indirect(
        BLKIF_OP_FLUSH_DISKCACHE,
        1,
        77,
        0,
        0,
        &[1],
    ));
    assert_eq!(
        decode(&raw),
        Request::Malformed {
            id: 77,
            why: Malformed::IndirectOp { indirect_op: 3 }
        }
    );
    for nr in [0u16, 4097, u16::MAX] {
        let raw = wire.carry(&RequestSlot::indirect(BLKIF_OP_WRITE, nr, 78, 0, 0, &eight));
        assert_eq!(
            decode(&raw),
            Request::Malformed {
                id: 78,
                why: Malformed::IndirectSegments {
                    indirect_op: BLKIF_OP_WRITE,
                    nr_segments: nr
                }
            }
        );
    }
}

#[test]
fn driver_indirect_pages_decode_to_the_same_segments() {
    let mut page = [0u8; 4096];
    let mut want = Vec::new();
    for i in 0..SEGS_PER_INDIRECT_PAGE as u32 {
        let s = seg(
            i.wrapping_mul(0x0100_0193) ^ 0xf000_000f,
            i as u8,
            (i >> 1) as u8,
        );
        let at = 8 * i as usize;
        page[at..at + 8].copy_from_slice(&encode_segment(&driver_seg(s)));
        want.push(s);
    }
    let got: Vec<Segment> = indirect_page_segments(&page).collect();
    assert_eq!(got, want);
    for s in [seg(0, 0, 0), seg(u32::MAX, 255, 255), seg(1, 0, 7)] {
        let b = encode_segment(&driver_seg(s));
        assert_eq!(indirect_page_segments(&b).collect::<Vec<_>>(), [s]);
    }
}

#[test]
fn driver_discards_decode_to_every_field_they_carry() {
    let mut wire = Wire::new();
    for flag in [0, BLKIF_DISCARD_SECURE] {
        for &sector in &SECTORS {
            for &id in &IDS {
                for &handle in &HANDLES {
                    for nr_sectors in [0, 1, u64::MAX, 1 << 33] {
                        let raw =
                            wire.carry(&RequestSlot::discard(flag, handle, id, sector, nr_sectors));
                        assert_eq!(
                            discard(decode(&raw)),
                            Discard {
                                flag,
                                handle,
                                id,
                                sector,
                                nr_sectors
                            }
                        );
                    }
                }
            }
        }
    }
}

// ----- malformed and garbage -------------------------------------------------

#[test]
fn malformed_slots_say_why() {
    let full = [seg(1, 0, 0); 11];
    for op in 0..=3u8 {
        for n in 12..=255u8 {
            let mut s = slots::direct(op, 0, 5, 0, &full);
            s.0[1] = n; // nr_segments
            let r = decode(&s);
            assert_eq!(
                r,
                Request::Malformed {
                    id: 5,
                    why: Malformed::TooManySegments {
                        operation: op,
                        nr_segments: n
                    }
                }
            );
            assert!(!r.is_indirect());
        }
    }
    for op in 2..=255u8 {
        let r = decode(&slots::indirect(op, 1, 6, 0, 0, &[1]));
        assert_eq!(
            r,
            Request::Malformed {
                id: 6,
                why: Malformed::IndirectOp { indirect_op: op }
            }
        );
        assert!(r.is_indirect());
        assert_eq!(r.id(), 6);
    }
    let why = |r: Request| match r {
        Request::Malformed { why, .. } => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        why(decode(&slots::indirect(1, 0, 6, 0, 0, &[]))).operation(),
        1
    );
    assert!(why(decode(&slots::indirect(0, 4097, 6, 0, 0, &[]))).indirect());
    assert_eq!(
        indirect(decode(&slots::indirect(0, 4096, 6, 0, 0, &[]))).page_grefs(),
        &[0; 8]
    );
    for op in [4u8, 7, 8, 100, 255] {
        assert_eq!(
            decode(&slots::direct(op, 0, 9, 0, &[])),
            Request::Unknown {
                operation: op,
                id: 9
            }
        );
    }
}

/// What decoding `b` must give, checked against the bytes themselves.
fn check_against_bytes(b: &[u8; SLOT_SIZE], r: &Request) {
    let le = |off: usize, n: usize| {
        b[off..off + n]
            .iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    };
    assert_eq!(r.id(), le(8, 8));
    match *r {
        Request::Direct(d) => {
            assert!(b[0] <= 3);
            assert_eq!(
                (d.operation, d.handle, d.sector),
                (b[0], le(2, 2) as u16, le(16, 8))
            );
            assert_eq!(d.segments().len(), usize::from(b[1]));
            for (i, s) in d.segments().iter().enumerate() {
                let at = 24 + 8 * i;
                assert_eq!(*s, seg(le(at, 4) as u32, b[at + 4], b[at + 5]));
            }
        }
        Request::Indirect(i) => {
            let n = le(2, 2) as usize;
            assert_eq!(b[0], 6);
            assert!(b[1] <= 1 && (1..=4096).contains(&n));
            assert_eq!(
                (i.indirect_op, i.nr_segments(), i.sector, i.handle),
                (b[1], n, le(16, 8), le(24, 2) as u16)
            );
            assert_eq!(i.page_grefs().len(), n.div_ceil(512));
            for (k, &g) in i.page_grefs().iter().enumerate() {
                assert_eq!(u64::from(g), le(28 + 4 * k, 4));
            }
        }
        Request::Discard(d) => {
            assert_eq!(b[0], 5);
            assert_eq!(
                (d.flag, d.handle, d.sector, d.nr_sectors),
                (b[1], le(2, 2) as u16, le(16, 8), le(24, 8))
            );
        }
        Request::Unknown { operation, .. } => {
            assert_eq!(operation, b[0]);
            assert!(operation == 4 || operation > 6);
        }
        Request::Malformed { why, .. } => match why {
            Malformed::TooManySegments {
                operation,
                nr_segments,
            } => {
                assert!(operation <= 3 && operation == b[0]);
                assert!(nr_segments > 11 && nr_segments == b[1]);
            }
            Malformed::IndirectOp { indirect_op } => {
                assert_eq!((b[0], b[1]), (6, indirect_op));
                assert!(indirect_op > 1);
            }
            Malformed::IndirectSegments {
                indirect_op,
                nr_segments,
            } => {
                assert_eq!(
                    (b[0], b[1], u64::from(nr_segments)),
                    (6, indirect_op, le(2, 2))
                );
                assert!(nr_segments == 0 || nr_segments > 4096);
            }
        },
    }
}

#[test]
fn garbage_slots_decode_to_what_their_bytes_say_without_panicking() {
    let mut rng = Prng(0x5eed_0fb1_0c5e_ed0f);
    let mut seen = [0u32; 5];
    for _ in 0..8000 {
        let mut b = [0u8; SLOT_SIZE];
        rng.fill(&mut b);
        // Mostly the operations and counts with meaning, so that every
        // layout and every malformation is reached often.
        if rng.below(4) != 0 {
            b[0] = rng.below(8) as u8;
        }
        match rng.below(4) {
            0 => b[1] = rng.below(13) as u8,
            1 | 2 => b[1] = rng.below(3) as u8,
            _ => {}
        }
        if rng.below(2) == 0 {
            let n = rng.below(4100) as u16;
            b[2..4].copy_from_slice(&n.to_le_bytes());
        }
        let r = decode(&RawSlot(b));
        check_against_bytes(&b, &r);
        let k = match r {
            Request::Direct(_) => 0,
            Request::Indirect(_) => 1,
            Request::Discard(_) => 2,
            Request::Unknown { .. } => 3,
            Request::Malformed { .. } => 4,
        };
        seen[k] += 1;
    }
    assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    // Garbage indirect pages, and slices of any length.
    let mut page = [0u8; 4096];
    for len in [0, 1, 7, 8, 9, 4095, 4096] {
        rng.fill(&mut page);
        let segs: Vec<Segment> = indirect_page_segments(&page[..len]).collect();
        assert_eq!(segs.len(), len / 8);
        for (i, s) in segs.iter().enumerate() {
            let c = &page[8 * i..8 * i + 8];
            let gref = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            assert_eq!(*s, seg(gref, c[4], c[5]));
        }
    }
}
