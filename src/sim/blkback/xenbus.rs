//! The backend's side of the xenbus handshake (`io/blkif.h`, "STATE
//! DIAGRAMS"), after Linux `xen-blkback/xenbus.c` (`xen_blkbk_probe`,
//! `backend_changed`, `frontend_changed`, `connect_ring`,
//! `read_per_ring_refs`, `connect`) and QEMU `xen-block.c`
//! (`xen_block_realize`, `xen_block_connect`, `xen_block_frontend_changed`).
//!
//! The backend polls the frontend's `state` key on every step and reacts to
//! each change, which is what a watch on it delivers (a watch reports the
//! value at the time it is read, so both may miss an intermediate state).

use core::ptr::NonNull;
use std::format;
use std::string::String;
use std::vec::Vec;

use super::config::{connected_keys, initwait_keys, toolstack_backend_keys, Personality};
use super::io::Queue;
use super::{Conn, SimBlkBack};
use crate::hal::{DomId, GrantRef, Port, PAGE_SIZE};
use crate::ring::BackRing;
use crate::sim::errno::EINVAL;
use crate::sim::SimXen;
use crate::xenbus::XenbusState;

/// `ENOSYS`, as Linux's `connect_ring` returns for a bad protocol or queue
/// count.
const ENOSYS: i32 = 38;
/// `EIO`.
const EIO: i32 = 5;

/// Why connecting failed: errno and message, as for `xenbus_dev_fatal`.
type Fatal = (i32, String);

/// Parses a decimal `u32` the way the strict parts of the backends do.
fn parse_u32(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

impl SimBlkBack {
    /// Reads a frontend key relative to `dir`.
    fn fe_read(&self, dir: &str, key: &str) -> Option<String> {
        self.store.read(&format!("{dir}/{key}"))
    }

    /// `xenbus_read_unsigned`: the default when absent or unparsable.
    fn fe_unsigned(&self, key: &str, default: u32) -> u32 {
        self.fe_read(&self.fe_path, key)
            .and_then(|v| parse_u32(&v))
            .unwrap_or(default)
    }

    /// A required `%u` key.
    fn fe_required(&self, dir: &str, key: &str) -> Result<u32, Fatal> {
        self.fe_read(dir, key)
            .and_then(|v| parse_u32(&v))
            .ok_or_else(|| (EINVAL, format!("reading {dir}/{key}")))
    }

    /// Writes a key of the backend directory (failures are logged: the
    /// simulated store only fails on bad paths).
    pub(super) fn write_be(&self, key: &str, value: &str) {
        if let Err(e) = self.store.write(&format!("{}/{key}", self.be_path), value) {
            log::warn!("sim blkback {}: writing {key}: {e}", self.name);
        }
    }

    /// `xenbus_switch_state`.
    pub(super) fn set_state(&mut self, s: XenbusState) {
        self.state = s;
        self.write_be("state", s.as_str());
    }

    /// Goes Closing on its own (a fault, a restart). QEMU reruns its
    /// connect only when the frontend's state watch fires: its own write
    /// of `state` is no reason to.
    pub(super) fn go_closing(&mut self) {
        self.set_state(XenbusState::Closing);
        self.qdisk_tried_at = self.store.mutations();
    }

    /// `xenbus_dev_fatal`: writes `error/<nodename>/error` under dom0's home
    /// (`/local/domain/0/error/backend/...`) as "`<errno> <message>`" and
    /// goes Closing.
    fn fatal(&mut self, (errno, msg): Fatal) {
        log::warn!("sim blkback {}: fatal: {msg}", self.name);
        let rel = self.be_path.trim_start_matches("/local/domain/0/");
        let path = format!("/local/domain/0/error/{rel}/error");
        let _ = self.store.write(&path, &format!("{errno} {msg}"));
        self.last_error = Some(msg);
        self.set_state(XenbusState::Closing);
    }

    /// One round of the handshake. Returns whether anything happened.
    pub(super) fn xenbus_step(&mut self, xen: &SimXen) -> bool {
        if self.removed {
            return false;
        }
        let mut progress = false;
        if !self.probed {
            if self.cfg.stalls() {
                // QEMU refused to open the image: no keys, state stays 1.
                return false;
            }
            self.probe(xen);
            progress = true;
        }
        if !self.hotplug_done && self.hotplug_at.is_some_and(|t| xen.now_ns() >= t) {
            // The hotplug script attached the device (backend_changed).
            self.hotplug_done = true;
            self.hotplug_at = None;
            self.write_be("physical-device", &self.cfg.physical_device.clone());
            self.update_status();
            progress = true;
        }
        // Read again only when the store changed since the last read.
        let m = self.store.mutations();
        let fe_state = match self.fe_state_read {
            Some((at, s)) if m.is_some() && m == Some(at) => s,
            _ => {
                let s = self
                    .store
                    .read(&format!("{}/state", self.fe_path))
                    .and_then(|v| parse_u32(&v))
                    .and_then(XenbusState::from_u32)
                    .unwrap_or(XenbusState::Unknown);
                self.fe_state_read = m.map(|at| (at, s));
                s
            }
        };
        if self.last_fe_state != Some(fe_state) {
            self.last_fe_state = Some(fe_state);
            self.qdisk_tried_at = m;
            match self.cfg.personality {
                Personality::Blkback => self.blkback_frontend_changed(xen, fe_state),
                Personality::Qdisk => self.qdisk_frontend_changed(xen, fe_state),
            }
            progress = true;
        } else if self.cfg.personality == Personality::Qdisk
            && matches!(fe_state, XenbusState::Initialised | XenbusState::Connected)
            && self.state != XenbusState::Connected
            && m.is_some()
            && m != self.qdisk_tried_at
        {
            // QEMU runs its connect again on every write the frontend's
            // state watch reports, the same value included (a frontend
            // retrying after a refusal); modelled as: after any change in
            // xenstore since the last attempt.
            self.qdisk_tried_at = m;
            self.qdisk_frontend_changed(xen, fe_state);
            progress = true;
        }
        progress
    }

    /// `xen_blkbk_probe` / `xen_block_realize`: publish what is known before
    /// the frontend runs and go InitWait.
    fn probe(&mut self, xen: &SimXen) {
        self.probed = true;
        for (k, v) in initwait_keys(&self.cfg, self.disk.len()) {
            self.write_be(&k, &v);
        }
        self.set_state(XenbusState::InitWait);
        match self.cfg.personality {
            Personality::Blkback => {
                self.hotplug_at = Some(xen.now_ns().saturating_add(self.cfg.hotplug_delay_ns));
            }
            Personality::Qdisk => self.hotplug_done = true,
        }
    }

    fn blkback_frontend_changed(&mut self, xen: &SimXen, fe: XenbusState) {
        match fe {
            XenbusState::Initialising => {
                if self.state == XenbusState::Closed {
                    // "prepare for reconnect"
                    self.set_state(XenbusState::InitWait);
                }
            }
            XenbusState::Initialised | XenbusState::Connected => {
                if self.state == XenbusState::Connected {
                    return;
                }
                self.disconnect(xen);
                match self.connect_ring(xen) {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        self.update_status();
                    }
                    Err(f) => self.fatal(f),
                }
            }
            XenbusState::Closing => self.set_state(XenbusState::Closing),
            XenbusState::Closed => {
                self.disconnect(xen);
                self.set_state(XenbusState::Closed);
                if !self.online {
                    self.removed = true;
                } else if self.replacement.is_some() {
                    self.replace();
                }
            }
            XenbusState::Unknown => {
                self.disconnect(xen);
                self.removed = true;
            }
            other => self.fatal((EINVAL, format!("saw state {} at frontend", other as u8))),
        }
    }

    fn qdisk_frontend_changed(&mut self, xen: &SimXen, fe: XenbusState) {
        match fe {
            XenbusState::Initialising if self.state == XenbusState::Closed && self.online => {
                self.set_state(XenbusState::InitWait);
            }
            XenbusState::Initialised | XenbusState::Connected => {
                if self.state == XenbusState::Connected {
                    return;
                }
                self.disconnect(xen);
                match self.connect_ring(xen) {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        self.stats.connects += 1;
                        self.set_state(XenbusState::Connected);
                    }
                    // QEMU reports "frontend change error" in its log and
                    // stays where it was.
                    Err((_, msg)) => {
                        log::warn!("sim qdisk {}: frontend change error: {msg}", self.name);
                        self.last_error = Some(msg);
                    }
                }
            }
            XenbusState::Closing => self.set_state(XenbusState::Closing),
            XenbusState::Closed | XenbusState::Unknown => {
                self.disconnect(xen);
                self.set_state(XenbusState::Closed);
                if !self.online {
                    self.removed = true;
                } else if fe == XenbusState::Closed && self.replacement.is_some() {
                    self.replace();
                }
            }
            _ => {}
        }
    }

    /// The backend restarted ([`restart_as`](super::SimBlkBackHandle::restart_as)):
    /// the old one's keys go, the new one's toolstack keys (mode, type,
    /// direct-io-safe, ...) and InitWait keys are written, and it waits in
    /// InitWait on the same disk.
    fn replace(&mut self) {
        let Some(cfg) = self.replacement.take() else {
            return;
        };
        let len = self.disk.len();
        let old: Vec<String> = initwait_keys(&self.cfg, len)
            .into_iter()
            .chain(connected_keys(&self.cfg, len))
            .map(|(k, _)| k)
            .chain(["direct-io-safe".into()])
            .collect();
        for k in old {
            let _ = self.store.rm(&format!("{}/{k}", self.be_path));
        }
        if cfg.disk_bytes != len {
            if let Err(e) = self.disk.resize(cfg.disk_bytes) {
                log::warn!("sim blkback {}: resizing at restart: {e}", self.name);
            }
        }
        self.cfg = cfg;
        let vdev = self
            .be_path
            .rsplit('/')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for (k, v) in toolstack_backend_keys(&self.cfg, &self.fe_path, self.fe, vdev) {
            if !matches!(k.as_str(), "state" | "online" | "frontend" | "frontend-id") {
                self.write_be(&k, &v);
            }
        }
        for (k, v) in initwait_keys(&self.cfg, self.disk.len()) {
            self.write_be(&k, &v);
        }
        self.stats.restarts += 1;
        self.set_state(XenbusState::InitWait);
    }

    /// `xen_update_blkif_status` + `connect`: once the rings are mapped and
    /// the device is attached, publish geometry and features, go Connected.
    fn update_status(&mut self) {
        if self.conn.is_none() || !self.hotplug_done || self.state == XenbusState::Connected {
            return;
        }
        for (k, v) in connected_keys(&self.cfg, self.disk.len()) {
            self.write_be(&k, &v);
        }
        self.stats.connects += 1;
        self.set_state(XenbusState::Connected);
    }

    /// `xen_blkif_disconnect`: unmaps rings and every grant, closes ports,
    /// forgets unanswered responses.
    pub(super) fn disconnect(&mut self, xen: &SimXen) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        for q in conn.queues {
            let port = q.port;
            // Fields drop in order: the ring, then its pages, then every
            // data grant.
            drop(q);
            let _ = xen.close_port(DomId::DOM0, port);
        }
    }

    /// `connect_ring` / `xen_block_connect`: reads the frontend's transport
    /// keys, maps the rings and binds the event channels.
    fn connect_ring(&mut self, xen: &SimXen) -> Result<Conn, Fatal> {
        match self.cfg.personality {
            Personality::Blkback => self.blkback_connect_ring(xen),
            Personality::Qdisk => self.qdisk_connect_ring(xen),
        }
    }

    fn blkback_connect_ring(&mut self, xen: &SimXen) -> Result<Conn, Fatal> {
        match self.fe_read(&self.fe_path, "protocol").as_deref() {
            None | Some("x86_64-abi") => {}
            Some("x86_32-abi") => {
                return Err((ENOSYS, "x86_32-abi rings are not simulated".into()));
            }
            Some(p) => return Err((ENOSYS, format!("unknown fe protocol {p}"))),
        }
        let persistent = self.cfg.persistent && self.fe_unsigned("feature-persistent", 0) != 0;
        let max_queues = self.cfg.max_queues.unwrap_or(1);
        let queues = self.fe_unsigned("multi-queue-num-queues", 1);
        if queues == 0 || queues > max_queues {
            return Err((
                ENOSYS,
                format!("guest requested {queues} queues, exceeding the maximum of {max_queues}."),
            ));
        }
        let max_order = self.cfg.max_ring_page_order.unwrap_or(0);
        let order = match self.fe_read(&self.fe_path, "ring-page-order") {
            Some(v) => parse_u32(&v).unwrap_or(0),
            // The older RedHat/Amazon scheme (blkif.h notes 2, 3).
            None => match self.fe_read(&self.fe_path, "num-ring-pages") {
                Some(v) => match parse_u32(&v) {
                    Some(n) if n.is_power_of_two() => n.trailing_zeros(),
                    _ => return Err((EINVAL, format!("invalid num-ring-pages {v}"))),
                },
                None => 0,
            },
        };
        if order > max_order {
            return Err((
                EINVAL,
                format!("requested ring page order {order} exceed max:{max_order}"),
            ));
        }
        let mut qs = Vec::new();
        for i in 0..queues {
            let dir = if queues == 1 {
                self.fe_path.clone()
            } else {
                format!("{}/queue-{i}", self.fe_path)
            };
            qs.push(self.read_per_ring_refs(xen, &dir, order, true)?);
        }
        Ok(Conn {
            queues: qs,
            order,
            persistent,
        })
    }

    fn qdisk_connect_ring(&mut self, xen: &SimXen) -> Result<Conn, Fatal> {
        let flag = self.fe_unsigned("feature-large-sector-size", 0) == 1;
        if self.cfg.sector_size != 512 && self.cfg.qdisk_2024_rule && flag {
            return Err((
                EINVAL,
                "\"feature-large-sector-size\" not supported by backend".into(),
            ));
        }
        if self.cfg.sector_size != 512 && !self.cfg.qdisk_2024_rule && !flag {
            return Err((
                EINVAL,
                "logical_block_size != 512 not supported by frontend".into(),
            ));
        }
        let max_order = self.cfg.max_ring_page_order.unwrap_or(0);
        let order = match self
            .fe_read(&self.fe_path, "ring-page-order")
            .and_then(|v| parse_u32(&v))
        {
            None => None,
            Some(o) if o <= max_order => Some(o),
            Some(o) => return Err((EINVAL, format!("invalid ring-page-order ({o})"))),
        };
        let dir = self.fe_path.clone();
        let q = match order {
            None => self.read_per_ring_refs(xen, &dir, 0, false)?,
            Some(o) => self.read_per_ring_refs(xen, &dir, o, true)?,
        };
        Ok(Conn {
            queues: vec![q],
            order: order.unwrap_or(0),
            persistent: false,
        })
    }

    /// Reads `event-channel` and the ring references under `dir`, maps the
    /// ring and binds the channel. `numbered`: look for `ring-ref%u` (falling
    /// back to `ring-ref` for a one-page ring, as Linux does).
    fn read_per_ring_refs(
        &mut self,
        xen: &SimXen,
        dir: &str,
        order: u32,
        numbered: bool,
    ) -> Result<Queue, Fatal> {
        let evtchn = self.fe_required(dir, "event-channel")?;
        let pages = 1usize << order;
        let mut refs = Vec::with_capacity(pages);
        for i in 0..pages {
            let key = format!("ring-ref{i}");
            let r = if numbered {
                match self.fe_read(dir, &key).and_then(|v| parse_u32(&v)) {
                    Some(r) => Some(r),
                    None if pages == 1 => None,
                    None => return Err((EINVAL, format!("reading {dir}/{key}"))),
                }
            } else {
                None
            };
            refs.push(match r {
                Some(r) => r,
                None => self.fe_required(dir, "ring-ref")?,
            });
        }
        let mut maps = Vec::with_capacity(pages);
        for &r in &refs {
            let m = xen
                .map_grant(DomId::DOM0, self.fe, GrantRef(r), false)
                .map_err(|e| (EINVAL, format!("mapping ring-ref {r} port {evtchn}: {e}")))?;
            maps.push(m);
        }
        // The simulator cannot build a virtually contiguous mapping of
        // scattered frames (xenbus_map_ring_valloc); it needs the frontend's
        // ring pages to be one allocation, granted in order.
        let base = maps[0].as_ptr();
        for (i, m) in maps.iter().enumerate() {
            if m.as_ptr() != base.wrapping_add(i * PAGE_SIZE) {
                return Err((
                    EINVAL,
                    format!("{dir}: ring pages are not one contiguous run (simulator limit)"),
                ));
            }
        }
        let Some(base) = NonNull::new(base) else {
            return Err((EINVAL, "null ring mapping".into()));
        };
        // SAFETY: `maps` pins `1 << order` contiguous frames of the
        // frontend's one allocation (checked above), page-aligned and valid
        // while the mappings live; the `Queue` keeps them and drops the ring
        // first. Only this ring and the frontend (the peer) use the memory.
        // `RequestSlot` and `BlkifResponse` are plain integers.
        let ring = unsafe { BackRing::attach(base, order) }
            .map_err(|e| (EIO, format!("attaching ring: {e}")))?;
        let port = xen
            .bind_interdomain(DomId::DOM0, self.fe, Port(evtchn))
            .map_err(|e| (EINVAL, format!("binding port {evtchn}: {e}")))?;
        Ok(Queue {
            ring,
            ring_pages: maps,
            port,
            more_work: false,
            halted: false,
            persistent: Default::default(),
            pending: Vec::new(),
            kept: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_u32;

    #[test]
    fn only_plain_decimals_parse() {
        assert_eq!(parse_u32("12"), Some(12));
        assert_eq!(parse_u32(" 7\n"), Some(7));
        for bad in ["", "-1", "+1", "0x10", "12abc", "4294967296"] {
            assert_eq!(parse_u32(bad), None, "{bad:?}");
        }
    }
}
