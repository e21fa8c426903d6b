//! `RingTransport` against a hand-rolled daemon that pokes the shared page
//! directly (`docs/misc/xenstore-ring.txt`): masking and wrap-around of the
//! free-running offsets, full and empty queues, notifications, and hostile
//! offsets or error indicators.
#![cfg(feature = "sim")]

use std::mem::offset_of;
use std::ptr::{addr_of, addr_of_mut, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

use xenblk::abi::xs_wire::*;
use xenblk::hal::{DomId, Hal, Pages, Port, XsTransport};
use xenblk::sim::{SimHal, SimXen};
use xenblk::xenstore::{RingTransport, XsError};

const GUEST: DomId = DomId(3);
const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
const FEATURES: usize = offset_of!(XenstoreDomainInterface, server_features);
const CONNECTION: usize = offset_of!(XenstoreDomainInterface, connection);
const ERROR: usize = offset_of!(XenstoreDomainInterface, error);

/// The daemon's view of the page: raw pointers, like another domain's
/// mapping.
struct Daemon {
    iface: *mut XenstoreDomainInterface,
    port: Port,
}

impl Daemon {
    fn idx(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is that of a u32 field of the live page; only the
        // atomic field is referenced, never the byte arrays.
        unsafe { &*self.iface.cast::<u8>().add(offset).cast::<AtomicU32>() }
    }
    fn set_all(&self, v: u32) {
        for f in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
            self.idx(f).store(v, Ordering::SeqCst);
        }
    }
    fn req_byte(&self, i: u32) -> u8 {
        // SAFETY: masked index inside the 1024-byte req array of the live page.
        unsafe {
            addr_of!((*self.iface).req[i as usize & (XENSTORE_RING_SIZE - 1)]).read_volatile()
        }
    }
    /// Produces `bytes` into rsp and publishes them.
    fn produce(&self, bytes: &[u8]) {
        let mut prod = self.idx(RSP_PROD).load(Ordering::SeqCst);
        for &b in bytes {
            // SAFETY: as in `req_byte`, for the rsp array.
            unsafe {
                addr_of_mut!((*self.iface).rsp[prod as usize & (XENSTORE_RING_SIZE - 1)])
                    .write_volatile(b)
            };
            prod = prod.wrapping_add(1);
        }
        self.idx(RSP_PROD).store(prod, Ordering::Release);
    }
}

struct Setup {
    xen: SimXen,
    hal: SimHal,
    page: Option<Pages>,
    guest_port: Port,
    daemon: Daemon,
}

fn setup() -> Setup {
    let xen = SimXen::new();
    let hal = xen.hal(GUEST);
    let page = hal.alloc_pages(1).unwrap();
    let guest_port = hal.evtchn_alloc_unbound(DomId::DOM0).unwrap();
    let port = xen
        .bind_interdomain(DomId::DOM0, GUEST, guest_port)
        .unwrap();
    let daemon = Daemon {
        iface: page.as_ptr().cast(),
        port,
    };
    Setup {
        xen,
        hal,
        page: Some(page),
        guest_port,
        daemon,
    }
}

impl Setup {
    fn transport(&self) -> RingTransport<'_, SimHal> {
        let iface = NonNull::new(self.daemon.iface).unwrap();
        // SAFETY: the page outlives the transport (freed in Drop after it),
        // and only this test's daemon and the transport touch it.
        unsafe { RingTransport::new(&self.hal, iface, self.guest_port) }
    }
    fn notifies(&self) -> u64 {
        self.xen.notify_count(GUEST, self.guest_port)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(p) = self.page.take() {
            // SAFETY: no transport outlives the setup; nothing is granted.
            unsafe { self.hal.free_pages(p) };
        }
    }
}

#[test]
fn send_masks_and_wraps_the_free_running_offsets() {
    let s = setup();
    let start = u32::MAX - 9; // wraps after 10 bytes; mask 1014
    s.daemon.set_all(start);
    let mut t = s.transport();
    let data: Vec<u8> = (0..30).collect();
    let before = s.notifies();
    assert_eq!(t.send(&data).unwrap(), 30);
    let prod = s.daemon.idx(REQ_PROD).load(Ordering::SeqCst);
    assert_eq!(prod, start.wrapping_add(30));
    for (k, &b) in data.iter().enumerate() {
        assert_eq!(s.daemon.req_byte(start.wrapping_add(k as u32)), b);
    }
    assert_eq!(s.notifies(), before + 1, "one notification per update");
    assert_eq!(t.send(&[]).unwrap(), 0);
    assert_eq!(s.notifies(), before + 1, "no notification without bytes");
}

#[test]
fn a_full_request_queue_takes_nothing_until_consumed() {
    let s = setup();
    s.daemon.set_all(5000);
    let mut t = s.transport();
    let big = vec![0xaa; 1500];
    assert_eq!(t.send(&big).unwrap(), 1024, "exactly one ring's worth");
    assert_eq!(t.send(&big).unwrap(), 0, "full: prod - cons == 1024");
    s.daemon.idx(REQ_CONS).store(5000 + 100, Ordering::SeqCst);
    assert_eq!(t.send(&big).unwrap(), 100);
    assert_eq!(s.daemon.idx(REQ_PROD).load(Ordering::SeqCst), 5000 + 1124);
}

#[test]
fn recv_reads_across_the_wrap_in_pieces() {
    let s = setup();
    let start = 1000u32; // mask 1000: 24 bytes before the end of the array
    s.daemon.set_all(start);
    let mut t = s.transport();
    let mut buf = [0u8; 64];
    assert_eq!(t.recv(&mut buf).unwrap(), 0, "empty: prod == cons");
    let data: Vec<u8> = (100..160).collect();
    s.daemon.produce(&data);
    let before = s.notifies();
    assert_eq!(t.recv(&mut buf[..25]).unwrap(), 25);
    assert_eq!(t.recv(&mut buf[25..]).unwrap(), 35);
    assert_eq!(&buf[..60], &data[..]);
    assert_eq!(s.daemon.idx(RSP_CONS).load(Ordering::SeqCst), start + 60);
    assert_eq!(s.notifies(), before + 2, "notify after consuming");
    assert_eq!(t.recv(&mut buf).unwrap(), 0);
}

#[test]
fn a_full_reply_queue_is_read_completely() {
    let s = setup();
    s.daemon.set_all(u32::MAX - 500);
    let mut t = s.transport();
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    s.daemon.produce(&data);
    let mut buf = vec![0u8; 2000];
    assert_eq!(t.recv(&mut buf).unwrap(), 1024);
    assert_eq!(&buf[..1024], &data[..]);
}

#[test]
fn hostile_offsets_break_the_connection() {
    // Reply producer more than 1024 ahead.
    let s = setup();
    s.daemon.set_all(7);
    s.daemon.idx(RSP_PROD).store(7 + 1025, Ordering::SeqCst);
    let mut t = s.transport();
    assert_eq!(t.recv(&mut [0; 8]), Err(XsError::Connection));
    assert_eq!(t.send(b"x"), Err(XsError::Connection), "stays broken");
    assert_eq!(t.wait(Some(1)), Err(XsError::Connection));

    // Request consumer ahead of our producer (a huge wrapped distance).
    let s = setup();
    s.daemon.set_all(7);
    s.daemon.idx(REQ_CONS).store(9, Ordering::SeqCst);
    let mut t = s.transport();
    assert_eq!(t.send(b"x"), Err(XsError::Connection));
}

#[test]
fn the_error_indicator_counts_only_when_advertised() {
    let s = setup();
    s.daemon.set_all(0);
    s.daemon
        .idx(ERROR)
        .store(XENSTORE_ERROR_COMM, Ordering::SeqCst);
    let mut t = s.transport();
    assert_eq!(t.send(b"ab").unwrap(), 2, "no feature bit: field ignored");
    s.daemon
        .idx(FEATURES)
        .store(XENSTORE_SERVER_FEATURE_ERROR, Ordering::SeqCst);
    assert_eq!(t.send(b"ab"), Err(XsError::Connection));
    assert_eq!(t.recv(&mut [0; 4]), Err(XsError::Connection));
}

#[test]
fn nothing_moves_while_a_reconnection_is_in_progress() {
    let s = setup();
    s.daemon.set_all(0);
    s.daemon
        .idx(FEATURES)
        .store(XENSTORE_SERVER_FEATURE_RECONNECTION, Ordering::SeqCst);
    s.daemon
        .idx(CONNECTION)
        .store(XENSTORE_RECONNECT, Ordering::SeqCst);
    s.daemon.produce(b"xyz");
    let mut t = s.transport();
    assert_eq!(t.send(b"ab").unwrap(), 0);
    assert_eq!(t.recv(&mut [0; 4]).unwrap(), 0);
    s.daemon
        .idx(CONNECTION)
        .store(XENSTORE_CONNECTED, Ordering::SeqCst);
    assert_eq!(t.send(b"ab").unwrap(), 2);
    assert_eq!(t.recv(&mut [0; 4]).unwrap(), 3);
}

#[test]
fn wait_returns_on_an_event_and_times_out_without_one() {
    let s = setup();
    let mut t = s.transport();
    // Clear the pending flag the bind may have left.
    s.xen.consume(GUEST, s.guest_port);
    let deadline = t.now_ns() + 1_000_000;
    assert_eq!(t.wait(Some(deadline)), Err(XsError::Timeout));
    assert!(
        t.now_ns() >= deadline,
        "virtual clock moved to the deadline"
    );
    s.xen.send(DomId::DOM0, s.daemon.port).unwrap();
    let deadline = t.now_ns() + 1_000_000;
    assert_eq!(t.wait(Some(deadline)), Ok(()));
    assert!(
        !s.xen.is_pending(GUEST, s.guest_port),
        "wait consumed the event"
    );
}
