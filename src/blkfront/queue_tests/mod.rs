//! `Queue` against a backend the tests play by hand ([`RingPeer`]): what
//! goes on the ring, what is granted and how, what `complete` accepts, and
//! where every page and grant ends up.
//!
//! Requests are decoded with the simulator's own decoder
//! (`sim::blkback::decode`, written from `blkif.h`), never with `wire.rs`.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::abi::blkif::BLKIF_OP_INDIRECT;
use crate::blkfront::request::{Op, Pending, PendingTable, RequestToken};
use crate::blkfront::Broken;
use crate::sim::blkback::decode::{self, Direct, Indirect, RawSlot, Request, Segment};
use crate::sim::errno::{EPERM, EROFS};
use crate::sim::{Accounting, RingPeer, SimConfig, SimHal, SimXen};

mod complete;
mod pool;
mod ring;
mod teardown;

type Peer = RingPeer<RawSlot, BlkifResponse>;
type Q<'a> = Queue<'a, SimHal>;

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId::DOM0;
/// The device number: the queue's tag in the grant table's quarantine.
const VDEV: u32 = 51712;
const HANDLE: u16 = 51712;
const SECTORS_PER_PAGE: u8 = (PAGE_SIZE / 512) as u8;

// ----- fixtures ------------------------------------------------------------------

/// `n` distinct pending ids, as the driver's pending table hands them out.
fn pending_ids(n: u64) -> Vec<PendingId> {
    let mut t = PendingTable::default();
    (0..n)
        .map(|i| {
            t.insert(Pending {
                token: RequestToken(i),
                op: Op::Flush {
                    op: BLKIF_OP_FLUSH_DISKCACHE,
                },
                buf: None,
                pushed: 0,
                in_flight: 0,
                error: None,
                direct: true,
                private: false,
            })
        })
        .collect()
}

fn attach(xen: &SimXen, q: &Q<'_>) -> Peer {
    RingPeer::attach(xen, BACK, FRONT, q.ring_grefs(), q.port()).unwrap()
}

/// Bytes that differ from page to page and from `seed` to `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i / PAGE_SIZE) as u8 ^ seed)
        .collect()
}

fn read_part(pending: PendingId, sector: u64, len: usize) -> RwPart<'static> {
    RwPart {
        pending,
        sector: WireSector(sector),
        offset: 0,
        len,
        data: None,
    }
}

fn write_part(pending: PendingId, sector: u64, data: &[u8]) -> RwPart<'_> {
    RwPart {
        pending,
        sector: WireSector(sector),
        offset: 0,
        len: data.len(),
        data: Some(data),
    }
}

fn rsp(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation,
        status,
    }
}

fn ok(id: u64, operation: u8) -> BlkifResponse {
    rsp(id, operation, BLKIF_RSP_OKAY)
}

/// Every request the frontend published, decoded by the simulator.
fn take(peer: &mut Peer) -> Vec<Request> {
    peer.take_requests()
        .unwrap()
        .iter()
        .map(decode::decode)
        .collect()
}

fn direct(r: &Request) -> Direct {
    match r {
        Request::Direct(d) => *d,
        other => panic!("expected a direct request, got {other:?}"),
    }
}

fn indirect(r: &Request) -> Indirect {
    match r {
        Request::Indirect(i) => *i,
        other => panic!("expected an indirect request, got {other:?}"),
    }
}

/// The backend publishes `rsps` (one per request it took); returns what
/// the queue reads off the ring, in order.
fn answer(q: &mut Q<'_>, peer: &mut Peer, rsps: &[BlkifResponse]) -> Vec<BlkifResponse> {
    for r in rsps {
        peer.push_response(r).unwrap();
    }
    peer.publish().unwrap();
    let mut got = Vec::new();
    while let Some(r) = q.next_response().unwrap() {
        got.push(r);
    }
    assert_eq!(got, rsps, "the ring delivers each response once, in order");
    got
}

fn done(r: core::result::Result<Done, Violation>) -> Done {
    match r {
        Ok(d) => d,
        Err(v) => panic!("expected a valid response, got {v:?}"),
    }
}

fn violation(r: core::result::Result<Done, Violation>) -> Violation {
    match r {
        Ok(d) => panic!("expected a violation, got a completion of {:?}", d.slot),
        Err(v) => v,
    }
}

/// Whether the backend can map `gref` right now (read-only), i.e. it is
/// still granted.
fn granted(peer: &Peer, gref: u32) -> bool {
    peer.map_grant(GrantRef(gref), false).is_ok()
}

fn grefs(segs: &[Segment]) -> Vec<u32> {
    segs.iter().map(|s| s.gref).collect()
}
