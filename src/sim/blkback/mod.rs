//! A simulated block backend: what xenblk's frontend is tested against.
//!
//! [`SimBlkBack`] plays dom0's half of a virtual disk, in one of two
//! [`Personality`]s that follow the real backends closely:
//!
//! - **blkback** (Linux `xen-blkback`): InitWait with only the transport keys
//!   (`feature-persistent`, `max-ring-page-order`, `multi-queue-max-queues`),
//!   `physical-device` from the "hotplug script", then — once the frontend
//!   is Initialised — reads its keys, maps the ring(s), binds the event
//!   channel(s), writes geometry and features and goes Connected. Grants are
//!   mapped (persistently when negotiated, up to a bound), indirect requests
//!   and multi-queue are supported, `sectors` counts 512-byte units.
//! - **qdisk** (QEMU `xen-block`): geometry (`sectors` in logical blocks) and
//!   features already at InitWait; grant copy; no barrier, persistent
//!   grants, indirect requests or queues. With `direct-io-safe=1` it can be
//!   made to stay in Initialising forever, the failure seen with Debian's
//!   QEMU.
//!
//! The exact key sets are in [`config`]. Requests are validated as strictly
//! as the real backends do (see the `request` module table): malformed
//! requests get `BLKIF_RSP_ERROR`, unknown or unoffered operations
//! `BLKIF_RSP_EOPNOTSUPP`, so frontend bugs show up in tests.
//!
//! # Use
//!
//! [`SimBlkBack::new`] acts as the toolstack too: it creates the frontend
//! directory `/local/domain/<fe>/device/vbd/<vdev>` and the backend directory
//! `/local/domain/0/backend/{vbd,qdisk}/<fe>/<vdev>` with libxl's keys and
//! permissions, then adds the backend to the [`SimXen`] as a device, which
//! drives it in step or threaded mode. The returned [`SimBlkBackHandle`]
//! reads and writes the disk, reads [`Stats`], sets [`Faults`], resizes
//! and closes the backend.
//!
//! The backend lives as long as a handle to it: it holds grant mappings and
//! its store (usually the simulated xenstored), all of which hold the
//! simulator, so the simulator holds it only weakly
//! ([`SimXen::add_weak_device`]). Dropping the last handle removes the
//! backend (a backend domain gone without a word to the frontend); dropping
//! the whole world frees it and the simulator.
//!
//! The backend reaches xenstore through [`BackendStore`] (implemented by
//! [`MemStore`] for tests without a xenstore daemon) and is notified only
//! through its event channels: a frontend that forgets to notify hangs, as
//! it would on Xen.
//!
//! # Simulator limits
//!
//! - A multi-page ring must be one allocation of the frontend, granted in
//!   page order (the simulator cannot build a contiguous mapping of
//!   scattered frames); otherwise connecting fails like a bad ring-ref.
//! - Only the native (x86_64) ring layout is simulated.

use std::format;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

use crate::blkfront::IoError;
use crate::hal::DomId;
#[cfg(doc)]
use crate::hal::HalError;
use crate::sim::{DeviceHandle, DeviceId, SimDevice, SimXen};
use crate::xenbus::XenbusError;
use crate::xenbus::XenbusState;
use crate::Result;

pub mod config;
pub(crate) mod decode;
mod disk;
mod faults;
mod io;
mod puppet;
mod request;
mod store;
#[cfg(test)]
mod test_slots;
mod xenbus;

pub use config::{BackendConfig, Offer, Personality};
pub use disk::DiskImage;
pub use faults::{BadId, Faults, Stats};
pub use store::{BackendStore, MemStore, NodePerms, Perm};

use disk::Disk;
use io::Queue;

/// The live connection: one or more rings.
struct Conn {
    queues: Vec<Queue>,
    order: u32,
    persistent: bool,
}

/// A simulated block backend (a [`SimDevice`]). Created with
/// [`SimBlkBack::new`] and reached through its [`SimBlkBackHandle`].
pub struct SimBlkBack {
    name: String,
    cfg: BackendConfig,
    store: Arc<dyn BackendStore>,
    fe: DomId,
    fe_path: String,
    be_path: String,
    disk: Disk,
    faults: Faults,
    stats: Stats,
    state: XenbusState,
    probed: bool,
    hotplug_at: Option<u64>,
    hotplug_done: bool,
    last_fe_state: Option<XenbusState>,
    /// The frontend's state as last read, with the store's
    /// [`mutations`](BackendStore::mutations) count at the time.
    fe_state_read: Option<(u64, XenbusState)>,
    /// qdisk: the store's mutation count at its last connect attempt.
    qdisk_tried_at: Option<u64>,
    conn: Option<Conn>,
    online: bool,
    removed: bool,
    last_error: Option<String>,
    last_answered: Option<u64>,
    /// The configuration of the backend that takes this one's place when
    /// it next reaches Closed ([`SimBlkBackHandle::restart_as`]).
    replacement: Option<BackendConfig>,
}

impl core::fmt::Debug for SimBlkBack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimBlkBack")
            .field("name", &self.name)
            .field("state", &self.state)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl SimBlkBack {
    /// Creates the device as libxl would (both xenstore directories, with
    /// permissions: the frontend may read the backend directory and dom0 the
    /// frontend's), and adds the backend to `xen`. It probes (goes InitWait)
    /// the first time the simulator steps it, and runs while the returned
    /// handle (or a clone) lives.
    ///
    /// # Errors
    ///
    /// [`XenbusError::MalformedKey`] for an inconsistent `cfg`,
    /// [`HalError::OutOfMemory`] when the disk cannot be allocated, and
    /// xenstore errors from `store`.
    #[allow(clippy::new_ret_no_self)] // the device lives in the simulator
    pub fn new(
        xen: &SimXen,
        store: Arc<dyn BackendStore>,
        frontend: DomId,
        vdev: u32,
        cfg: BackendConfig,
    ) -> Result<SimBlkBackHandle> {
        cfg.validate()?;
        let fe_path = format!("/local/domain/{}/device/vbd/{vdev}", frontend.0);
        let be_path = format!(
            "/local/domain/0/backend/{}/{}/{vdev}",
            cfg.backend_kind(),
            frontend.0
        );
        let disk = match &cfg.image {
            Some(img) if !cfg.null_disk => Disk::with_image(cfg.disk_bytes, img)?,
            _ => Disk::new(cfg.disk_bytes, cfg.null_disk)?,
        };
        store.write(&fe_path, "")?;
        store.set_perms(&fe_path, frontend, Perm::None, &[(DomId::DOM0, Perm::Read)])?;
        store.write(&be_path, "")?;
        store.set_perms(&be_path, DomId::DOM0, Perm::None, &[(frontend, Perm::Read)])?;
        for (k, v) in config::toolstack_backend_keys(&cfg, &fe_path, frontend, vdev) {
            store.write(&format!("{be_path}/{k}"), &v)?;
        }
        for (k, v) in config::toolstack_frontend_keys(&cfg, &be_path, vdev) {
            store.write(&format!("{fe_path}/{k}"), &v)?;
        }
        let dev = SimBlkBack {
            name: format!("{}-d{}-{vdev}", cfg.backend_kind(), frontend.0),
            cfg,
            store,
            fe: frontend,
            fe_path,
            be_path,
            disk,
            faults: Faults::default(),
            stats: Stats::default(),
            state: XenbusState::Initialising,
            probed: false,
            hotplug_at: None,
            hotplug_done: false,
            last_fe_state: None,
            fe_state_read: None,
            qdisk_tried_at: None,
            conn: None,
            online: true,
            removed: false,
            last_error: None,
            last_answered: None,
            replacement: None,
        };
        Ok(SimBlkBackHandle {
            dev: xen.add_weak_device(dev),
        })
    }

    fn stats_now(&self) -> Stats {
        let mut s = self.stats;
        s.state = Some(self.state);
        s.grants_mapped = 0;
        s.persistent_grants = 0;
        s.grants_kept = 0;
        s.queues = 0;
        if let Some(c) = &self.conn {
            s.queues = c.queues.len();
            s.ring_order = c.order;
            s.persistent = c.persistent;
            for q in &c.queues {
                s.grants_mapped += q.grants_mapped();
                s.persistent_grants += q.persistent.len();
                s.grants_kept += q.kept.len();
            }
        }
        s
    }
}

impl SimDevice for SimBlkBack {
    fn step(&mut self, xen: &SimXen) -> bool {
        let mut progress = self.xenbus_step(xen);
        progress |= self.io_step(xen);
        progress
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn next_wakeup_ns(&self) -> Option<u64> {
        let hotplug = if self.hotplug_done {
            None
        } else {
            self.hotplug_at
        };
        match (hotplug, self.next_due_ns()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A test's (or a user's) handle to a [`SimBlkBack`] the simulator runs.
/// Each method locks the backend briefly; cheap to clone. The backend is
/// dropped (and leaves the simulator) with the last clone.
#[derive(Clone, Debug)]
#[must_use = "the backend is dropped with its last handle"]
pub struct SimBlkBackHandle {
    dev: DeviceHandle<SimBlkBack>,
}

impl SimBlkBackHandle {
    /// The id to pass to [`SimXen::remove_device`].
    pub fn device_id(&self) -> DeviceId {
        self.dev.id()
    }

    /// `/local/domain/0/backend/{vbd,qdisk}/<fe>/<vdev>`.
    pub fn backend_path(&self) -> String {
        self.dev.lock().be_path.clone()
    }

    /// `/local/domain/<fe>/device/vbd/<vdev>`.
    pub fn frontend_path(&self) -> String {
        self.dev.lock().fe_path.clone()
    }

    /// Where a fatal error of the blkback personality is written
    /// (`xenbus_dev_fatal`): `/local/domain/0/error/backend/vbd/<fe>/<vdev>/error`.
    pub fn error_path(&self) -> String {
        let be = self.backend_path();
        format!(
            "/local/domain/0/error/{}/error",
            be.trim_start_matches("/local/domain/0/")
        )
    }

    /// The configuration the backend was created with.
    pub fn config(&self) -> BackendConfig {
        self.dev.lock().cfg.clone()
    }

    /// The backend's xenbus state (what its `state` key says).
    pub fn state(&self) -> XenbusState {
        self.dev.lock().state
    }

    /// The counters, with the current state and mapping counts.
    pub fn stats(&self) -> Stats {
        self.dev.lock().stats_now()
    }

    /// The last connection error (a fatal error, or qdisk's logged one).
    pub fn last_error(&self) -> Option<String> {
        self.dev.lock().last_error.clone()
    }

    /// The fault plan as it is now (one-shot faults clear once applied).
    pub fn faults(&self) -> Faults {
        self.dev.lock().faults
    }

    /// Replaces the fault plan.
    pub fn set_faults(&self, faults: Faults) {
        self.dev.lock().faults = faults;
    }

    /// Changes the fault plan in place.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.dev.lock().faults);
    }

    /// Reads `len` bytes of the disk at byte offset `off`.
    ///
    /// # Errors
    ///
    /// [`IoError::OutOfRange`] past the end of the disk.
    pub fn disk_read(&self, off: u64, len: usize) -> Result<Vec<u8>, IoError> {
        let mut buf = vec![0u8; len];
        self.dev.lock().disk.read(off, &mut buf)?;
        Ok(buf)
    }

    /// Writes `data` to the disk at byte offset `off` (behind the frontend's
    /// back, as another user of the image would).
    ///
    /// # Errors
    ///
    /// [`IoError::OutOfRange`] past the end of the disk.
    pub fn disk_write(&self, off: u64, data: &[u8]) -> Result<(), IoError> {
        self.dev.lock().disk.write(off, data)
    }

    /// The disk size in bytes.
    pub fn disk_bytes(&self) -> u64 {
        self.dev.lock().disk.len()
    }

    /// Resizes the disk to `bytes` (a multiple of the sector size). Once the
    /// geometry is published (blkback Connected, qdisk after InitWait) it
    /// rewrites `sectors` and then `state` with its current value, which
    /// fires the frontend's watch — what Linux's `xen_vbd_resize` and QEMU's
    /// resize callback do.
    ///
    /// # Errors
    ///
    /// [`IoError::Misaligned`] for a size that is not a multiple of the
    /// sector size, [`HalError::OutOfMemory`] when the disk cannot grow.
    pub fn set_size_bytes(&self, bytes: u64) -> Result<()> {
        let mut d = self.dev.lock();
        if bytes % u64::from(d.cfg.sector_size) != 0 {
            return Err(IoError::Misaligned.into());
        }
        d.disk.resize(bytes)?;
        let published = match d.cfg.personality {
            Personality::Blkback => d.state == XenbusState::Connected,
            Personality::Qdisk => d.probed,
        };
        if published {
            let sectors = d.cfg.sectors_key(bytes);
            d.write_be("sectors", &sectors.to_string());
            let st = d.state;
            d.write_be("state", st.as_str());
        }
        Ok(())
    }

    /// The toolstack detaches the disk (`xl block-detach`): `online=0` and
    /// the backend goes Closing; when the frontend reaches Closed the backend
    /// goes Closed, unmaps everything and is gone (no reconnect).
    pub fn close_backend(&self) {
        let mut d = self.dev.lock();
        d.online = false;
        d.write_be("online", "0");
        d.set_state(XenbusState::Closing);
    }

    /// The backend restarts as one configured as `cfg`: another build of
    /// blkback or QEMU, a driver domain that came back, the host a guest
    /// moved to. It goes Closing now and stays online; once the frontend is
    /// Closed it is replaced, on the same disk (its contents kept, resized
    /// to `cfg.disk_bytes`), by a backend with `cfg`'s features, ring
    /// limits, sector size and mode, which publishes its keys afresh and
    /// goes InitWait.
    ///
    /// # Errors
    ///
    /// As for [`replace_on_close`](Self::replace_on_close).
    pub fn restart_as(&self, cfg: BackendConfig) -> Result<()> {
        self.replace_on_close(cfg)?;
        let mut d = self.dev.lock();
        if d.state != XenbusState::Closed {
            d.go_closing();
        }
        Ok(())
    }

    /// As [`restart_as`](Self::restart_as), but the backend goes on until
    /// something else closes it (a fault such as `closing_after`, or the
    /// frontend).
    ///
    /// # Errors
    ///
    /// [`XenbusError::MalformedKey`] for an inconsistent `cfg`, or one of
    /// another personality (`type`: its directory would move).
    pub fn replace_on_close(&self, cfg: BackendConfig) -> Result<()> {
        cfg.validate()?;
        let mut d = self.dev.lock();
        if cfg.personality != d.cfg.personality {
            return Err(XenbusError::MalformedKey("type").into());
        }
        d.replacement = Some(cfg);
        Ok(())
    }

    /// Unmaps the grants kept by the `keep_grants_mapped` fault. Returns
    /// how many frames were released.
    pub fn release_kept_grants(&self) -> usize {
        let mut d = self.dev.lock();
        let mut n = 0;
        if let Some(c) = &mut d.conn {
            for q in &mut c.queues {
                n += q.kept.len();
                q.kept.clear();
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gnttab::GrantTable;
    use crate::hal::Hal;
    use crate::sim::xenstored::XenStored;

    const FE: DomId = DomId(1);
    const VDEV: u32 = 51712;

    /// A backend connected to a hand-made frontend (one ring page granted
    /// and mapped, one event channel bound), its store the simulated
    /// xenstored: every link from the backend back to the simulator a real
    /// test world has. Once the world is dropped, so is the simulator.
    #[test]
    fn a_simulator_with_a_connected_backend_is_freed() {
        let xen = SimXen::new();
        let alive = std::sync::Arc::downgrade(&xen.inner);
        let xsd = XenStored::new(&xen);
        xsd.with_store(|s| s.introduce_domain(FE));
        let mut cfg = BackendConfig::blkback();
        cfg.disk_bytes = 1 << 20;
        cfg.hotplug_delay_ns = 0;
        let store: Arc<dyn BackendStore> = Arc::new(xsd.clone());
        let be = SimBlkBack::new(&xen, store.clone(), FE, VDEV, cfg).unwrap();
        xen.run_until_idle();
        assert_eq!(be.state(), XenbusState::InitWait);

        let hal = xen.hal(FE);
        let gt = GrantTable::new(&hal).unwrap();
        let page = hal.alloc_pages(1).unwrap();
        let gref = gt.grant_access(DomId::DOM0, page.gfn(), false).unwrap();
        let port = hal.evtchn_alloc_unbound(DomId::DOM0).unwrap();
        let fe = be.frontend_path();
        store
            .write(&format!("{fe}/ring-ref"), &gref.0.to_string())
            .unwrap();
        store
            .write(&format!("{fe}/event-channel"), &port.0.to_string())
            .unwrap();
        store
            .write(&format!("{fe}/state"), XenbusState::Initialised.as_str())
            .unwrap();
        xen.run_until_idle();
        assert_eq!(be.state(), XenbusState::Connected, "{:?}", be.last_error());
        assert_eq!(
            xen.pages_mapped_by_others(FE),
            1,
            "the backend maps the ring"
        );

        // The world goes away, frontend first, without closing anything (a
        // crashed guest): its ring page, still mapped, is refused back and
        // left to the simulator, which frees it with everything else.
        // SAFETY: the simulator refuses the free (the backend maps the
        // page), so the memory stays valid for the mapping.
        unsafe { hal.free_pages(page) };
        assert_eq!(xen.accounting(FE).leaked_pages, 1);
        drop(gt);
        drop(hal);
        drop(store);
        drop(xsd);
        drop(xen);
        assert!(alive.upgrade().is_some(), "the backend handle holds it");
        drop(be);
        assert!(alive.upgrade().is_none(), "the simulator was not freed");
    }
}
