//! The hostile-backend harness: a connected `BlockFront` against the
//! simulated blkback in puppet mode (`Faults::hold_responses`), driven by a
//! byte string. Every byte decides the next step: submit a read, write,
//! flush or discard; release a held response with a forged id, operation or
//! status; write raw responses and `rsp_prod` into the shared ring; send
//! notifications; change the backend's state and keys in xenstore; poll,
//! check the backend, reconnect, close.
//!
//! Invariants, checked as it goes (a violation panics, which is the
//! finding):
//! - no completion for a token that is not in flight (nor twice);
//! - a read's buffer holds the disk's data after success, and is untouched
//!   (its sentinel) after an error; a rejected submission gets its buffer
//!   back intact;
//! - no page is reused while the backend maps it (the backend counts
//!   `reused_while_mapped`) and no page is freed while granted or mapped
//!   (the simulator counts `bad_frees`);
//! - a broken or closed device has nothing in flight; after `close()` every
//!   submitted request has completed, no event channel stays open, and
//!   every grant still active is one the backend still maps.
//!
//! Shared by the fuzz target `hostile_backend` and the main crate's
//! `tests/fuzz_replay.rs`, which replays the seed corpus and past findings.

use std::collections::{BTreeMap, BTreeSet};

use xenblk::abi::blkif::{
    BlkifResponse, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use xenblk::blkfront::{Completion, Config, DeviceState, IoError};
use xenblk::hal::DomId;
use xenblk::sim::blkback::{BackendConfig, BadId, Offer, SimBlkBackHandle};
use xenblk::sim::{SimDisk, Testbed};
/// 1 MiB: 2048 stamped 512-byte units.
const DISK_BYTES: u64 = 1 << 20;

/// Reads the fuzz input; past its end every value is 0.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }
    /// Whether input remains.
    pub fn more(&self) -> bool {
        self.pos < self.data.len()
    }
    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// Up to `max` raw bytes.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u8()).min(max);
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        &self.data[start..end]
    }
}

/// The content the disk starts with (and every write writes) in the
/// 512-byte unit `unit`: unique per unit, so misplaced data shows.
pub fn stamp(unit: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..8].copy_from_slice(&(unit | 0xa5a5 << 48).to_le_bytes());
    for (i, x) in b.iter_mut().enumerate().skip(8) {
        *x = (unit.wrapping_mul(131) as usize ^ i.wrapping_mul(7)) as u8;
    }
    b
}

fn stamps(first_unit: u64, len: usize) -> Vec<u8> {
    (0..len / 512)
        .flat_map(|k| stamp(first_unit + k as u64))
        .collect()
}

#[derive(Debug)]
enum Kind {
    Read { unit: u64, len: usize, sentinel: u8 },
    Write { data: Vec<u8> },
    Control,
}

struct Rig<'a> {
    tb: &'a Testbed,
    be: &'a SimBlkBackHandle,
    disk: SimDisk<'a>,
    /// Tokens submitted and not yet completed.
    live: BTreeMap<u64, Kind>,
    /// 512-byte units a discard may have zeroed.
    zeroed: BTreeSet<u64>,
    /// Whether every response so far named a request the backend had taken
    /// (then successful reads must carry the disk's data exactly).
    strict: bool,
    ss: u64,
}

impl Rig<'_> {
    fn check_completion(&mut self, c: Completion) {
        let t = c.token.as_u64();
        let kind = self
            .live
            .remove(&t)
            .unwrap_or_else(|| panic!("completion for token {t} that is not in flight"));
        match kind {
            Kind::Read {
                unit,
                len,
                sentinel,
            } => {
                let buf = c.buf.expect("a read completes with its buffer");
                assert_eq!(buf.len(), len, "read buffer changed length");
                match c.result {
                    Ok(()) => {
                        if self.strict {
                            for (k, chunk) in buf.chunks(512).enumerate() {
                                let u = unit + k as u64;
                                let zero =
                                    self.zeroed.contains(&u) && chunk.iter().all(|&b| b == 0);
                                assert!(
                                    zero || chunk == stamp(u),
                                    "token {t}: unit {u} of a successful read holds other data"
                                );
                            }
                        }
                    }
                    Err(e) => assert!(
                        buf.iter().all(|&b| b == sentinel),
                        "token {t}: failed read ({e}) wrote into the caller's buffer"
                    ),
                }
            }
            Kind::Write { data } => {
                assert_eq!(
                    c.buf.as_deref(),
                    Some(&data[..]),
                    "write buffer not returned intact"
                );
            }
            Kind::Control => assert!(c.buf.is_none()),
        }
    }

    fn drain(&mut self) {
        while let Some(c) = self.disk.poll() {
            self.check_completion(c);
        }
    }

    /// Publish what was submitted and let the backend take it.
    fn settle(&mut self) {
        self.disk.kick();
        let _ = self.tb.xen().run_until_idle();
        if self.be.untaken_requests() > 0 {
            self.strict = false;
        }
    }

    /// A response may now complete a request whose I/O the backend never
    /// did (a made-up id, a stale slot behind a moved `rsp_prod`): from here
    /// on a successful read's data is the backend's word, not checked.
    fn forged_ids(&mut self) {
        self.strict = false;
    }

    fn check_always(&self) {
        let a = self.tb.accounting();
        assert_eq!(
            a.bad_frees, 0,
            "a page was freed while granted or mapped: {a:?}"
        );
        assert_eq!(
            self.be.stats().reused_while_mapped,
            0,
            "a page the backend still maps was reused"
        );
        if matches!(
            self.disk.state(),
            DeviceState::Broken(_) | DeviceState::Closed
        ) {
            assert_eq!(
                self.disk.in_flight(),
                0,
                "a dead device has requests in flight"
            );
        }
    }

    fn range(&self, inp: &mut Input<'_>) -> (u64, usize) {
        let sectors = self.disk.sectors().max(1);
        // Mostly inside the disk, sometimes just past its end.
        let sector = u64::from(inp.u16()) % (sectors + 2);
        let n = match inp.u8() {
            0 => 0,
            b => usize::from(b % 48) + 1,
        };
        (sector, n * self.ss as usize)
    }

    fn submit_read(&mut self, inp: &mut Input<'_>) {
        let (sector, len) = self.range(inp);
        let sentinel = inp.u8();
        let buf = vec![sentinel; len];
        match self.disk.submit_read(sector, buf) {
            Ok(t) => {
                let unit = sector * (self.ss / 512);
                self.live.insert(
                    t.as_u64(),
                    Kind::Read {
                        unit,
                        len,
                        sentinel,
                    },
                );
                self.settle();
            }
            Err(r) => assert!(
                r.buf.len() == len && r.buf.iter().all(|&b| b == sentinel),
                "rejected read ({}) did not give the buffer back intact",
                r.error
            ),
        }
    }

    fn submit_write(&mut self, inp: &mut Input<'_>) {
        let (sector, len) = self.range(inp);
        let unit = sector * (self.ss / 512);
        let data = stamps(unit, len);
        match self.disk.submit_write(sector, data.clone()) {
            Ok(t) => {
                self.live.insert(t.as_u64(), Kind::Write { data });
                self.settle();
            }
            Err(r) => assert_eq!(r.buf, data, "rejected write buffer changed"),
        }
    }

    fn submit_discard(&mut self, inp: &mut Input<'_>) {
        let sector = u64::from(inp.u16()) % (self.disk.sectors() + 2);
        let count = u64::from(inp.u8());
        let secure = inp.u8() & 1 == 1;
        if let Ok(t) = self.disk.submit_discard(sector, count, secure) {
            let per = self.ss / 512;
            for u in sector * per..(sector + count) * per {
                self.zeroed.insert(u);
            }
            self.live.insert(t.as_u64(), Kind::Control);
            self.settle();
        }
    }

    /// A response as a hostile backend might write it.
    fn forged(inp: &mut Input<'_>, base: BlkifResponse) -> BlkifResponse {
        let mut r = base;
        let how = inp.u8();
        if how & 1 != 0 {
            r.id = match inp.u8() {
                0xff => inp.u64(),
                b => u64::from(b % 80),
            };
        }
        if how & 2 != 0 {
            const OPS: [u8; 7] = [
                BLKIF_OP_READ,
                BLKIF_OP_WRITE,
                BLKIF_OP_WRITE_BARRIER,
                BLKIF_OP_FLUSH_DISKCACHE,
                BLKIF_OP_DISCARD,
                BLKIF_OP_INDIRECT,
                0xee,
            ];
            r.operation = OPS[usize::from(inp.u8()) % OPS.len()];
        }
        if how & 4 != 0 {
            r.status = match inp.u8() % 5 {
                0 => BLKIF_RSP_OKAY,
                1 => BLKIF_RSP_ERROR,
                2 => BLKIF_RSP_EOPNOTSUPP,
                _ => inp.u16() as i16,
            };
        }
        r
    }

    fn release(&mut self, inp: &mut Input<'_>) {
        let held = self.be.held_responses();
        if held.is_empty() {
            return;
        }
        let n = usize::from(inp.u8()) % held.len();
        let rsp = Self::forged(inp, held[n].1);
        if rsp.id != held[n].1.id {
            self.forged_ids();
        }
        self.be.release_held(self.tb.xen(), n, |r| *r = rsp);
    }

    fn poke(&mut self, inp: &mut Input<'_>) {
        let q = usize::from(inp.u8() % 2);
        let Some(pvt) = self.be.rsp_prod_pvt(q) else {
            return;
        };
        let idx = pvt.wrapping_add(u32::from(inp.u8() % 8));
        let rsp = Self::forged(
            inp,
            BlkifResponse {
                id: 0,
                operation: BLKIF_OP_READ,
                status: BLKIF_RSP_OKAY,
            },
        );
        self.forged_ids();
        self.be.poke_response(q, idx, rsp);
    }

    fn poke_prod(&mut self, inp: &mut Input<'_>) {
        let q = usize::from(inp.u8() % 2);
        let Some(pvt) = self.be.rsp_prod_pvt(q) else {
            return;
        };
        let v = match inp.u8() {
            0xff => inp.u32(),
            b => pvt.wrapping_add(u32::from(b % 16)).wrapping_sub(4),
        };
        self.forged_ids();
        self.be.poke_rsp_prod(q, v);
        if inp.u8() & 1 == 1 {
            self.be.notify_frontend(self.tb.xen(), q);
        }
    }

    fn faults(&mut self, inp: &mut Input<'_>) {
        let v = inp.u8();
        self.be.update_faults(|f| match v % 9 {
            0 => f.io_errors = u32::from(v >> 4),
            1 => f.keep_grants_mapped = !f.keep_grants_mapped,
            2 => f.spurious_notifications = u32::from(v >> 2),
            3 => f.bad_id = Some(BadId::OutOfRange),
            4 => f.bad_id = Some(BadId::NotInFlight),
            5 => f.wrong_operation = true,
            6 => f.unknown_status = Some(i16::from(v as i8) | 0x100),
            7 => f.closing_after = Some(u64::from(v >> 5)),
            _ => f.rsp_prod_jump = Some(u32::from(v >> 4)),
        });
        if v % 9 == 1 {
            let _ = self.be.release_kept_grants();
        }
        if matches!(v % 9, 3 | 4 | 8) {
            self.forged_ids();
        }
        let _ = self.tb.xen().run_until_idle();
    }

    fn xenstore(&mut self, inp: &mut Input<'_>) {
        const KEYS: [&str; 9] = [
            "state",
            "sectors",
            "sector-size",
            "info",
            "feature-flush-cache",
            "feature-discard",
            "discard-granularity",
            "max-ring-page-order",
            "multi-queue-max-queues",
        ];
        const VALUES: [&str; 12] = [
            "1",
            "2",
            "4",
            "5",
            "6",
            "0",
            "18446744073709551615",
            "4097",
            "-1",
            "",
            " 3 ",
            "99999999999999999999",
        ];
        let key = KEYS[usize::from(inp.u8()) % KEYS.len()];
        let b = inp.u8();
        let value = if b < 200 {
            VALUES[usize::from(b) % VALUES.len()].to_string()
        } else {
            String::from_utf8_lossy(inp.bytes(24)).replace('\0', "")
        };
        let path = format!("{}/{key}", self.be.backend_path());
        let _ = self.tb.xenstored().write(DomId::DOM0, &path, &value);
        let _ = self.disk.check_backend();
    }

    fn blocking(&mut self, inp: &mut Input<'_>) {
        // The backend answers normally for this call.
        self.be.update_faults(|f| f.hold_responses = false);
        let (sector, len) = self.range(inp);
        let len = len.min(16 * 4096);
        match inp.u8() % 4 {
            0 => {
                let sentinel = inp.u8();
                let mut buf = vec![sentinel; len];
                match self.disk.read(sector, &mut buf) {
                    Ok(()) if self.strict => {
                        let unit = sector * (self.ss / 512);
                        for (k, chunk) in buf.chunks(512).enumerate() {
                            let u = unit + k as u64;
                            let zero = self.zeroed.contains(&u) && chunk.iter().all(|&b| b == 0);
                            assert!(zero || chunk == stamp(u), "blocking read: unit {u} wrong");
                        }
                    }
                    Ok(()) => {}
                    Err(e) => assert!(
                        buf.iter().all(|&b| b == sentinel),
                        "failed blocking read ({e}) wrote into the buffer"
                    ),
                }
            }
            1 => {
                let _ = self
                    .disk
                    .write(sector, &stamps(sector * (self.ss / 512), len));
            }
            2 => {
                let _ = self.disk.flush();
            }
            _ => {
                let count = u64::from(inp.u8());
                if self.disk.discard(sector, count, false).is_ok() {
                    let per = self.ss / 512;
                    self.zeroed.extend(sector * per..(sector + count) * per);
                }
            }
        }
        self.be.update_faults(|f| f.hold_responses = true);
        if self.be.untaken_requests() > 0 {
            self.strict = false;
        }
    }
}

/// Runs one input. Panics on a violated invariant.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let mut bcfg = if flags & 1 == 0 {
        BackendConfig::blkback()
    } else {
        BackendConfig::qdisk()
    };
    bcfg.disk_bytes = DISK_BYTES;
    bcfg.hotplug_delay_ns = 0;
    // qdisk refuses logical blocks other than 512 bytes with this frontend.
    if flags & 3 == 2 {
        bcfg.sector_size = 4096;
        bcfg.physical_sector_size = None;
    }
    if flags & 4 != 0 {
        bcfg.discard = Offer::Eopnotsupp;
        bcfg.flush = Offer::Eopnotsupp;
    }
    let tb = Testbed::new([bcfg]);
    let xen = tb.xen();
    let be = tb.backend(0);
    for u in 0..DISK_BYTES / 512 {
        be.disk_write(u * 512, &stamp(u)).expect("stamp");
    }
    let guest = tb.guest();
    let cfg = Config {
        max_ring_page_order: u32::from(flags >> 3 & 1),
        max_queues: 1 + u32::from(flags >> 4 & 1),
        max_indirect_segments: if flags & 0x20 != 0 { 0 } else { 32 },
        persistent_grants: flags & 0x40 == 0,
        connect_timeout_ns: 1_000_000_000,
        close_timeout_ns: 1_000_000_000,
        io_timeout_ns: 200_000_000,
        transaction_retries: 4,
    };
    let disk = match guest.probe(0, cfg) {
        Ok(d) => d,
        Err(e) => panic!("probe a healthy backend: {e} ({:?})", be.last_error()),
    };
    be.update_faults(|f| f.hold_responses = true);
    let ss = u64::from(disk.sector_size());
    let mut rig = Rig {
        tb: &tb,
        be: &be,
        disk,
        live: BTreeMap::new(),
        zeroed: BTreeSet::new(),
        strict: true,
        ss,
    };
    let mut steps = 0;
    let trace = std::env::var_os("XENBLK_FUZZ_TRACE").is_some();
    while inp.more() && steps < 400 {
        steps += 1;
        let op = inp.u8() % 16;
        if trace {
            eprintln!(
                "step {steps}: op {op} state {:?} in flight {} held {:?}",
                rig.disk.state(),
                rig.disk.in_flight(),
                rig.be.held_responses()
            );
        }
        match op {
            0 | 1 => rig.submit_read(&mut inp),
            2 => rig.submit_write(&mut inp),
            3 => {
                if let Ok(t) = rig.disk.submit_flush() {
                    rig.live.insert(t.as_u64(), Kind::Control);
                    rig.settle();
                }
            }
            4 => rig.submit_discard(&mut inp),
            5 | 6 => rig.release(&mut inp),
            7 => rig.poke(&mut inp),
            8 => rig.poke_prod(&mut inp),
            9 => {
                let b = inp.u8();
                let q = usize::from(b % 2);
                if b & 2 == 0 {
                    rig.be.notify_frontend(xen, q);
                } else {
                    // A response the backend makes up, through its own producer.
                    let base = BlkifResponse {
                        id: 0,
                        operation: BLKIF_OP_READ,
                        status: BLKIF_RSP_OKAY,
                    };
                    let rsp = Rig::forged(&mut inp, base);
                    rig.forged_ids();
                    rig.be.push_forged(xen, q, rsp);
                }
            }
            10 | 11 => rig.drain(),
            12 => rig.faults(&mut inp),
            13 => rig.xenstore(&mut inp),
            14 => rig.blocking(&mut inp),
            _ => match inp.u8() % 5 {
                0 => {
                    let _ = rig.disk.check_backend();
                }
                1 => {
                    if rig.disk.state() == DeviceState::Disconnected {
                        let _ = rig.disk.reconnect();
                    }
                }
                2 => rig.be.close_backend(),
                3 => {
                    xen.advance_clock(u64::from(inp.u32()));
                    let _ = xen.run_until_idle();
                }
                _ => break,
            },
        }
        rig.check_always();
    }

    // The end: close, and nothing may be left behind but what the backend
    // still maps.
    let _ = rig.disk.close();
    rig.drain();
    assert!(
        rig.live.is_empty(),
        "requests never completed after close: {:?}",
        rig.live.keys().collect::<Vec<_>>()
    );
    assert_eq!(rig.disk.in_flight(), 0);
    assert_eq!(
        rig.disk.submit_flush().err(),
        Some(IoError::Closed),
        "a closed device refuses I/O"
    );
    // No free refused, no event channel left open, and every grant still
    // active is one the backend maps.
    guest.assert_only_mapped_grants_left();
    rig.check_always();
}
