//! A simulated xenstored (feature `sim`).
//!
//! Two layers:
//!
//! - [`Store`] (in `engine.rs`, `protocol.rs`, `perms.rs`): the database —
//!   nodes with values and permissions, the `/local/domain/<id>` layout,
//!   watches, snapshot transactions that fail with `EAGAIN` on conflict, and
//!   the request/reply protocol of `docs/misc/xenstore.txt`. It is pure and
//!   is tested on its own.
//! - [`XenStored`]: a [`SimDevice`] that serves each guest's
//!   `xenstore_domain_interface` page over its event channel
//!   (`docs/misc/xenstore-ring.txt`), exactly as the real daemon would, so
//!   the guest side uses the same [`RingTransport`] it uses on real Xen
//!   (wrapped in a [`SimXsTransport`] that also owns the page).
//!
//! Simulated backends live "in dom0" and use the store directly
//! ([`XenStored::read`], [`XenStored::write`], [`XenStored::watch`] with
//! [`XenStored::poll_event`], ...) instead of speaking the wire protocol.
//!
//! ```
//! use xenblk::hal::DomId;
//! use xenblk::sim::{xenstored::XenStored, SimXen};
//! use xenblk::xenstore::XenStore;
//!
//! let xen = SimXen::new();
//! let xsd = XenStored::new(&xen);
//! let hal = xen.hal(DomId(1));
//! let mut xs = XenStore::new(xsd.connect(&hal).unwrap());
//! xs.write("data/hello", "world").unwrap();
//! assert_eq!(xsd.read(DomId::DOM0, "/local/domain/1/data/hello").unwrap(), "world");
//! assert_eq!(xs.get_domain_path(DomId(1)).unwrap(), "/local/domain/1");
//! ```
//!
//! Fault hooks: [`XenStored::fail_next_commits`] (forced `EAGAIN`),
//! [`XenStored::reply_garbage`] (the next reply replaced by raw bytes),
//! [`XenStored::inject_raw`], [`XenStored::drop_connection`] (the
//! connection error of `xenstore-ring.txt`), [`XenStored::corrupt_indices`].

mod engine;
mod perms;
mod protocol;
mod ring;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

pub use engine::{ConnId, Store};
pub use perms::{Access, Perm};

use super::{DeviceId, SimDevice, SimHal, SimXen};
use crate::abi::xs_wire::XenstoreDomainInterface;
use crate::hal::{DomId, Hal, HalError, Pages, Port, XsTransport};
use crate::xenstore::wire::{Decoder, WatchEvent};
use crate::xenstore::{RingTransport, XsError};
use crate::Result;
use ring::DaemonRing;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A guest's xenstore page. The daemon's ring record and the guest's
/// transport both hold it; the last one to go gives the page back.
struct PageOwner {
    xen: SimXen,
    dom: DomId,
    page: Option<Pages>,
    guest_port: Port,
}

impl Drop for PageOwner {
    fn drop(&mut self) {
        if let Some(p) = self.page.take() {
            // The daemon's mapping is gone (it is dropped before its
            // `PageOwner`), and the transport, which holds the other
            // reference, is being dropped or gone.
            self.xen.free_pages(self.dom, p);
        }
        let _ = self.xen.close_port(self.dom, self.guest_port);
    }
}

/// The guest's end of a simulated xenstore connection: a [`RingTransport`]
/// over the guest's page, which it keeps alive.
pub struct SimXsTransport<'h> {
    ring: RingTransport<'h, SimHal>,
    _page: Arc<PageOwner>,
}

impl std::fmt::Debug for SimXsTransport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimXsTransport")
            .field("port", &self.ring.port())
            .finish()
    }
}

impl SimXsTransport<'_> {
    /// The guest's event-channel port.
    pub fn port(&self) -> Port {
        self.ring.port()
    }
}

impl XsTransport for SimXsTransport<'_> {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        self.ring.send(bytes)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        self.ring.recv(buf)
    }
    fn wait(&mut self, deadline: Option<u64>) -> Result<(), XsError> {
        self.ring.wait(deadline)
    }
    fn now_ns(&self) -> u64 {
        self.ring.now_ns()
    }
}

/// One guest's ring as the daemon sees it.
struct GuestRing {
    dom: DomId,
    conn: ConnId,
    ring: DaemonRing,
    port: Port,
    decoder: Decoder,
    out: VecDeque<u8>,
    garbage: VecDeque<Vec<u8>>,
    dead: bool,
    /// Declared after `ring` so the mapping goes first.
    page: Arc<PageOwner>,
}

impl Drop for GuestRing {
    fn drop(&mut self) {
        let _ = self.page.xen.close_port(DomId::DOM0, self.port);
    }
}

struct Shared {
    rings: Mutex<Vec<GuestRing>>,
    store: Mutex<Store>,
}

/// The simulated xenstored: a handle to the store and the ring device.
/// Cheap to clone; clones share everything. The daemon stops serving rings
/// when the last handle is dropped, so keep one while guests use it.
#[derive(Clone)]
pub struct XenStored {
    xen: SimXen,
    shared: Arc<Shared>,
    device: DeviceId,
}

impl std::fmt::Debug for XenStored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenStored")
            .field("device", &self.device)
            .finish()
    }
}

/// The device the simulator steps. It holds the shared state weakly: the
/// guests' page mappings inside it hold the simulator, and a strong link
/// back would be a reference cycle.
struct Device {
    shared: Weak<Shared>,
}

impl SimDevice for Device {
    fn step(&mut self, xen: &SimXen) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let mut rings = lock(&shared.rings);
        let mut store = lock(&shared.store);
        let mut progress = false;
        for r in rings.iter_mut() {
            progress |= r.service(xen, &mut store);
        }
        progress
    }

    fn name(&self) -> &str {
        "xenstored"
    }
}

impl XenStored {
    /// A fresh store (see [`Store::new`]) served by a device added to `xen`.
    pub fn new(xen: &SimXen) -> XenStored {
        let shared = Arc::new(Shared {
            rings: Mutex::new(Vec::new()),
            store: Mutex::new(Store::new()),
        });
        let handle = xen.add_device(Device {
            shared: Arc::downgrade(&shared),
        });
        XenStored {
            xen: xen.clone(),
            shared,
            device: handle.id(),
        }
    }

    /// The simulator device id (for [`SimXen::remove_device`]).
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// Stops serving every guest ring and lets go of the guests' xenstore
    /// pages (their mappings and the daemon's ports; a page is freed once
    /// its transport is gone too). For [`Testbed::reset`](super::Testbed::reset),
    /// which needs every mapping gone before the simulator is wiped.
    pub(crate) fn drop_rings(&self) {
        let rings = core::mem::take(&mut *lock(&self.shared.rings));
        drop(rings);
    }

    /// Connects guest `hal.domid()` as the toolstack and xenstored would:
    /// introduces the domain if needed ([`Store::introduce_domain`]),
    /// allocates its xenstore page and an event channel, binds the daemon's
    /// end, and returns the guest's transport.
    ///
    /// The ring indices start near `u32::MAX`, so that every connection
    /// exercises the wrap-around of `xenstore-ring.txt`.
    ///
    /// # Errors
    ///
    /// [`HalError::OutOfMemory`] or a simulated hypercall error.
    pub fn connect<'h>(&self, hal: &'h SimHal) -> Result<SimXsTransport<'h>, HalError> {
        let dom = hal.domid();
        let page = hal.alloc_pages(1)?;
        let gfn = page.gfn();
        let iface = page.as_non_null().cast::<XenstoreDomainInterface>();
        let guest_port = match hal.evtchn_alloc_unbound(DomId::DOM0) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: our fresh page, never shared.
                unsafe { hal.free_pages(page) };
                return Err(e);
            }
        };
        let owner = Arc::new(PageOwner {
            xen: self.xen.clone(),
            dom,
            page: Some(page),
            guest_port,
        });
        let port = self.xen.bind_interdomain(DomId::DOM0, dom, guest_port)?;
        let mapping = match self.xen.map_foreign(DomId::DOM0, dom, gfn, false) {
            Ok(m) => m,
            Err(e) => {
                let _ = self.xen.close_port(DomId::DOM0, port);
                return Err(e);
            }
        };
        let ring = DaemonRing::new(mapping);
        let conn = {
            let mut store = lock(&self.shared.store);
            if !store.is_introduced(dom) {
                store.introduce_domain(dom);
            }
            store.connect(dom)
        };
        lock(&self.shared.rings).push(GuestRing {
            dom,
            conn,
            ring,
            port,
            decoder: Decoder::new(),
            out: VecDeque::new(),
            garbage: VecDeque::new(),
            dead: false,
            page: Arc::clone(&owner),
        });
        self.xen.wake();
        // SAFETY: `iface` is the start of a zeroed, page-aligned guest page
        // that the returned value keeps allocated (through `owner`) for as
        // long as it holds the transport; only the daemon ring, through the
        // xenstore-ring.txt protocol, and the transport access it;
        // `guest_port` is the guest's port bound to the daemon.
        let ring = unsafe { RingTransport::new(hal, iface, guest_port) };
        Ok(SimXsTransport { ring, _page: owner })
    }

    /// Locks the store for direct use. Do not wait for guest progress while
    /// holding the guard: the device needs the store to run.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.shared.store)
    }

    /// Runs `f` on the store, then wakes the simulator so the change is
    /// served (threaded mode).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let r = f(&mut self.store());
        self.xen.wake();
        r
    }

    /// [`Store::mutations`].
    pub fn mutations(&self) -> u64 {
        self.store().mutations()
    }

    /// [`Store::read`].
    ///
    /// # Errors
    ///
    /// As for [`Store::read`].
    pub fn read(&self, dom: DomId, path: &str) -> Result<String, XsError> {
        self.store().read(dom, path)
    }

    /// [`Store::read_opt`].
    ///
    /// # Errors
    ///
    /// As for [`Store::read_opt`].
    pub fn read_opt(&self, dom: DomId, path: &str) -> Result<Option<String>, XsError> {
        self.store().read_opt(dom, path)
    }

    /// [`Store::write`].
    ///
    /// # Errors
    ///
    /// As for [`Store::write`].
    pub fn write(&self, dom: DomId, path: &str, value: &str) -> Result<(), XsError> {
        self.with_store(|s| s.write(dom, path, value))
    }

    /// [`Store::mkdir`].
    ///
    /// # Errors
    ///
    /// As for [`Store::mkdir`].
    pub fn mkdir(&self, dom: DomId, path: &str) -> Result<(), XsError> {
        self.with_store(|s| s.mkdir(dom, path))
    }

    /// [`Store::rm`].
    ///
    /// # Errors
    ///
    /// As for [`Store::rm`].
    pub fn rm(&self, dom: DomId, path: &str) -> Result<(), XsError> {
        self.with_store(|s| s.rm(dom, path))
    }

    /// [`Store::directory`].
    ///
    /// # Errors
    ///
    /// As for [`Store::directory`].
    pub fn directory(&self, dom: DomId, path: &str) -> Result<Vec<String>, XsError> {
        self.store().directory(dom, path)
    }

    /// [`Store::set_perms`].
    ///
    /// # Errors
    ///
    /// As for [`Store::set_perms`].
    pub fn set_perms(&self, dom: DomId, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.with_store(|s| s.set_perms(dom, path, perms))
    }

    /// Opens an in-process connection acting as `dom` (for watches).
    pub fn open(&self, dom: DomId) -> ConnId {
        self.store().connect(dom)
    }

    /// [`Store::watch`] on an in-process connection from [`open`](Self::open).
    ///
    /// # Errors
    ///
    /// As for [`Store::watch`].
    pub fn watch(&self, conn: ConnId, path: &str, token: &str) -> Result<(), XsError> {
        self.store().watch(conn, path, token)
    }

    /// [`Store::unwatch`].
    ///
    /// # Errors
    ///
    /// As for [`Store::unwatch`].
    pub fn unwatch(&self, conn: ConnId, path: &str, token: &str) -> Result<(), XsError> {
        self.store().unwatch(conn, path, token)
    }

    /// [`Store::poll_event`].
    pub fn poll_event(&self, conn: ConnId) -> Option<WatchEvent> {
        self.store().poll_event(conn)
    }

    // ----- faults -------------------------------------------------------------------

    /// Makes the next `n` transaction commits fail with `EAGAIN`.
    pub fn fail_next_commits(&self, n: u32) {
        self.store().fail_next_commits(n);
    }

    fn with_ring(&self, dom: DomId, f: impl FnOnce(&mut GuestRing)) -> bool {
        let mut rings = lock(&self.shared.rings);
        let found = rings.iter_mut().rev().find(|r| r.dom == dom && !r.dead);
        let hit = found.is_some();
        if let Some(r) = found {
            f(r);
        }
        drop(rings);
        self.xen.wake();
        hit
    }

    /// Replaces the next reply (not watch event) sent to `dom`'s newest ring
    /// by `bytes`, sent raw. Returns whether `dom` has a live ring.
    pub fn reply_garbage(&self, dom: DomId, bytes: Vec<u8>) -> bool {
        self.with_ring(dom, |r| r.garbage.push_back(bytes))
    }

    /// Queues raw bytes on `dom`'s newest ring right away.
    pub fn inject_raw(&self, dom: DomId, bytes: &[u8]) -> bool {
        self.with_ring(dom, |r| r.out.extend(bytes))
    }

    /// Drops `dom`'s newest connection: sets the page's error indicator to
    /// `XENSTORE_ERROR_COMM`, forgets its watches and transactions, and stops
    /// serving the ring.
    pub fn drop_connection(&self, dom: DomId) -> bool {
        let xen = self.xen.clone();
        let shared = Arc::clone(&self.shared);
        self.with_ring(dom, |r| {
            r.kill(
                &xen,
                &mut lock(&shared.store),
                crate::abi::xs_wire::XENSTORE_ERROR_COMM,
            )
        })
    }

    /// Writes a response producer 2000 bytes ahead of the consumer into
    /// `dom`'s page (a daemon breaking the ring protocol) and signals.
    pub fn corrupt_indices(&self, dom: DomId) -> bool {
        let xen = self.xen.clone();
        self.with_ring(dom, |r| {
            r.ring.corrupt_rsp_prod(2000);
            r.dead = true;
            let _ = xen.send(DomId::DOM0, r.port);
        })
    }
}

impl GuestRing {
    fn kill(&mut self, xen: &SimXen, store: &mut Store, error: u32) {
        log::warn!(
            "sim xenstored: dropping connection of d{} (error {error})",
            self.dom.0
        );
        self.ring.set_error(error);
        self.dead = true;
        store.disconnect(self.conn);
        let _ = xen.send(DomId::DOM0, self.port);
    }

    /// Moves requests in and replies out. Returns whether anything moved.
    fn service(&mut self, xen: &SimXen, store: &mut Store) -> bool {
        if self.dead {
            return false;
        }
        xen.consume(DomId::DOM0, self.port);
        let mut progress = false;
        let mut buf = [0u8; 1024];
        let got = match self.ring.read_requests(&mut buf) {
            Ok(n) => n,
            Err(code) => {
                self.kill(xen, store, code);
                return true;
            }
        };
        let mut rest = &buf[..got];
        while !rest.is_empty() {
            match self.decoder.push(rest) {
                Ok((used, msg)) => {
                    rest = &rest[used..];
                    if let Some(m) = msg {
                        store.handle(self.conn, &m);
                    }
                }
                Err(_) => {
                    // xenstore.txt: an oversize payload kills the connection.
                    self.kill(xen, store, crate::abi::xs_wire::XENSTORE_ERROR_PROTO);
                    return true;
                }
            }
        }
        progress |= got > 0;
        while let Some(m) = store.take_output(self.conn) {
            let is_reply = m.header.ty != crate::abi::xs_wire::msg_type::XS_WATCH_EVENT;
            match self.garbage.pop_front() {
                Some(g) if is_reply => self.out.extend(g),
                g => {
                    if let Some(g) = g {
                        self.garbage.push_front(g);
                    }
                    self.out
                        .extend(crate::xenstore::wire::encode_header(&m.header));
                    self.out.extend(m.payload);
                }
            }
        }
        match self.ring.write_replies(&mut self.out) {
            Ok(n) => progress |= n > 0,
            Err(code) => {
                self.kill(xen, store, code);
                return true;
            }
        }
        if progress {
            let _ = xen.send(DomId::DOM0, self.port);
        }
        progress
    }
}
