//! [`Testbed`]: a whole simulated machine — hypervisor, xenstored, a guest
//! domain and its virtual disks — built in one call, in the order the
//! toolstack uses.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

use super::blkback::{BackendConfig, BackendStore, SimBlkBack, SimBlkBackHandle};
use super::xenstored::{SimXsTransport, XenStored};
use super::{Accounting, ResetError, SimConfig, SimHal, SimXen};
use crate::blkfront::{BlockFront, Config, ProbeError, SharedStore};
use crate::error::XsErrno;
use crate::gnttab::GrantTable;
use crate::hal::DomId;
use crate::xenbus::XenbusError;
use crate::xenstore::{XenStore, XsError};
use crate::Result;

/// A [`BlockFront`] on a [`Testbed`]'s guest, as [`Guest::probe`] returns it.
pub type SimDisk<'a> = BlockFront<'a, SimHal, SimXsTransport<'a>>;

/// The virtual-device number of the guest's disk `i` as Linux and libxl
/// number them (`xvda` is 0): `202 << 8 | i << 4` (major 202, 16 minors per
/// disk) for `xvda`..`xvdp`, and from `xvdq` on the extended form
/// `1 << 28 | i << 8`, the only one with room for more disks.
///
/// ```
/// use xenblk::sim::vdev_of;
/// assert_eq!(vdev_of(0), 51712); // xvda
/// assert_eq!(vdev_of(1), 51728); // xvdb
/// assert_eq!(vdev_of(16), (1 << 28) | (16 << 8)); // xvdq
/// ```
///
/// # Panics
///
/// For `i >= 1 << 20`: the extended form has 20 bits for the disk.
pub const fn vdev_of(i: usize) -> u32 {
    assert!(
        i < 1 << 20,
        "the extended vdev form has room for 2^20 disks"
    );
    if i < 16 {
        (202 << 8) | ((i as u32) << 4)
    } else {
        (1 << 28) | ((i as u32) << 8)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a [`Testbed`] is made: [`Testbed::builder`], then any of the
/// settings, then [`build`](TestbedBuilder::build).
#[derive(Clone, Debug)]
#[must_use = "nothing is built until `build`"]
pub struct TestbedBuilder {
    guest: DomId,
    threaded: bool,
    sim: SimConfig,
    disks: Vec<(Option<u32>, BackendConfig)>,
}

impl Default for TestbedBuilder {
    fn default() -> Self {
        TestbedBuilder {
            guest: DomId(1),
            threaded: false,
            sim: SimConfig::default(),
            disks: Vec::new(),
        }
    }
}

impl TestbedBuilder {
    /// Adds the next disk, at the first name ([`vdev_of`]) no other disk
    /// has: with only `disk` calls, disk `i` is `xvd` letter `i`.
    pub fn disk(mut self, cfg: BackendConfig) -> Self {
        self.disks.push((None, cfg));
        self
    }

    /// Adds the next disk at virtual-device number `vdev`.
    pub fn disk_at(mut self, vdev: u32, cfg: BackendConfig) -> Self {
        self.disks.push((Some(vdev), cfg));
        self
    }

    /// The guest's domain id (default `DomId(1)`; not dom0, which plays the
    /// toolstack and the backends).
    pub fn guest(mut self, domid: DomId) -> Self {
        self.guest = domid;
        self
    }

    /// Threaded mode ([`SimXen::new_threaded`]): the devices run on a
    /// background thread and the clock is real time. Default: step mode.
    pub fn threaded(mut self) -> Self {
        self.threaded = true;
        self
    }

    /// The simulator's tunables (e.g. more grant frames for a benchmark).
    pub fn sim_config(mut self, cfg: SimConfig) -> Self {
        self.sim = cfg;
        self
    }

    /// Builds the machine: the simulator, xenstored, the guest's domain
    /// (introduced first, so that its `device` directory is readable by it
    /// before any disk is created in it), then every disk's backend, in the
    /// order given.
    ///
    /// # Panics
    ///
    /// When [`try_build`](Self::try_build) fails.
    pub fn build(self) -> Testbed {
        match self.try_build() {
            Ok(tb) => tb,
            Err(e) => panic!("testbed: {e}"),
        }
    }

    /// [`build`](Self::build), with the error instead of a panic.
    ///
    /// # Errors
    ///
    /// As for [`Testbed::add_disk_at`], for the first disk that fails.
    pub fn try_build(self) -> Result<Testbed> {
        let xen = SimXen::with_config(self.sim, self.threaded);
        let xsd = XenStored::new(&xen);
        // As libxl does: the domain's home (with `device/` readable by the
        // guest) exists before any device. A disk created first makes
        // `device/` a dom0-only node, and enumerating it fails with EACCES.
        xsd.with_store(|s| s.introduce_domain(self.guest));
        let hal = xen.hal(self.guest);
        let tb = Testbed {
            disks: Mutex::new(Vec::new()),
            guest_made: AtomicBool::new(false),
            hal,
            xsd,
            xen,
            guest: self.guest,
            origin: self.clone(),
        };
        for (vdev, cfg) in self.disks {
            tb.add(vdev, cfg)?;
        }
        Ok(tb)
    }
}

/// One disk of a [`Testbed`].
#[derive(Debug)]
struct Slot {
    vdev: u32,
    /// `None` once removed.
    backend: Option<SimBlkBackHandle>,
}

/// A simulated machine: a [`SimXen`], its [`XenStored`], a guest domain
/// (its [`SimHal`]) and the guest's virtual disks, each served by a
/// [`SimBlkBack`] — built in one call, as the toolstack would: the domain
/// is introduced to xenstore first, then each disk's frontend and backend
/// directories are created.
///
/// The guest's side — its grant table and xenstore client — is a
/// [`Guest`], made by [`Testbed::guest`]: it borrows the testbed (both
/// borrow its [`SimHal`]), and the disks it probes borrow it.
///
/// ```
/// use xenblk::blkfront::Config;
/// use xenblk::sim::blkback::BackendConfig;
/// use xenblk::sim::Testbed;
///
/// let tb = Testbed::builder()
///     .disk(BackendConfig::blkback()) // disk 0: xvda (vdev 51712)
///     .disk(BackendConfig::qdisk()) // disk 1: xvdb (vdev 51728)
///     .build();
/// let guest = tb.guest();
/// assert_eq!(guest.enumerate().unwrap(), vec![tb.vdev(0), tb.vdev(1)]);
///
/// let mut disk = guest.probe(0, Config::default()).unwrap();
/// disk.write(8, &[0x5a; 4096]).unwrap();
/// assert_eq!(tb.backend(0).disk_read(8 * 512, 4096).unwrap(), vec![0x5a; 4096]);
/// assert_eq!(tb.backend(0).stats().writes, 1);
///
/// // A disk hot-plugged into the running guest.
/// let i = tb.add_disk(BackendConfig::blkback()).unwrap();
/// assert_eq!(tb.vdev(i), 51744); // xvdc
/// let mut third = guest.probe(i, Config::default()).unwrap();
/// assert_eq!(third.sectors(), tb.backend(i).disk_bytes() / 512);
///
/// // Closed, the disks give back every grant, port and page.
/// disk.close().unwrap();
/// third.close().unwrap();
/// assert_eq!(guest.held(), (0, 0, 0));
/// ```
///
/// # Threaded mode
///
/// With [`TestbedBuilder::threaded`], a background thread runs the
/// devices; it stops when the testbed is dropped (or on
/// [`SimXen::stop_threads`]).
///
/// # Escape hatches
///
/// [`xen`](Self::xen), [`xenstored`](Self::xenstored) (e.g. to write
/// hostile keys as dom0, or to inject xenstore faults),
/// [`hal`](Self::hal) and [`backend`](Self::backend) reach every piece.
///
/// # Reuse
///
/// A [`Guest`] and its disks borrow the testbed, and everything they borrow
/// lives in it; so [`reset`](Self::reset) and [`reset_to`](Self::reset_to),
/// which take `&mut self`, run only when no guest or disk is alive. They
/// ready the same machine for the next run (as a fuzzer wants, instead of a
/// new [`SimXen`] per input), in exactly the state a new one would have:
/// ```
/// use xenblk::blkfront::Config;
/// use xenblk::sim::blkback::BackendConfig;
/// use xenblk::sim::Testbed;
///
/// let mut tb = Testbed::new([BackendConfig::blkback()]);
/// for _ in 0..2 {
///     {
///         let guest = tb.guest();
///         let mut disk = guest.probe(0, Config::default()).unwrap();
///         disk.write(0, &[7; 512]).unwrap();
///     } // the disk not even closed
///     tb.reset().unwrap();
///     assert_eq!(tb.xen().now_ns(), 0);
///     assert_eq!(tb.backend(0).disk_read(0, 512).unwrap(), vec![0; 512]);
/// }
/// ```
/// Handles taken with [`backend`](Self::backend) or clones of
/// [`xen`](Self::xen) are the caller's to drop: a backend handle kept alive
/// keeps the backend's mappings, and the reset refuses.
pub struct Testbed {
    // Dropped first: the backends hold mappings of the guest's pages.
    disks: Mutex<Vec<Slot>>,
    guest_made: AtomicBool,
    hal: SimHal,
    xsd: XenStored,
    xen: SimXen,
    guest: DomId,
    /// What it was built (or last reset) from.
    origin: TestbedBuilder,
}

impl fmt::Debug for Testbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Testbed")
            .field("guest", &self.guest)
            .field("disks", &*lock(&self.disks))
            .field("xen", &self.xen)
            .finish_non_exhaustive()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // No device steps while the backends are dropped.
        self.xen.stop_threads();
    }
}

impl Testbed {
    /// A builder with no disks, guest `DomId(1)`, step mode and the default
    /// [`SimConfig`].
    pub fn builder() -> TestbedBuilder {
        TestbedBuilder::default()
    }

    /// The default machine (as [`builder`](Self::builder)) with `disks`,
    /// disk `i` at [`vdev_of`]`(i)`.
    ///
    /// # Panics
    ///
    /// As [`TestbedBuilder::build`].
    pub fn new(disks: impl IntoIterator<Item = BackendConfig>) -> Testbed {
        disks
            .into_iter()
            .fold(Testbed::builder(), TestbedBuilder::disk)
            .build()
    }

    /// [`reset_to`](Self::reset_to) the machine this one was built (or last
    /// reset) as: hot-plugged disks are gone, every disk is new (its disk
    /// zeroed, no faults, no stats), the clock is at 0.
    ///
    /// # Errors
    ///
    /// As for [`reset_to`](Self::reset_to).
    pub fn reset(&mut self) -> Result<(), ResetError> {
        let origin = self.origin.clone();
        self.reset_to(origin)
    }

    /// Makes this testbed into the machine `builder.build()` would make,
    /// reusing its simulator ([`SimXen::reset`]): everything the last run
    /// left — disks, backends, xenstore nodes, watches and connections,
    /// pages, grants, ports, the clock — is gone, and what is built is
    /// built in the same order as by [`TestbedBuilder::build`], so device
    /// ids, gfns, ports and grant references come out the same. A run on a
    /// reset testbed is a run on a new one.
    ///
    /// # Errors
    ///
    /// [`ResetError::Threaded`] for a threaded testbed, [`ResetError::Config`]
    /// when `builder` asks for another [`SimConfig`] or mode,
    /// [`ResetError::StillMapped`] when a mapping outlives the backends
    /// (a backend handle kept by the caller), [`ResetError::Disk`] when a
    /// disk cannot be created. After an error the testbed has no disks and
    /// is only good for dropping (or another reset).
    pub fn reset_to(&mut self, builder: TestbedBuilder) -> Result<(), ResetError> {
        if builder.threaded || self.xen.is_threaded() {
            return Err(ResetError::Threaded);
        }
        if builder.sim != self.xen.config() {
            return Err(ResetError::Config);
        }
        // The backends first: they map the guest's pages; then the daemon's
        // mappings of the guests' xenstore pages.
        let disks = core::mem::take(&mut *lock(&self.disks));
        for be in disks.iter().filter_map(|s| s.backend.as_ref()) {
            self.xen.remove_device(be.device_id());
        }
        drop(disks);
        self.xsd.drop_rings();
        self.xen.reset()?;
        // Then the same steps as `TestbedBuilder::try_build`.
        self.xsd = XenStored::new(&self.xen);
        self.xsd.with_store(|s| s.introduce_domain(builder.guest));
        self.hal = self.xen.hal(builder.guest);
        self.guest = builder.guest;
        *self.guest_made.get_mut() = false;
        self.origin = builder.clone();
        for (vdev, cfg) in builder.disks {
            self.add(vdev, cfg).map_err(ResetError::Disk)?;
        }
        Ok(())
    }

    /// Hot-plugs a disk into the running guest at the first free name (see
    /// [`TestbedBuilder::disk`]); returns its index.
    ///
    /// # Errors
    ///
    /// As for [`add_disk_at`](Self::add_disk_at).
    pub fn add_disk(&self, cfg: BackendConfig) -> Result<usize> {
        self.add(None, cfg)
    }

    /// Hot-plugs a disk at virtual-device number `vdev`; returns its index.
    ///
    /// # Errors
    ///
    /// `Error::XenStore(XsError::Errno(EEXIST))` when a disk of this testbed (removed ones
    /// included: their directories stay) has `vdev`; otherwise as for
    /// [`SimBlkBack::new`].
    pub fn add_disk_at(&self, vdev: u32, cfg: BackendConfig) -> Result<usize> {
        self.add(Some(vdev), cfg)
    }

    fn add(&self, vdev: Option<u32>, cfg: BackendConfig) -> Result<usize> {
        let mut disks = lock(&self.disks);
        let taken = |v: u32| disks.iter().any(|s| s.vdev == v);
        let vdev = match vdev {
            Some(v) if taken(v) => return Err(XsError::Errno(XsErrno::EEXIST).into()),
            Some(v) => v,
            None => {
                let mut k = 0;
                while taken(vdev_of(k)) {
                    k += 1;
                }
                vdev_of(k)
            }
        };
        let store: Arc<dyn BackendStore> = Arc::new(self.xsd.clone());
        let be = SimBlkBack::new(&self.xen, store, self.guest, vdev, cfg)?;
        disks.push(Slot {
            vdev,
            backend: Some(be),
        });
        Ok(disks.len() - 1)
    }

    /// Takes disk `i`'s backend out of the simulator and drops the
    /// testbed's handle to it: a backend gone without a word to the
    /// frontend (its xenstore directories stay). A handle from
    /// [`backend`](Self::backend) still reaches it, and keeps it (and its
    /// mappings) alive. Returns whether there was a backend to remove.
    ///
    /// # Panics
    ///
    /// When there is no disk `i`.
    pub fn remove_disk(&self, i: usize) -> bool {
        let be = self.with_slot(i, |s| s.backend.take());
        match be {
            Some(be) => {
                self.xen.remove_device(be.device_id());
                true
            }
            None => false,
        }
    }

    fn with_slot<R>(&self, i: usize, f: impl FnOnce(&mut Slot) -> R) -> R {
        let mut disks = lock(&self.disks);
        let n = disks.len();
        match disks.get_mut(i) {
            Some(s) => f(s),
            None => panic!("testbed: no disk {i} (it has {n})"),
        }
    }

    /// The handle of disk `i`'s backend (a clone: cheap, and it keeps the
    /// backend alive).
    ///
    /// # Panics
    ///
    /// When there is no disk `i`, or it was removed.
    pub fn backend(&self, i: usize) -> SimBlkBackHandle {
        self.with_slot(i, |s| s.backend.clone())
            .unwrap_or_else(|| panic!("testbed: disk {i} was removed"))
    }

    /// The virtual-device number of disk `i`.
    ///
    /// # Panics
    ///
    /// When there is no disk `i`.
    pub fn vdev(&self, i: usize) -> u32 {
        self.with_slot(i, |s| s.vdev)
    }

    /// How many disks were added (removed ones included: indices stay).
    pub fn disk_count(&self) -> usize {
        lock(&self.disks).len()
    }

    /// The guest's side: its grant table and a xenstore connection, and
    /// the guest's [`Accounting`] once both exist, which
    /// [`Guest::held`] compares against.
    ///
    /// # Panics
    ///
    /// On a second call (a domain has one grant table, and one
    /// [`GrantTable`] takes charge of all of it), or when the xenstore
    /// connection cannot be made (e.g. under a page limit set with
    /// [`SimXen::set_page_limit`]).
    pub fn guest(&self) -> Guest<'_> {
        assert!(
            !self.guest_made.swap(true, Ordering::SeqCst),
            "testbed: guest() was already called (one grant table per domain)"
        );
        let grants = GrantTable::new(&self.hal).expect("testbed: grant table");
        let transport = match self.xsd.connect(&self.hal) {
            Ok(t) => t,
            Err(e) => panic!("testbed: xenstore connection: {e}"),
        };
        let store = SharedStore::new(XenStore::new(transport));
        Guest {
            tb: self,
            grants,
            store,
            base: self.accounting(),
        }
    }

    /// The simulated hypervisor.
    pub fn xen(&self) -> &SimXen {
        &self.xen
    }

    /// The simulated xenstored, for reads, writes and fault hooks as dom0.
    pub fn xenstored(&self) -> &XenStored {
        &self.xsd
    }

    /// The guest's platform seam.
    pub fn hal(&self) -> &SimHal {
        &self.hal
    }

    /// The guest's domain id.
    pub fn domid(&self) -> DomId {
        self.guest
    }

    /// What the guest domain holds right now ([`SimXen::accounting`]).
    pub fn accounting(&self) -> Accounting {
        self.xen.accounting(self.guest)
    }
}

/// The guest's side of a [`Testbed`]: its [`GrantTable`], its xenstore
/// client (a [`SharedStore`]), and what the guest held once both existed.
/// Disks probed through it borrow it.
pub struct Guest<'tb> {
    tb: &'tb Testbed,
    grants: GrantTable<'tb, SimHal>,
    store: SharedStore<SimXsTransport<'tb>>,
    base: Accounting,
}

impl fmt::Debug for Guest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("domid", &self.tb.guest)
            .field("grants", &self.grants)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl<'tb> Guest<'tb> {
    /// Connects to the testbed's disk `i` ([`BlockFront::probe`] at
    /// [`Testbed::vdev`]`(i)`).
    ///
    /// The disk borrows this `Guest` for as long as the `Guest` borrows the
    /// testbed: keep the `Guest` in a variable of its own, made before the
    /// disks.
    ///
    /// # Errors
    ///
    /// As for [`BlockFront::probe`].
    ///
    /// # Panics
    ///
    /// When there is no disk `i`.
    pub fn probe(
        &'tb self,
        i: usize,
        cfg: Config,
    ) -> core::result::Result<SimDisk<'tb>, ProbeError> {
        self.probe_vdev(self.tb.vdev(i), cfg)
    }

    /// Connects to the disk at `vdev`, which the testbed need not know of
    /// (e.g. a frontend directory written by hand).
    ///
    /// # Errors
    ///
    /// As for [`BlockFront::probe`].
    pub fn probe_vdev(
        &'tb self,
        vdev: u32,
        cfg: Config,
    ) -> core::result::Result<SimDisk<'tb>, ProbeError> {
        BlockFront::probe(&self.tb.hal, &self.grants, &self.store, vdev, cfg)
    }

    /// The disks the guest sees ([`BlockFront::enumerate`]).
    ///
    /// # Errors
    ///
    /// As for [`BlockFront::enumerate`].
    pub fn enumerate(&self) -> Result<Vec<u32>, XenbusError> {
        BlockFront::<SimHal, _>::enumerate(&self.store)
    }

    /// The guest's grant table.
    pub fn grants(&self) -> &GrantTable<'tb, SimHal> {
        &self.grants
    }

    /// The guest's xenstore client, as [`BlockFront`] takes it.
    pub fn store(&self) -> &SharedStore<SimXsTransport<'tb>> {
        &self.store
    }

    /// The testbed.
    pub fn testbed(&self) -> &'tb Testbed {
        self.tb
    }

    /// What the guest held when this `Guest` was made, its xenstore page
    /// and port included.
    pub fn base(&self) -> Accounting {
        self.base
    }

    /// What the guest holds beyond [`base`](Self::base): (active grants,
    /// open ports, live pages). After every disk is closed it should be
    /// `(0, 0, 0)`.
    ///
    /// # Panics
    ///
    /// When the simulator refused a free (a page freed while granted or
    /// mapped: `bad_frees`), or the guest holds less than its base.
    pub fn held(&self) -> (usize, usize, usize) {
        let a = self.tb.accounting();
        assert_eq!(
            a.bad_frees, 0,
            "a page was freed while granted or mapped: {a:?}"
        );
        let b = self.base;
        (
            beyond(a.grants_active, b.grants_active, "grants"),
            beyond(a.ports_open, b.ports_open, "ports"),
            beyond(a.pages, b.pages, "pages"),
        )
    }

    /// Asserts what a closed driver may leave behind when a backend keeps
    /// mappings: every grant the guest still has active beyond its base is
    /// one a backend maps, no event channel beyond the base is open, and no
    /// free was refused.
    ///
    /// # Panics
    ///
    /// When it does not hold.
    pub fn assert_only_mapped_grants_left(&self) {
        let a = self.tb.accounting();
        let b = self.base;
        assert_eq!(
            a.bad_frees, 0,
            "a page was freed while granted or mapped: {a:?}"
        );
        let granted = beyond(a.grants_active, b.grants_active, "grants");
        let mapped = beyond(
            a.grants_mapped_by_others,
            b.grants_mapped_by_others,
            "mapped grants",
        );
        assert!(
            granted <= mapped,
            "{granted} grants stay active but only {mapped} are mapped by a backend"
        );
        assert_eq!(a.ports_open, b.ports_open, "event channel left open");
    }
}

fn beyond(now: usize, base: usize, what: &str) -> usize {
    now.checked_sub(base).unwrap_or_else(|| {
        panic!("the guest holds {now} {what}, fewer than the {base} it held at first")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blkfront::BlockFront;
    use crate::sim::DeviceId;
    use crate::Error;

    #[test]
    fn vdevs_follow_the_linux_numbering() {
        assert_eq!(vdev_of(0), 51712, "xvda: 202:0");
        assert_eq!(vdev_of(1), 51728, "xvdb: 202:16");
        assert_eq!(vdev_of(15), 51952, "xvdp: 202:240, the last of major 202");
        assert_eq!(vdev_of(16), 268439552, "xvdq: extended, disk 16");
        assert_eq!(vdev_of(25), 268441856, "xvdz");
    }

    fn small(mut cfg: BackendConfig) -> BackendConfig {
        cfg.disk_bytes = 1 << 20;
        cfg
    }

    #[test]
    fn every_disk_is_enumerable_whenever_it_was_added() {
        let tb = Testbed::builder()
            .disk(small(BackendConfig::blkback()))
            .disk_at(vdev_of(5), small(BackendConfig::qdisk()))
            .disk(small(BackendConfig::blkback()))
            .build();
        assert_eq!(
            (tb.vdev(0), tb.vdev(1), tb.vdev(2)),
            (vdev_of(0), vdev_of(5), vdev_of(1))
        );
        let guest = tb.guest();
        let hot = tb.add_disk(small(BackendConfig::qdisk())).unwrap();
        assert_eq!((hot, tb.vdev(hot)), (3, vdev_of(2)));
        assert_eq!(
            guest.enumerate().unwrap(),
            [vdev_of(0), vdev_of(1), vdev_of(2), vdev_of(5)]
        );
        let mut d = guest.probe(hot, Config::default()).unwrap();
        assert_eq!(d.info().vdev, vdev_of(2));
        d.close().unwrap();
        assert_eq!(guest.held(), (0, 0, 0));
    }

    /// Why `build` introduces the domain before it adds disks.
    #[test]
    fn a_disk_created_before_its_domain_hides_device_from_the_guest() {
        let xen = SimXen::new();
        let xsd = XenStored::new(&xen);
        let store: Arc<dyn BackendStore> = Arc::new(xsd.clone());
        let _be = SimBlkBack::new(
            &xen,
            store,
            DomId(1),
            51712,
            small(BackendConfig::blkback()),
        )
        .unwrap();
        xsd.with_store(|s| s.introduce_domain(DomId(1)));
        let hal = xen.hal(DomId(1));
        let xs = crate::blkfront::SharedStore::new(XenStore::new(xsd.connect(&hal).unwrap()));
        assert_eq!(
            BlockFront::<SimHal, _>::enumerate(&xs),
            Err(XenbusError::Store(XsError::Errno(XsErrno::EACCES)))
        );
    }

    #[test]
    fn a_vdev_is_never_given_twice() {
        let tb = Testbed::builder()
            .disk(small(BackendConfig::blkback()))
            .build();
        assert_eq!(
            tb.add_disk_at(51712, small(BackendConfig::blkback())),
            Err(Error::XenStore(XsError::Errno(XsErrno::EEXIST)))
        );
        assert!(tb.remove_disk(0));
        assert!(!tb.remove_disk(0));
        // The removed disk's directories stay: its name is not reused.
        let i = tb.add_disk(small(BackendConfig::blkback())).unwrap();
        assert_eq!((i, tb.vdev(i), tb.disk_count()), (1, vdev_of(1), 2));
        assert!(TestbedBuilder::default()
            .disk_at(51712, small(BackendConfig::blkback()))
            .disk_at(51712, small(BackendConfig::qdisk()))
            .try_build()
            .is_err());
    }

    #[test]
    fn a_removed_backend_leaves_the_simulator_and_lets_go_of_the_guest() {
        let tb = Testbed::builder()
            .disk(small(BackendConfig::blkback()))
            .build();
        let guest = tb.guest();
        let mut disk = guest.probe(0, Config::default()).unwrap();
        disk.write(0, &[1; 512]).unwrap();
        let id = tb.backend(0).device_id();
        assert!(tb.xen().devices().iter().any(|(d, _)| *d == id));
        assert!(tb.accounting().grants_mapped_by_others > 0, "rings mapped");
        assert!(tb.remove_disk(0));
        assert!(!tb.xen().devices().iter().any(|(d, _)| *d == id));
        assert_eq!(tb.accounting().grants_mapped_by_others, 0);
    }

    type Observed = (
        Vec<(String, String)>,
        Accounting,
        Vec<(DeviceId, String)>,
        u64,
    );

    /// What a run can observe of a machine: every xenstore node, the guest's
    /// accounting, the devices, the clock.
    fn observe(tb: &Testbed) -> Observed {
        (
            tb.xenstored().store().dump(),
            tb.accounting(),
            tb.xen().devices(),
            tb.xen().now_ns(),
        )
    }

    /// One run: probe, a write, a read, and whatever a run leaves (here the
    /// disk is dropped unclosed, its grants and ports still held). Returns
    /// what the run saw along the way.
    fn a_run(tb: &Testbed) -> Vec<String> {
        let guest = tb.guest();
        let mut d = guest.probe(0, Config::default()).unwrap();
        let mut seen = vec![format!("{:?} {:?}", d.ports(), d.info().negotiated)];
        d.write(3, &[9; 4096]).unwrap();
        let mut buf = vec![0; 4096];
        d.read(3, &mut buf).unwrap();
        seen.push(format!("{:?} {}", tb.accounting(), tb.xen().now_ns()));
        seen.push(format!("{:?}", tb.backend(0).stats()));
        seen
    }

    #[test]
    fn a_reset_testbed_is_a_new_testbed() {
        let b = Testbed::builder()
            .disk(small(BackendConfig::blkback()))
            .disk(small(BackendConfig::qdisk()));
        let fresh = b.clone().build();
        let before = observe(&fresh);
        let first = a_run(&fresh);
        let mut tb = fresh;
        tb.reset().unwrap();
        assert_eq!(observe(&tb), before, "xenstore, accounting, devices, clock");
        assert_eq!(tb.backend(0).disk_read(3 * 512, 8).unwrap(), vec![0; 8]);
        assert_eq!(a_run(&tb), first, "the same run sees the same machine");
        // To another machine with the same simulator settings, and back.
        let other = Testbed::builder()
            .guest(DomId(7))
            .disk(small(BackendConfig::qdisk()));
        tb.reset_to(other.clone()).unwrap();
        assert_eq!(observe(&tb), observe(&other.build()));
        tb.reset_to(b).unwrap();
        assert_eq!(a_run(&tb), first);
    }

    #[test]
    fn a_reset_refuses_while_a_kept_backend_handle_maps_the_guest() {
        let mut tb = Testbed::new([small(BackendConfig::blkback())]);
        let kept = tb.backend(0);
        {
            let guest = tb.guest();
            let _d = guest.probe(0, Config::default()).unwrap();
        }
        assert!(matches!(
            tb.reset(),
            Err(ResetError::StillMapped(DomId::DOM0, _))
        ));
        drop(kept);
        tb.reset().unwrap();
        {
            let guest = tb.guest();
            let mut d = guest.probe(0, Config::default()).unwrap();
            d.close().unwrap();
            assert_eq!(guest.held(), (0, 0, 0));
        }
        let mut threaded = Testbed::builder().threaded().build();
        assert_eq!(threaded.reset(), Err(ResetError::Threaded));
        let other = Testbed::builder().sim_config(SimConfig {
            grant_frames: 1,
            ..SimConfig::default()
        });
        assert_eq!(tb.reset_to(other), Err(ResetError::Config));
    }

    #[test]
    fn pages_a_dropped_quarantine_leaked_are_retired_not_reused() {
        let mut cfg = small(BackendConfig::blkback());
        cfg.persistent = false;
        let mut tb = Testbed::new([cfg]);
        {
            let guest = tb.guest();
            let mut d = guest.probe(0, Config::default()).unwrap();
            tb.backend(0).update_faults(|f| f.keep_grants_mapped = true);
            let _ = d.read(0, &mut [0; 4096]);
            assert!(d.quarantined() > 0);
            // The guest goes first: its quarantine is dropped with pages the
            // backend still maps, and leaks them.
        }
        let a = tb.accounting();
        assert!(a.pages > 0, "{a:?}");
        tb.reset().unwrap();
        assert_eq!(tb.accounting(), Accounting::default());
        let guest = tb.guest();
        let mut d = guest.probe(0, Config::default()).unwrap();
        d.write(0, &[1; 4096]).unwrap();
        d.close().unwrap();
        assert_eq!(guest.held(), (0, 0, 0));
    }

    #[test]
    #[should_panic(expected = "already called")]
    fn one_guest_per_testbed() {
        let tb = Testbed::builder().build();
        let _a = tb.guest();
        let _b = tb.guest();
    }
}
