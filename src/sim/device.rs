//! Simulated devices (backends, xenstored) and how the simulator runs them.
//!
//! Each device sits in its own `Arc<Mutex<_>>`; the simulator's list of them
//! has a lock of its own, separate from the hypervisor state, and is only
//! held to take a snapshot. A device's [`SimDevice::step`] may therefore call
//! any [`SimXen`] method, including adding or removing devices. A device
//! whose lock is held (by a test inspecting it through its
//! [`DeviceHandle`], or by another thread stepping it) is skipped for that
//! round.
//!
//! A device that holds something which holds the simulator (a
//! [`GrantMapping`](super::GrantMapping), a `XenStored` handle) is added
//! with [`SimXen::add_weak_device`]: the simulator then holds it weakly, so
//! the two do not keep each other alive.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::xen::lock;
use super::SimXen;

/// Something the simulator drives: a block backend, xenstored, a fault
/// injector.
pub trait SimDevice: Send {
    /// Does whatever work is ready (read rings, answer requests, send events)
    /// and returns whether it made progress. Returning `false` when idle lets
    /// step mode move the clock on.
    fn step(&mut self, xen: &SimXen) -> bool;

    /// A short name for logs.
    fn name(&self) -> &str;

    /// The [`SimXen::now_ns`] time at which the device wants to run again
    /// although no event arrived (a slow disk finishing an I/O), if any.
    fn next_wakeup_ns(&self) -> Option<u64> {
        None
    }
}

impl<T: SimDevice + ?Sized> SimDevice for Box<T> {
    fn step(&mut self, xen: &SimXen) -> bool {
        (**self).step(xen)
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn next_wakeup_ns(&self) -> Option<u64> {
        (**self).next_wakeup_ns()
    }
}

/// Identifies a device added to a [`SimXen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u64);

/// A test's handle to a device the simulator runs: lock it to inspect or
/// reconfigure the device between steps.
pub struct DeviceHandle<D: ?Sized> {
    id: DeviceId,
    dev: Arc<Mutex<D>>,
}

impl<D: ?Sized> Clone for DeviceHandle<D> {
    fn clone(&self) -> Self {
        DeviceHandle {
            id: self.id,
            dev: Arc::clone(&self.dev),
        }
    }
}

impl<D: ?Sized> fmt::Debug for DeviceHandle<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl<D: ?Sized> DeviceHandle<D> {
    /// The id to pass to [`SimXen::remove_device`].
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// Locks the device. The simulator skips it while the guard lives, so do
    /// not wait for guest progress that needs this device while holding it.
    pub fn lock(&self) -> MutexGuard<'_, D> {
        lock(&self.dev)
    }

    /// The shared device itself.
    pub fn shared(&self) -> Arc<Mutex<D>> {
        Arc::clone(&self.dev)
    }
}

type Shared = Arc<Mutex<dyn SimDevice>>;

/// What the simulator steps for a device added with
/// [`SimXen::add_weak_device`]: a weak link to it, and its name, kept for
/// [`SimXen::devices`].
struct WeakDevice<D> {
    id: DeviceId,
    name: String,
    dev: Weak<Mutex<D>>,
}

impl<D: SimDevice> SimDevice for WeakDevice<D> {
    fn step(&mut self, xen: &SimXen) -> bool {
        let Some(dev) = self.dev.upgrade() else {
            // Every handle is gone, and the device with them: leave quietly.
            xen.remove_device(self.id);
            return false;
        };
        // Held by a test (or poisoned): skipped this round, like any device.
        let Ok(mut d) = dev.try_lock() else {
            return false;
        };
        d.step(xen)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn next_wakeup_ns(&self) -> Option<u64> {
        let dev = self.dev.upgrade()?;
        dev.try_lock().ok().and_then(|d| d.next_wakeup_ns())
    }
}

/// The simulator's list of devices, in the order they were added (the order
/// they are stepped in).
#[derive(Default)]
pub(super) struct DeviceTable {
    next_id: u64,
    list: Vec<(DeviceId, Shared)>,
}

impl SimXen {
    /// Adds a device; it is stepped from now on (in the order devices were
    /// added). A `Box<dyn SimDevice>` works too.
    pub fn add_device<D: SimDevice + 'static>(&self, device: D) -> DeviceHandle<D> {
        let dev = Arc::new(Mutex::new(device));
        let shared: Shared = dev.clone();
        let id = self.push_device(|_| shared);
        DeviceHandle { id, dev }
    }

    /// Gives the next device id to `stepper`, appends what it returns to
    /// the list of devices stepped, and wakes the device thread.
    fn push_device(&self, stepper: impl FnOnce(DeviceId) -> Shared) -> DeviceId {
        let id = {
            let mut t = lock(&self.inner.devices);
            t.next_id += 1;
            let id = DeviceId(t.next_id);
            t.list.push((id, stepper(id)));
            id
        };
        self.wake();
        id
    }

    /// Adds a device that the simulator holds only weakly: it is stepped
    /// (like one from [`add_device`](Self::add_device)) while the returned
    /// handle or a clone of it lives, and leaves the simulator once the last
    /// one is dropped.
    ///
    /// For devices that hold what holds this `SimXen` (grant mappings, a
    /// xenstored handle): added with `add_device` they and the simulator
    /// would keep each other alive, and neither would ever be freed.
    #[must_use = "the device is dropped with its last handle"]
    pub fn add_weak_device<D: SimDevice + 'static>(&self, device: D) -> DeviceHandle<D> {
        let name = device.name().to_string();
        let dev = Arc::new(Mutex::new(device));
        let weak = Arc::downgrade(&dev);
        let id = self.push_device(|id| {
            Arc::new(Mutex::new(WeakDevice {
                id,
                name,
                dev: weak,
            }))
        });
        DeviceHandle { id, dev }
    }

    /// Removes a device (a backend domain dying). Returns whether it existed.
    /// The device value itself lives on while handles to it exist.
    pub fn remove_device(&self, id: DeviceId) -> bool {
        let mut t = lock(&self.inner.devices);
        let before = t.list.len();
        t.list.retain(|(i, _)| *i != id);
        before != t.list.len()
    }

    /// The ids and names of the devices, in stepping order (busy devices are
    /// named `"<busy>"`).
    pub fn devices(&self) -> Vec<(DeviceId, String)> {
        self.snapshot()
            .into_iter()
            .map(|(id, d)| {
                let name = d
                    .try_lock()
                    .map_or_else(|_| "<busy>".into(), |d| d.name().into());
                (id, name)
            })
            .collect()
    }

    fn snapshot(&self) -> Vec<(DeviceId, Shared)> {
        lock(&self.inner.devices).list.clone()
    }

    /// Steps every device once. Returns whether any made progress.
    pub fn step(&self) -> bool {
        let mut progress = false;
        for (_, dev) in self.snapshot() {
            if let Ok(mut d) = dev.try_lock() {
                progress |= d.step(self);
            }
        }
        progress
    }

    /// Steps the devices until none makes progress (at most
    /// [`SimConfig::max_steps_per_wait`](super::SimConfig::max_steps_per_wait)
    /// rounds) and returns the number of rounds that made progress.
    pub fn run_until_idle(&self) -> u64 {
        let mut rounds = 0;
        while rounds < self.inner.config.max_steps_per_wait && self.step() {
            rounds += 1;
        }
        rounds
    }

    /// The earliest [`SimDevice::next_wakeup_ns`] of the devices not busy.
    pub fn next_wakeup_ns(&self) -> Option<u64> {
        self.snapshot()
            .iter()
            .filter_map(|(_, d)| d.try_lock().ok().and_then(|d| d.next_wakeup_ns()))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that holds the simulator it runs in, as a backend holding
    /// grant mappings does.
    struct Holder {
        _xen: SimXen,
        steps: u32,
        due: Option<u64>,
    }

    impl SimDevice for Holder {
        fn step(&mut self, _: &SimXen) -> bool {
            self.steps += 1;
            false
        }
        fn name(&self) -> &str {
            "holder"
        }
        fn next_wakeup_ns(&self) -> Option<u64> {
            self.due
        }
    }

    #[test]
    fn a_weak_device_runs_while_its_handle_lives_and_frees_the_simulator() {
        let xen = SimXen::new();
        let alive = Arc::downgrade(&xen.inner);
        let h = xen.add_weak_device(Holder {
            _xen: xen.clone(),
            steps: 0,
            due: Some(42),
        });
        assert!(!xen.step());
        assert_eq!(h.lock().steps, 1);
        assert_eq!(xen.devices(), vec![(h.id(), "holder".to_string())]);
        assert_eq!(xen.next_wakeup_ns(), Some(42));
        {
            let _busy = h.lock();
            assert!(!xen.step());
            assert_eq!(xen.next_wakeup_ns(), None, "busy devices are skipped");
        }
        assert_eq!(h.lock().steps, 1);

        let clone = h.clone();
        drop(h);
        assert!(!xen.step());
        assert_eq!(clone.lock().steps, 2, "a clone keeps it running");
        drop(clone);
        assert!(!xen.step());
        assert!(xen.devices().is_empty(), "it left the simulator");
        assert_eq!(xen.next_wakeup_ns(), None);
        drop(xen);
        assert!(alive.upgrade().is_none(), "the simulator was not freed");
    }

    #[test]
    fn a_strong_device_that_holds_the_simulator_is_a_cycle() {
        // What `add_weak_device` is for. The cycle is broken by hand at the
        // end so that the test itself leaks nothing.
        let xen = SimXen::new();
        let alive = Arc::downgrade(&xen.inner);
        let h = xen.add_device(Holder {
            _xen: xen.clone(),
            steps: 0,
            due: None,
        });
        let id = h.id();
        drop(h);
        drop(xen);
        let xen = alive
            .upgrade()
            .map(|inner| SimXen { inner })
            .expect("kept alive by its own device");
        assert!(xen.remove_device(id));
        drop(xen);
        assert!(alive.upgrade().is_none());
    }
}

/// Threaded-mode tests (real threads and time; kept out of the Miri run).
#[cfg(test)]
mod threaded_tests {
    use super::*;
    use crate::hal::{DomId, Hal, Port};

    const FRONT: DomId = DomId(1);
    const BACK: DomId = DomId::DOM0;

    struct Echo {
        port: Port,
        answered: u32,
    }

    impl SimDevice for Echo {
        fn step(&mut self, xen: &SimXen) -> bool {
            if xen.consume(BACK, self.port) {
                self.answered += 1;
                return xen.send(BACK, self.port).is_ok();
            }
            false
        }
        fn name(&self) -> &str {
            "echo"
        }
    }

    #[test]
    fn the_device_thread_answers_a_waiting_guest() {
        let xen = SimXen::new_threaded();
        assert!(xen.is_threaded());
        let hal = xen.hal(FRONT);
        let front = hal.evtchn_alloc_unbound(BACK).unwrap();
        let back = xen.bind_interdomain(BACK, FRONT, front).unwrap();
        // Drop the pending flag the bind sets, so that each notification gets
        // exactly one answer and none is still in flight when we stop.
        assert!(xen.consume(BACK, back));
        let echo = xen.add_device(Echo {
            port: back,
            answered: 0,
        });
        for round in 1..=20 {
            hal.evtchn_notify(front).unwrap();
            let deadline = hal.now_ns() + 10_000_000_000;
            hal.evtchn_wait(&[front], Some(deadline)).unwrap();
            assert!(hal.evtchn_consume(front));
            assert_eq!(echo.lock().answered, round);
        }
        xen.stop_threads();
        let answered = echo.lock().answered;
        hal.evtchn_notify(front).unwrap();
        let deadline = hal.now_ns() + 20_000_000;
        assert_eq!(
            hal.evtchn_wait(&[front], Some(deadline)),
            Err(crate::hal::HalError::Timeout)
        );
        assert_eq!(
            echo.lock().answered,
            answered,
            "stopped thread runs nothing"
        );
    }

    #[test]
    fn threaded_waits_without_progress_give_up() {
        let config = crate::sim::SimConfig {
            unbounded_wait_ns: 20_000_000,
            ..Default::default()
        };
        let xen = SimXen::with_config(config, true);
        assert_eq!(
            xen.wait_until(None, || false),
            Err(crate::hal::HalError::Timeout)
        );
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f2 = flag.clone();
        let x2 = xen.clone();
        let t = std::thread::spawn(move || {
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
            x2.advance_clock(0); // no-op in threaded mode
            x2.wake();
        });
        let deadline = xen.now_ns() + 10_000_000_000;
        let ok = xen.wait_until(Some(deadline), || {
            flag.load(std::sync::atomic::Ordering::SeqCst)
        });
        assert_eq!(ok, Ok(()));
        t.join().unwrap();
    }
}
