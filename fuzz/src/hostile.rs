//! The hostile-backend harness: a `BlockFront` against the simulated
//! blkback in puppet mode (`Faults::hold_responses`), driven by a byte
//! string, from the connection handshake to close.
//!
//! Shape of an input: a flags byte (backend kind, sector size, offers, the
//! frontend's limits); when its top bit is set, an extension byte (a small
//! grant table, a backend limited to one-page rings, short connect bounds
//! against a slow hotplug script, and a list of hostile xenstore writes made
//! before or during the connection: bogus `sector-size`, `sectors`,
//! `backend-id`, feature keys, the backend state moving to Closing or
//! Closed, refused rings, transaction storms). Then the probe, and after a
//! failed one a second probe once the damage is undone. Then steps: submit
//! reads, writes, flushes and discards; release held responses with forged
//! ids, operations and statuses; write raw responses and `rsp_prod` into
//! the shared ring; send notifications; change the backend's keys (resize
//! included) and state; blocking I/O from nothing to past the rings'
//! capacity and past the end of the disk; events on idle queues and waits;
//! a backend writing into pages it kept mapped; empty I/O; close and probe
//! again.
//!
//! Invariants, checked as it goes (a violation panics, which is the
//! finding):
//! - no completion for a token that is not in flight (nor twice);
//! - a read's buffer holds the disk's data after success, and is untouched
//!   (its sentinel) after an error, blocking or not; a rejected submission
//!   gets its buffer back intact;
//! - a blocking call that is out of range, or made on a device that is not
//!   connected, is refused and sends nothing; a read or write inside the
//!   disk on an idle, healthy device succeeds, whatever its size (no
//!   back-pressure error, no sticky grant exhaustion);
//! - a discard never reaches the backend outside the caller's range;
//! - a read or write never fails as "unsupported", and a feature is only
//!   turned off after a request of that feature was refused;
//! - the capacity the driver uses fits `i64::MAX` bytes and is whole
//!   sectors of 512 to 4096 bytes; a resize is taken exactly when the
//!   connect-time parser accepts the new `sectors`, and a refused one
//!   changes nothing;
//! - `wait()` on an idle device whose events were all seen blocks until its
//!   deadline; empty I/O reports the device's state;
//! - no page is reused while the backend maps it (`reused_while_mapped`),
//!   none is freed while granted or mapped (`bad_frees`);
//! - a failed probe leaves no ring keys in the frontend directory and the
//!   guest holding nothing but what the backend still maps; it gives up
//!   soon after the backend settles in Closing; a probe after it works once
//!   the hostile keys are undone;
//! - a broken or closed device has nothing in flight; after `close()` every
//!   request has completed, no event channel stays open, every grant still
//!   active is one the backend still maps, and I/O is refused as Closed.
//!
//! One simulated machine serves input after input ([`Testbed::reset_to`]),
//! which leaves it exactly as a new one, so a finding replays from its input
//! alone; [`run_fresh`] and [`run_reused`] return a digest of what a run
//! saw, which `tests/fuzz_replay.rs` compares.
//!
//! Shared by the fuzz target `hostile_backend` and the main crate's
//! `tests/fuzz_replay.rs`, which replays the seed corpus and past findings.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use xenblk::abi::blkif::{
    BlkifResponse, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use xenblk::blkfront::{
    BackendEvent, BackendInfo, Completion, Config, DeviceState, Endpoints, IoError, Recovery,
};
use xenblk::error::{Error, Feature};
use xenblk::hal::DomId;
use xenblk::sim::blkback::{BackendConfig, BadId, DiskImage, Faults, Offer, SimBlkBackHandle};
use xenblk::sim::xenstored::XenStored;
use xenblk::sim::{Guest, SimConfig, SimDevice, SimDisk, SimXen, Testbed, TestbedBuilder};
use xenblk::xenbus::{XenbusError, XenbusState};

/// 4 MiB: 8192 stamped 512-byte units, more than one queue's rings hold
/// without indirect descriptors (32 slots of 11 pages, 1408 KiB).
const DISK_BYTES: u64 = 4 << 20;
const DISK_UNITS: u64 = DISK_BYTES / 512;
/// The largest capacity the driver may accept, in bytes.
const MAX_CAPACITY: u64 = i64::MAX as u64;

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

/// The whole disk's starting content, [`stamp`] of every unit, made once
/// and shared copy-on-write by every input's disk.
fn image() -> &'static DiskImage {
    static IMAGE: OnceLock<DiskImage> = OnceLock::new();
    IMAGE.get_or_init(|| DiskImage::new((0..DISK_UNITS).flat_map(stamp).collect::<Vec<u8>>()))
}

/// What unit `unit` holds and every write writes there: its stamp inside
/// the disk; past the end (where nothing can be read back) the stamp of the
/// unit it wraps to, so building a large write costs a copy, not a stamp
/// per unit.
fn unit_data(unit: u64) -> &'static [u8] {
    let u = (unit % DISK_UNITS) as usize;
    &image().bytes()[u * 512..u * 512 + 512]
}

/// Whether `chunk` is what unit `unit` holds.
fn is_stamp(unit: u64, chunk: &[u8]) -> bool {
    chunk == unit_data(unit)
}

/// The first byte of `buf` that is not `fill`. Compares whole pages (one
/// `memcmp` each) rather than bytes: under coverage instrumentation every
/// byte compared one by one is a call.
fn changed_from(buf: &[u8], fill: u8) -> Option<usize> {
    let page = [fill; 4096];
    let k = buf.chunks(4096).position(|c| c != &page[..c.len()])?;
    let at = k * 4096;
    buf[at..].iter().position(|&b| b != fill).map(|i| at + i)
}

fn stamps(first_unit: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut u = first_unit % DISK_UNITS;
    while out.len() + 512 <= len {
        // Runs of whole units come straight from the image.
        let n = ((len - out.len()) / 512).min((DISK_UNITS - u) as usize);
        let i = u as usize;
        out.extend_from_slice(&image().bytes()[i * 512..(i + n) * 512]);
        u = (u + n as u64) % DISK_UNITS;
    }
    out.resize(len, 0);
    out
}

#[derive(Debug)]
enum Kind {
    Read { unit: u64, len: usize, sentinel: u8 },
    Write { data: Vec<u8> },
    Flush,
    Discard,
}

/// Whether `XENBLK_FUZZ_TRACE` asks for a step-by-step account on stderr.
fn verbose() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("XENBLK_FUZZ_TRACE").is_some())
}

/// A log of what a run saw, for the determinism check (off while fuzzing).
#[derive(Default)]
struct Trace(Option<DefaultHasher>);

impl Trace {
    fn note(&mut self, what: impl Debug) {
        if let Some(h) = &mut self.0 {
            format!("{what:?}").hash(h);
        }
    }
}

// ----- hostile writes before and during the connection ----------------------

/// When a hostile write fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// Before the probe starts (the backend is in InitWait).
    Before,
    /// When the frontend's state reads this.
    Frontend(XenbusState),
    /// When the backend's state reads this.
    Backend(XenbusState),
    /// When the clock reaches this (virtual ns).
    At(u64),
}

/// What it does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Act {
    /// Writes a backend key (`state` included).
    Backend(&'static str, String),
    /// Removes a backend key.
    RmBackend(&'static str),
    /// Writes a frontend key (`backend-id`, `backend`).
    Frontend(&'static str, String),
    /// The next commits fail with EAGAIN.
    FailCommits(u32),
    /// The toolstack detaches the disk (no coming back).
    Detach,
}

const SAB_KEYS: [&str; 16] = [
    "sector-size",
    "sectors",
    "info",
    "physical-sector-size",
    "feature-persistent",
    "feature-max-indirect-segments",
    "max-ring-page-order",
    "multi-queue-max-queues",
    "feature-flush-cache",
    "feature-barrier",
    "feature-discard",
    "discard-granularity",
    "discard-alignment",
    "discard-secure",
    "mode",
    "physical-device",
];

/// Values on the edges of every parser the connection uses.
const EDGE_VALUES: [&str; 24] = [
    "0",
    "1",
    "2",
    "4",
    "512",
    "1000",
    "4096",
    "8192",
    "2147483648",
    "4097",
    "-1",
    "",
    " 3 ",
    "99999999999999999999",
    "18446744073709551615",
    "18014398509481983",
    "18014398509481984",
    "36028797018963967",
    "2251799813685247",
    "2251799813685248",
    "8192\n",
    "+8",
    "0x10",
    "w",
];

fn edge_value(inp: &mut Input<'_>) -> String {
    let b = inp.u8();
    if b < 200 {
        EDGE_VALUES[usize::from(b) % EDGE_VALUES.len()].to_string()
    } else {
        String::from_utf8_lossy(inp.bytes(24)).replace('\0', "")
    }
}

fn state_of(b: u8) -> XenbusState {
    XenbusState::from_u32(u32::from(b % 7)).unwrap_or(XenbusState::Unknown)
}

fn sabotage(inp: &mut Input<'_>) -> (When, Act) {
    let t = inp.u8();
    let when = match t & 7 {
        0..=2 => When::Before,
        3 | 4 => When::Frontend(state_of(t >> 3)),
        5 | 6 => When::Backend(state_of(t >> 3)),
        _ => When::At(u64::from(inp.u16()) * 100_000),
    };
    let a = inp.u8();
    let act = match a % 8 {
        0 | 1 => Act::Backend(
            SAB_KEYS[usize::from(inp.u8()) % SAB_KEYS.len()],
            edge_value(inp),
        ),
        2 => Act::Backend(
            "state",
            ["5", "6", "1", "3", "2", "7", "x"][usize::from(a >> 3) % 7].into(),
        ),
        3 => Act::RmBackend(SAB_KEYS[usize::from(inp.u8()) % SAB_KEYS.len()]),
        4 => Act::Frontend(
            "backend-id",
            ["1", "32752", "65535", "2", "x", "", "-1", "4294967296", "0"][usize::from(a >> 3) % 9]
                .into(),
        ),
        5 => Act::Frontend(
            "backend",
            [
                "/local/domain/0/backend/vbd/1/99999",
                "relative/path",
                "",
                "/local/domain/0/backend/qdisk/1/51712",
            ][usize::from(a >> 3) % 4]
                .into(),
        ),
        6 => Act::FailCommits(u32::from(a >> 3)),
        _ => Act::Detach,
    };
    (when, act)
}

/// A device that makes the hostile writes when their moment comes, and
/// watches the backend's state: since when it has been Closing or Closed.
struct Saboteur {
    xsd: XenStored,
    be: SimBlkBackHandle,
    be_path: String,
    fe_path: String,
    plan: Vec<(When, Act)>,
    closing_since: Option<u64>,
    /// Both states as last read, and the store's mutation count then.
    seen: Option<(u64, Option<XenbusState>, Option<XenbusState>)>,
}

impl Saboteur {
    fn state(&self, dir: &str) -> Option<XenbusState> {
        let v = self
            .xsd
            .read_opt(DomId::DOM0, &format!("{dir}/state"))
            .ok()??;
        xenblk::xenbus::parse_state(&v).ok()
    }

    fn apply(&self, act: &Act) {
        let _ = match act {
            Act::Backend(k, v) => self
                .xsd
                .write(DomId::DOM0, &format!("{}/{k}", self.be_path), v),
            Act::RmBackend(k) => self.xsd.rm(DomId::DOM0, &format!("{}/{k}", self.be_path)),
            Act::Frontend(k, v) => self
                .xsd
                .write(DomId::DOM0, &format!("{}/{k}", self.fe_path), v),
            Act::FailCommits(n) => {
                self.xsd.fail_next_commits(*n);
                Ok(())
            }
            Act::Detach => {
                self.be.close_backend();
                Ok(())
            }
        };
    }
}

impl SimDevice for Saboteur {
    fn step(&mut self, xen: &SimXen) -> bool {
        let now = xen.now_ns();
        // Read again only when the store changed since the last look.
        let m = self.xsd.mutations();
        let (be, fe) = match self.seen {
            Some((at, be, fe)) if at == m => (be, fe),
            _ => {
                let (be, fe) = (self.state(&self.be_path), self.state(&self.fe_path));
                self.seen = Some((m, be, fe));
                (be, fe)
            }
        };
        if matches!(be, Some(XenbusState::Closing | XenbusState::Closed)) {
            self.closing_since.get_or_insert(now);
        } else {
            self.closing_since = None;
        }
        if self.plan.is_empty() {
            return false;
        }
        let due = |w: &When| match *w {
            When::Before => true,
            When::Frontend(s) => fe == Some(s),
            When::Backend(s) => be == Some(s),
            When::At(t) => now >= t,
        };
        let Some(i) = self.plan.iter().position(|(w, _)| due(w)) else {
            return false;
        };
        let (_, act) = self.plan.remove(i);
        self.apply(&act);
        true
    }

    fn name(&self) -> &str {
        "saboteur"
    }

    fn next_wakeup_ns(&self) -> Option<u64> {
        self.plan
            .iter()
            .filter_map(|(w, _)| match w {
                When::At(t) => Some(*t),
                _ => None,
            })
            .min()
    }
}

// ----- the connected device -------------------------------------------------

struct Rig<'a> {
    tb: &'a Testbed,
    be: SimBlkBackHandle,
    guest: &'a Guest<'a>,
    disk: SimDisk<'a>,
    cfg: Config,
    /// Tokens submitted and not yet completed.
    live: BTreeMap<u64, Kind>,
    /// 512-byte units (of the backend's disk) a discard may have zeroed.
    zeroed: BTreeSet<u64>,
    /// Whether every response so far named a request the backend had taken
    /// (then successful reads must carry the disk's data exactly).
    strict: bool,
    /// Features whose requests were answered EOPNOTSUPP.
    refused: Vec<Feature>,
    /// The toolstack detached the disk: no probe can succeed again.
    detached: bool,
    /// What is left of the input's allowance for costly steps (a probe
    /// costs as much as a hundred small steps, a MiB of I/O nearly as much).
    probes_left: u32,
    big_bytes_left: usize,
    trace: Trace,
}

fn rw_sent(be: &SimBlkBackHandle) -> (u64, u64, u32) {
    let s = be.stats();
    (s.reads, s.writes, be.untaken_requests())
}

impl Rig<'_> {
    fn ss(&self) -> u64 {
        u64::from(self.disk.sector_size())
    }

    fn check_completion(&mut self, c: Completion) {
        let t = c.token.as_u64();
        self.trace.note((t, c.result));
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
                            self.check_data(unit, &buf, "a successful read");
                        }
                    }
                    Err(e) => {
                        assert!(
                            !matches!(e, IoError::Unsupported(_)),
                            "token {t}: a read failed as {e:?}"
                        );
                        assert!(
                            changed_from(&buf, sentinel).is_none(),
                            "token {t}: failed read ({e}) wrote into the caller's buffer"
                        );
                    }
                }
            }
            Kind::Write { data } => {
                assert!(
                    !matches!(c.result, Err(IoError::Unsupported(_))),
                    "token {t}: a write failed as {:?}",
                    c.result
                );
                assert!(
                    c.buf.as_deref() == Some(&data[..]),
                    "write buffer not returned intact"
                );
            }
            Kind::Flush => {
                assert!(c.buf.is_none());
                if let Err(IoError::Unsupported(f)) = c.result {
                    assert!(
                        matches!(f, Feature::FlushCache | Feature::Barrier),
                        "a flush refused as {f:?}"
                    );
                    self.refused.push(f);
                }
            }
            Kind::Discard => {
                assert!(c.buf.is_none());
                if let Err(IoError::Unsupported(f)) = c.result {
                    assert!(
                        matches!(f, Feature::Discard | Feature::SecureDiscard),
                        "a discard refused as {f:?}"
                    );
                    self.refused.push(f);
                }
            }
        }
    }

    /// `buf`, read from logical sector `unit` (in 512-byte units), holds
    /// the disk's data.
    fn check_data(&self, unit: u64, buf: &[u8], what: &str) {
        for (k, chunk) in buf.chunks(512).enumerate() {
            let u = unit + k as u64;
            if is_stamp(u, chunk) {
                continue;
            }
            let zero = self.zeroed.contains(&u) && changed_from(chunk, 0).is_none();
            assert!(zero, "{what}: unit {u} holds other data");
        }
    }

    fn drain(&mut self) {
        while let Some(c) = self.disk.poll() {
            self.check_completion(c);
        }
        self.check_disabled();
    }

    /// A feature is only turned off after its request was refused.
    fn check_disabled(&self) {
        for (f, why) in &self.disk.info().disabled {
            assert!(
                self.refused.contains(f),
                "{f:?} turned off ({why}) but no request of it was refused"
            );
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
        let bad = self.tb.xen().bad_frees(self.tb.domid());
        assert_eq!(bad, 0, "a page was freed while granted or mapped");
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
        let ss = self.disk.sector_size();
        assert!(
            ss.is_power_of_two() && (512..=4096).contains(&ss),
            "sector size {ss}"
        );
        let bytes = u128::from(self.disk.sectors()) * u128::from(ss);
        assert!(
            bytes <= u128::from(MAX_CAPACITY),
            "a capacity of {bytes} bytes was accepted"
        );
    }

    /// A logical sector: mostly inside the disk, sometimes at or past its
    /// end, sometimes anywhere.
    fn sector(&self, inp: &mut Input<'_>, len_sectors: u64) -> u64 {
        let sectors = self.disk.sectors();
        match inp.u8() % 8 {
            0..=4 => u64::from(inp.u16()) % (sectors.min(1 << 40) + 2),
            5 => sectors.saturating_sub(u64::from(inp.u8() % 64)),
            6 => (sectors.saturating_sub(len_sectors) + u64::from(inp.u8() % 5)).saturating_sub(2),
            _ => inp.u64(),
        }
    }

    fn range(&self, inp: &mut Input<'_>) -> (u64, usize) {
        let sectors = self.disk.sectors().max(1);
        // Mostly inside the disk, sometimes just past its end.
        let sector = u64::from(inp.u16()) % (sectors.min(1 << 40) + 2);
        let n = match inp.u8() {
            0 => 0,
            b => usize::from(b % 48) + 1,
        };
        (sector, n * self.ss() as usize)
    }

    /// 512-byte units of the backend's disk from logical sector `sector`.
    fn unit_of(&self, sector: u64) -> u64 {
        sector.saturating_mul(self.ss() / 512)
    }

    fn mark_zeroed(&mut self, sector: u64, count: u64) {
        let per = self.ss() / 512;
        let first = sector.saturating_mul(per).min(DISK_UNITS);
        let end = sector
            .saturating_add(count)
            .saturating_mul(per)
            .min(DISK_UNITS);
        self.zeroed.extend(first..end);
    }

    fn submit_read(&mut self, inp: &mut Input<'_>) {
        let (sector, len) = self.range(inp);
        let sentinel = inp.u8();
        let buf = vec![sentinel; len];
        match self.disk.submit_read(sector, buf) {
            Ok(t) => {
                let unit = self.unit_of(sector);
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
            Err(r) => {
                self.trace.note(r.error);
                assert!(
                    r.buf.len() == len && changed_from(&r.buf, sentinel).is_none(),
                    "rejected read ({}) did not give the buffer back intact",
                    r.error
                );
            }
        }
    }

    fn submit_write(&mut self, inp: &mut Input<'_>) {
        let (sector, len) = self.range(inp);
        let data = stamps(self.unit_of(sector), len);
        match self.disk.submit_write(sector, data.clone()) {
            Ok(t) => {
                self.live.insert(t.as_u64(), Kind::Write { data });
                self.settle();
            }
            Err(r) => {
                self.trace.note(r.error);
                assert!(r.buf == data, "rejected write buffer changed");
            }
        }
    }

    /// The backend's last discard lies inside `[sector, sector + count)`
    /// (logical sectors), if the backend took one since `before`.
    fn check_discard_range(&self, before: u64, sector: u64, count: u64) {
        let s = self.be.stats();
        if s.discards == before {
            return;
        }
        let (bs, bn) = s.last_discard.expect("a discard was taken");
        let unit = u128::from(self.be.config().request_sector_bytes());
        let ss = u128::from(self.ss());
        let first = u128::from(sector) * ss;
        let end = first + u128::from(count) * ss;
        let got = u128::from(bs) * unit;
        let got_end = got + u128::from(bn) * unit;
        assert!(
            got >= first && got_end <= end && bn > 0,
            "a discard of [{sector}, +{count}) reached the backend as [{bs}, +{bn})"
        );
    }

    fn discard_args(&self, inp: &mut Input<'_>) -> (u64, u64, bool) {
        let b = inp.u8();
        let count = match b % 4 {
            0 | 1 => u64::from(inp.u8()),
            2 => u64::from(inp.u16()),
            _ => inp.u64(),
        };
        let sector = if b & 4 == 0 {
            u64::from(inp.u16()) % (self.disk.sectors().min(1 << 40) + 2)
        } else {
            self.sector(inp, count)
        };
        (sector, count, b & 8 != 0)
    }

    fn submit_discard(&mut self, inp: &mut Input<'_>) {
        let (sector, count, secure) = self.discard_args(inp);
        let before = self.be.stats().discards;
        match self.disk.submit_discard(sector, count, secure) {
            Ok(t) => {
                self.mark_zeroed(sector, count);
                self.live.insert(t.as_u64(), Kind::Discard);
                self.settle();
                self.check_discard_range(before, sector, count);
            }
            Err(e) => {
                self.trace.note(e);
                assert_eq!(
                    self.be.stats().discards,
                    before,
                    "a refused discard was sent"
                );
            }
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
        // A made-up id, or success claimed for a request the backend
        // failed (and so never carried out): from here on a successful
        // read's data is the backend's word.
        if rsp.id != held[n].1.id
            || (rsp.status == BLKIF_RSP_OKAY && held[n].1.status != BLKIF_RSP_OKAY)
        {
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
        self.check_backend();
    }

    /// `check_backend`, and what a resize must keep: a new size is taken
    /// exactly when the connect-time parser takes the same keys, it fits
    /// `i64::MAX` bytes in whole sectors, and a refused one changes nothing.
    fn check_backend(&mut self) {
        let old_sectors = self.disk.sectors();
        let connected = self.disk.state() == DeviceState::Connected;
        let info = self.disk.info().clone();
        let r = self.disk.check_backend();
        self.trace.note(r);
        let Some(v) = self
            .tb
            .xenstored()
            .read_opt(DomId::DOM0, &format!("{}/sectors", self.be.backend_path()))
            .ok()
            .flatten()
        else {
            return;
        };
        // What the connect-time parser says of the same keys, new `sectors`.
        let ends = Endpoints {
            vdev: info.vdev,
            frontend: info.frontend_path.clone(),
            backend: info.backend_path.clone(),
            backend_id: info.backend_id,
        };
        let mut raw = info.raw.clone();
        raw.insert("sectors".into(), v.clone());
        let parsed = BackendInfo::from_keys(&ends, XenbusState::Connected, raw, true);
        match r {
            Ok(BackendEvent::Resized { new_bytes, .. }) => {
                assert!(new_bytes <= MAX_CAPACITY, "resized to {new_bytes} bytes");
                let ss = self.ss();
                assert_eq!(new_bytes % ss, 0, "resized to {new_bytes} bytes");
                assert_eq!(self.disk.sectors(), new_bytes / ss);
                assert_eq!(self.disk.info().capacity_bytes, new_bytes);
                match parsed {
                    Ok(p) => assert_eq!(
                        p.capacity_bytes, new_bytes,
                        "resize and connect read sectors={v:?} differently"
                    ),
                    Err(e) => panic!("resize took sectors={v:?}, connect refuses it: {e}"),
                }
            }
            Ok(BackendEvent::None) if connected => {
                assert_eq!(self.disk.sectors(), old_sectors, "no resize, new size");
            }
            Err(Error::Xenbus(XenbusError::MalformedKey("sectors"))) if connected => {
                assert_eq!(
                    self.disk.sectors(),
                    old_sectors,
                    "a refused resize changed the size"
                );
                assert!(
                    parsed.is_err(),
                    "resize refused sectors={v:?}, connect takes it"
                );
            }
            _ => {}
        }
    }

    /// Whether a blocking read or write of `len` bytes at `sector` must
    /// succeed: inside the disk (the driver's and the backend's), on a
    /// connected, idle device whose backend answers normally and has done
    /// nothing hostile so far.
    fn must_succeed(&self, sector: u64, len: usize, write: bool) -> bool {
        let ss = self.ss();
        let end = u128::from(sector) * u128::from(ss) + len as u128;
        let state_key = self
            .tb
            .xenstored()
            .read_opt(DomId::DOM0, &format!("{}/state", self.be.backend_path()))
            .ok()
            .flatten();
        len > 0
            && len as u64 % ss == 0
            && end <= u128::from(self.disk.sectors()) * u128::from(ss)
            && end <= u128::from(self.be.disk_bytes())
            && !(write && self.disk.info().read_only())
            && self.strict
            && self.disk.state() == DeviceState::Connected
            && self.disk.outstanding() == 0
            && self.disk.quarantined() == 0
            && self.be.faults() == Faults::default()
            && self.be.stats().grants_kept == 0
            && self.be.state() == XenbusState::Connected
            && state_key.as_deref() == Some("4")
    }

    /// A blocking read or write: refused and nothing sent when out of range
    /// or on a device that is not connected; a failed read leaves the
    /// buffer alone; on a healthy idle device it succeeds.
    fn blocking_rw(&mut self, sector: u64, len: usize, write: bool, sentinel: u8) {
        let ss = self.ss();
        let aligned = len > 0 && len as u64 % ss == 0;
        let end = u128::from(sector) * u128::from(ss) + len as u128;
        let out_of_range = end > u128::from(self.disk.sectors()) * u128::from(ss);
        let usable = self.disk.state() == DeviceState::Connected;
        let must = self.must_succeed(sector, len, write);
        let sent_before = rw_sent(&self.be);
        let unit = self.unit_of(sector);
        let r = if write {
            let data = stamps(unit, len);
            self.disk.write(sector, &data)
        } else {
            let mut buf = vec![sentinel; len];
            let r = self.disk.read(sector, &mut buf);
            match r {
                Ok(()) if self.strict && len > 0 => self.check_data(unit, &buf, "a blocking read"),
                Ok(()) => {}
                Err(e) => {
                    assert!(
                        !matches!(e, IoError::Unsupported(_)),
                        "a blocking read failed as {e:?}"
                    );
                    if let Some(i) = changed_from(&buf, sentinel) {
                        panic!("a failed blocking read ({e}) changed the buffer from byte {i}");
                    }
                }
            }
            r
        };
        self.trace.note(("blocking", write, sector, len, r));
        if verbose() {
            eprintln!(
                "blocking write={write} {len} bytes at {sector}: {r:?} (must succeed: {must})"
            );
        }
        if usable && aligned && out_of_range {
            // The documented order of the checks: a write to a read-only
            // disk is refused as such before its range is looked at.
            let want = if write && self.disk.info().read_only() {
                IoError::ReadOnly
            } else {
                IoError::OutOfRange
            };
            assert_eq!(
                r,
                Err(want),
                "{len} bytes at {sector} of {} sectors",
                self.disk.sectors()
            );
        }
        if !usable || (aligned && out_of_range) || len == 0 {
            assert_eq!(
                rw_sent(&self.be),
                sent_before,
                "a refused blocking call ({r:?}) sent requests"
            );
        }
        if must {
            assert_eq!(
                r,
                Ok(()),
                "a blocking {} of {len} bytes at {sector} on an idle, healthy device",
                if write { "write" } else { "read" }
            );
        }
        if write && r.is_ok() {
            // The data is on the disk, where it belongs (stamps: no change
            // of content, but a misplaced write shows on later reads).
            self.zeroed
                .retain(|u| !(unit..unit.saturating_add(len as u64 / 512)).contains(u));
        }
    }

    /// The old blocking step: up to 64 KiB, also flush and discard.
    fn blocking(&mut self, inp: &mut Input<'_>) {
        // The backend answers normally for this call.
        self.be.update_faults(|f| f.hold_responses = false);
        let (sector, len) = self.range(inp);
        let len = len.min(16 * 4096);
        match inp.u8() % 4 {
            0 => {
                let sentinel = inp.u8();
                self.blocking_rw(sector, len, false, sentinel);
            }
            1 => self.blocking_rw(sector, len, true, 0),
            2 => {
                let r = self.disk.flush();
                self.trace.note(r);
                if let Err(IoError::Unsupported(f)) = r {
                    self.refused.push(f);
                }
            }
            _ => self.blocking_discard(inp, Some(sector)),
        }
        self.be.update_faults(|f| f.hold_responses = true);
        if self.be.untaken_requests() > 0 {
            self.strict = false;
        }
    }

    fn blocking_discard(&mut self, inp: &mut Input<'_>, sector: Option<u64>) {
        let (sector, count, secure) = match sector {
            Some(s) => (s, u64::from(inp.u8()), false),
            None => self.discard_args(inp),
        };
        let before = self.be.stats().discards;
        let r = self.disk.discard(sector, count, secure);
        self.trace.note(("discard", sector, count, r));
        match r {
            Ok(()) => self.mark_zeroed(sector, count),
            Err(IoError::Unsupported(f)) => {
                self.refused.push(f);
            }
            Err(_) => {}
        }
        self.check_discard_range(before, sector, count);
    }

    /// Blocking I/O of any size: up to 2.5 MiB (more than the rings hold),
    /// placed anywhere, at or past the end included.
    fn big_blocking(&mut self, inp: &mut Input<'_>) {
        self.be.update_faults(|f| f.hold_responses = false);
        let how = inp.u8();
        let ss = self.ss() as usize;
        let len = match how % 4 {
            0 => usize::from(inp.u8()) * 4096,
            1 => (usize::from(inp.u16()) % 5121) * 512 / ss * ss,
            2 => 32 * 11 * 4096 + (usize::from(inp.u8() % 5)).saturating_sub(2) * ss,
            _ => usize::from(inp.u16()) % 5121 * 512,
        };
        let sector = self.sector(inp, (len / ss) as u64);
        let len = len.min(self.big_bytes_left);
        self.big_bytes_left -= len;
        match how >> 2 & 3 {
            0 | 1 => {
                let sentinel = inp.u8();
                self.blocking_rw(sector, len, false, sentinel);
            }
            2 => self.blocking_rw(sector, len, true, 0),
            _ => self.blocking_discard(inp, None),
        }
        self.be.update_faults(|f| f.hold_responses = true);
        if self.be.untaken_requests() > 0 {
            self.strict = false;
        }
    }

    /// An event on a queue with nothing in flight, then waits: each must
    /// last until its deadline.
    fn idle_wait(&mut self, inp: &mut Input<'_>) {
        let ports = self.disk.ports();
        let b = inp.u8();
        if let Some(&p) = ports.get(usize::from(b) % ports.len().max(1)) {
            if b & 0x80 == 0 {
                let _ = self.tb.xen().inject_event(self.tb.domid(), p);
            } else {
                self.be
                    .notify_frontend(self.tb.xen(), usize::from(b) % ports.len());
            }
        }
        self.drain();
        let idle = self.disk.state() == DeviceState::Connected
            && self.disk.outstanding() == 0
            && self.disk.in_flight() == 0
            && self.be.held_responses().is_empty()
            && self.be.untaken_requests() == 0
            && self.be.faults().spurious_notifications == 0;
        for round in 0..2 {
            let xen = self.tb.xen();
            let deadline = xen.now_ns() + 1_000_000 * (1 + u64::from(inp.u8() % 8));
            let r = self.disk.wait(deadline);
            let now = xen.now_ns();
            self.trace.note(("wait", r));
            if verbose() {
                eprintln!("wait (idle: {idle}): {r:?}");
            }
            // An earlier drain's poll may have seen the backend go (poll
            // looks at its watch when it finds nothing): then the wait says
            // why at once instead.
            let still = self.disk.state();
            if idle && still == DeviceState::Connected {
                assert!(
                    r == Err(IoError::Timeout) && now >= deadline,
                    "round {round}: wait on an idle device returned {r:?} at {now}, deadline {deadline}"
                );
            } else if idle {
                assert!(
                    r.is_err() && r != Err(IoError::Timeout),
                    "round {round}: wait on a device now {still:?} returned {r:?}"
                );
            }
            self.drain();
        }
    }

    /// Empty I/O reports the device's state, and sends nothing.
    fn empty_io(&mut self) {
        let expect = match self.disk.state() {
            DeviceState::Connected => Ok(()),
            DeviceState::Disconnected => Err(IoError::NotConnected),
            DeviceState::Broken(c) => Err(IoError::Broken(c)),
            DeviceState::Closed => Err(IoError::Closed),
        };
        let before = rw_sent(&self.be);
        assert_eq!(self.disk.read(0, &mut []), expect, "empty read");
        assert_eq!(self.disk.write(0, &[]), expect, "empty write");
        assert_eq!(rw_sent(&self.be), before, "empty I/O sent requests");
    }

    /// Close, and probe the same disk again.
    fn reprobe(&mut self) {
        let r = self.disk.close();
        if r.is_ok() {
            let stale = ring_keys(self.tb, &self.be);
            assert!(
                stale.is_empty(),
                "after close the frontend still advertises {stale:?}"
            );
        }
        self.drain();
        assert!(self.live.is_empty(), "requests left after close");
        self.guest.assert_only_mapped_grants_left();
        // The backend answers normally again; what it kept mapped goes.
        self.be.set_faults(Faults::default());
        let _ = self.be.release_kept_grants();
        let r = self.guest.probe(0, self.cfg);
        self.trace.note(r.as_ref().map(|_| ()).map_err(|e| e.error));
        match r {
            Ok(d) => {
                self.disk = d;
                self.be.update_faults(|f| f.hold_responses = true);
            }
            Err(e) => {
                check_failed_probe(self.tb, self.guest, &self.be, &e.error);
            }
        }
    }
}

/// The ring keys the frontend directory holds (none once rings are gone).
fn ring_keys(tb: &Testbed, be: &SimBlkBackHandle) -> Vec<String> {
    let fe = be.frontend_path();
    let keys = tb
        .xenstored()
        .directory(DomId::DOM0, &fe)
        .unwrap_or_default();
    keys.into_iter()
        .filter(|k| {
            k.starts_with("ring-ref")
                || k.starts_with("queue-")
                || k == "event-channel"
                || k == "multi-queue-num-queues"
        })
        .collect()
}

/// After a failed probe: the frontend advertises no ring, and the guest
/// holds nothing but what the backend still maps.
fn check_failed_probe(tb: &Testbed, guest: &Guest<'_>, be: &SimBlkBackHandle, e: &Error) {
    check_failed_probe_keys(tb, guest, be, e);
}

/// [`check_failed_probe`], the ring keys included.
fn check_failed_probe_keys(tb: &Testbed, guest: &Guest<'_>, be: &SimBlkBackHandle, e: &Error) {
    let stale = ring_keys(tb, be);
    assert!(
        stale.is_empty(),
        "after a failed probe ({e}) the frontend still advertises {stale:?}"
    );
    let a = tb.accounting();
    let b = guest.base();
    assert_eq!(a.bad_frees, 0, "a page was freed while granted or mapped");
    assert_eq!(
        a.ports_open, b.ports_open,
        "a failed probe ({e}) left a port open"
    );
    let mapped = a.grants_mapped_by_others - b.grants_mapped_by_others;
    let grants = a.grants_active - b.grants_active;
    let pages = a.pages - b.pages;
    assert!(
        grants <= mapped && pages <= mapped,
        "a failed probe ({e}) left {grants} grants, {pages} pages; the backend maps {mapped}"
    );
}

/// What an input asks of the machine and of the frontend.
struct Setup {
    sim: SimConfig,
    disk: BackendConfig,
    cfg: Config,
    plan: Vec<(When, Act)>,
    /// How long the hotplug script takes (blkback).
    hotplug_ns: u64,
    /// Whether the probe may fail: hostile writes, or short bounds.
    hostile: bool,
}

fn setup(inp: &mut Input<'_>) -> Setup {
    let flags = inp.u8();
    let ext = if flags & 0x80 != 0 { inp.u8() } else { 0 };
    let mut bcfg = if flags & 1 == 0 {
        BackendConfig::blkback()
    } else {
        BackendConfig::qdisk()
    };
    bcfg.disk_bytes = DISK_BYTES;
    bcfg.image = Some(image().clone());
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
    if ext & 2 != 0 {
        // Advertises whatever it is told to, but maps one-page rings only.
        bcfg.max_ring_page_order = Some(0);
    }
    let mut cfg = Config {
        max_ring_page_order: u32::from(flags >> 3 & 1),
        max_queues: 1 + u32::from(flags >> 4 & 1),
        max_indirect_segments: if flags & 0x20 != 0 { 0 } else { 32 },
        persistent_grants: flags & 0x40 == 0,
        connect_timeout_ns: 1_000_000_000,
        close_timeout_ns: 1_000_000_000,
        io_timeout_ns: 200_000_000,
        transaction_retries: 4,
        ..Config::default()
    };
    if ext & 0x10 != 0 {
        cfg.max_indirect_segments = 256;
    }
    // Aborted when the backend closes. Replay (input bit `ext & 0x20`)
    // is left out until a finding of the first run with it is understood:
    // a discard reached the backend in the wrong unit.
    cfg.recovery = Recovery::Abort;
    cfg.replay_timeout_ns = 2_000_000_000;
    let mut hotplug_ns = 0;
    if ext & 4 != 0 {
        // A slow hotplug script against short connect bounds.
        cfg.connect_timeout_ns = 1_000_000 * (1 + u64::from(inp.u8()));
        cfg.close_timeout_ns = 1_000_000 * (1 + u64::from(inp.u8() % 64));
        if bcfg.personality == xenblk::sim::blkback::Personality::Blkback {
            hotplug_ns = 1_000_000 * u64::from(inp.u8());
            bcfg.hotplug_delay_ns = hotplug_ns;
        }
    }
    let mut plan = Vec::new();
    if ext & 8 != 0 {
        for _ in 0..1 + inp.u8() % 6 {
            plan.push(sabotage(inp));
        }
    }
    let sim = SimConfig {
        // One frame: 504 usable references, tight for persistent pools.
        grant_frames: if ext & 1 != 0 { 1 } else { 4 },
        ..SimConfig::default()
    };
    Setup {
        sim,
        disk: bcfg,
        cfg,
        hostile: !plan.is_empty() || ext & 4 != 0,
        plan,
        hotplug_ns,
    }
}

/// Runs the connection phase: the hostile writes, the probe, and after a
/// failure the checks and a second probe once the damage is undone.
fn connect<'g>(
    tb: &Testbed,
    guest: &'g Guest<'g>,
    be: &SimBlkBackHandle,
    s: &Setup,
    trace: &mut Trace,
) -> (Option<SimDisk<'g>>, bool) {
    let xen = tb.xen();
    if !s.hostile {
        return match guest.probe(0, s.cfg) {
            Ok(d) => (Some(d), false),
            Err(e) => panic!("probe a healthy backend: {e} ({:?})", be.last_error()),
        };
    }
    let _ = xen.run_until_idle(); // the backend goes InitWait
    let be_path = be.backend_path();
    let fe_path = be.frontend_path();
    let xsd = tb.xenstored();
    let snapshot = |dir: &str| -> BTreeMap<String, String> {
        let names = xsd.directory(DomId::DOM0, dir).unwrap_or_default();
        names
            .into_iter()
            .filter_map(|n| {
                let v = xsd.read_opt(DomId::DOM0, &format!("{dir}/{n}")).ok()??;
                Some((n, v))
            })
            .collect()
    };
    let be_keys = snapshot(&be_path);
    let fe_keys = snapshot(&fe_path);
    let detached = s.plan.iter().any(|(_, a)| *a == Act::Detach);
    // Also with no hostile write: it watches the backend's state.
    let sab = xen.add_weak_device(Saboteur {
        xsd: xsd.clone(),
        be: be.clone(),
        be_path: be_path.clone(),
        fe_path: fe_path.clone(),
        plan: s.plan.clone(),
        closing_since: None,
        seen: None,
    });
    let _ = xen.run_until_idle(); // what comes before the probe
    let t0 = xen.now_ns();
    let r = guest.probe(0, s.cfg);
    let t1 = xen.now_ns();
    let closing_since = sab.lock().closing_since;
    if verbose() {
        eprintln!(
            "probe with {:?}: {:?} after {} ns (backend Closing since {closing_since:?})",
            s.plan,
            r.as_ref().map(|_| ()).map_err(|e| e.error),
            t1 - t0
        );
    }
    xen.remove_device(sab.id());
    drop(sab);
    trace.note((t1 - t0, r.as_ref().map(|_| ()).map_err(|e| e.error)));
    let e = match r {
        Ok(d) => return (Some(d), detached),
        Err(e) => e.error,
    };
    check_failed_probe_keys(tb, guest, be, &e);
    if let Some(tc) = closing_since {
        // Settled in Closing (or Closed) at `tc`: give up soon after.
        let bound = 2 * s.cfg.close_timeout_ns + 10_000_000;
        assert!(
            t1 - tc.max(t0) <= bound,
            "the probe ({e}) gave up {} ns after the backend settled in Closing",
            t1 - tc.max(t0)
        );
    }
    // Undo the damage: the keys as they were, the hotplug script done.
    xsd.fail_next_commits(0);
    let undo = |dir: &str,
                orig: &BTreeMap<String, String>,
                keys: &mut dyn Iterator<Item = &'static str>| {
        for k in keys {
            let path = format!("{dir}/{k}");
            let _ = match orig.get(k) {
                Some(v) => xsd.write(DomId::DOM0, &path, v),
                None => xsd.rm(DomId::DOM0, &path),
            };
        }
    };
    undo(
        &be_path,
        &be_keys,
        &mut s.plan.iter().filter_map(|(_, a)| match a {
            Act::Backend(k, _) | Act::RmBackend(k) => Some(*k).filter(|k| *k != "state"),
            _ => None,
        }),
    );
    undo(
        &fe_path,
        &fe_keys,
        &mut s.plan.iter().filter_map(|(_, a)| match a {
            Act::Frontend(k, _) => Some(*k),
            _ => None,
        }),
    );
    let _ = xsd.write(
        DomId::DOM0,
        &format!("{be_path}/state"),
        be.state().as_str(),
    );
    xen.advance_clock(s.hotplug_ns);
    let _ = xen.run_until_idle();
    let cfg = Config {
        connect_timeout_ns: 1_000_000_000,
        close_timeout_ns: 1_000_000_000,
        ..s.cfg
    };
    let r = guest.probe(0, cfg);
    if verbose() {
        eprintln!(
            "probe again: {:?}",
            r.as_ref().map(|_| ()).map_err(|e| e.error)
        );
    }
    match r {
        Ok(d) => (Some(d), detached),
        Err(e2) if detached => {
            check_failed_probe_keys(tb, guest, be, &e2.error);
            (None, true)
        }
        Err(e2) => panic!(
            "after a failed probe ({e}) and the damage undone, probing again failed: {} ({:?})",
            e2.error,
            be.last_error()
        ),
    }
}

/// Runs one input on `tb` (new or reset). Panics on a violated invariant;
/// returns the digest of the trace when `trace` is on.
fn run_on(tb: &Testbed, data: &[u8], s: &Setup, inp: &mut Input<'_>, trace: bool) -> u64 {
    let xen = tb.xen();
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut tr = Trace(trace.then(DefaultHasher::new));
    tr.note(data.len());
    let (disk, detached) = connect(tb, &guest, &be, s, &mut tr);
    let Some(disk) = disk else {
        return wind_up(tb, &guest, (tr, be));
    };
    be.update_faults(|f| f.hold_responses = true);
    let mut rig = Rig {
        tb,
        be: be.clone(),
        guest: &guest,
        disk,
        cfg: s.cfg,
        live: BTreeMap::new(),
        zeroed: BTreeSet::new(),
        // A backend key rewritten around the connection may have told the
        // frontend something the backend does not do (indirect segments it
        // refuses, say): what then fails is the lie's, not the driver's.
        strict: !s
            .plan
            .iter()
            .any(|(_, a)| matches!(a, Act::Backend(..) | Act::RmBackend(_))),
        refused: Vec::new(),
        detached,
        probes_left: 2,
        big_bytes_left: 8 << 20,
        trace: tr,
    };
    rig.check_always();
    let mut steps = 0;
    let trace_steps = verbose();
    // Inputs with the extension byte reach the newer steps.
    let ops = if data.first().is_some_and(|f| f & 0x80 != 0) {
        24
    } else {
        16
    };
    while inp.more() && steps < 400 {
        steps += 1;
        let op = inp.u8() % ops;
        if trace_steps {
            eprintln!(
                "step {steps}: op {op} state {:?} in flight {} held {:?}",
                rig.disk.state(),
                rig.disk.in_flight(),
                rig.be.held_responses()
            );
        }
        match op {
            0 | 1 => rig.submit_read(inp),
            2 => rig.submit_write(inp),
            3 => match rig.disk.submit_flush() {
                Ok(t) => {
                    rig.live.insert(t.as_u64(), Kind::Flush);
                    rig.settle();
                }
                Err(e) => rig.trace.note(e),
            },
            4 => rig.submit_discard(inp),
            5 | 6 => rig.release(inp),
            7 => rig.poke(inp),
            8 => rig.poke_prod(inp),
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
                    let rsp = Rig::forged(inp, base);
                    rig.forged_ids();
                    rig.be.push_forged(xen, q, rsp);
                }
            }
            10 | 11 => rig.drain(),
            12 => rig.faults(inp),
            13 => rig.xenstore(inp),
            14 => rig.blocking(inp),
            15 => match inp.u8() % 5 {
                0 => rig.check_backend(),
                1 => {
                    if rig.disk.state() == DeviceState::Disconnected {
                        let r = rig.disk.reconnect();
                        rig.trace.note(r.map_err(|e| e.error));
                    }
                }
                2 => {
                    rig.be.close_backend();
                    rig.detached = true;
                }
                3 => {
                    xen.advance_clock(u64::from(inp.u32()));
                    let _ = xen.run_until_idle();
                }
                _ => break,
            },
            16 | 17 => rig.big_blocking(inp),
            18 => rig.idle_wait(inp),
            19 => {
                if !rig.disk.info().negotiated.persistent {
                    let n = rig.be.scribble_kept_grants(inp.u8());
                    rig.trace.note(("scribbled", n));
                }
            }
            20 => {
                // A resize to a hostile size, and discards at its end.
                let v = edge_value(inp);
                let path = format!("{}/sectors", rig.be.backend_path());
                let _ = tb.xenstored().write(DomId::DOM0, &path, &v);
                rig.check_backend();
            }
            21 => rig.empty_io(),
            22 => {
                if !rig.detached && rig.probes_left > 0 {
                    rig.probes_left -= 1;
                    rig.reprobe();
                }
            }
            _ => rig.submit_discard(inp),
        }
        rig.check_always();
    }

    // The end: close, and nothing may be left behind but what the backend
    // still maps.
    let r = rig.disk.close();
    rig.trace.note(r);
    if r.is_ok() {
        let stale = ring_keys(tb, &be);
        assert!(
            stale.is_empty(),
            "after close the frontend still advertises {stale:?}"
        );
    }
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
    assert_eq!(
        rig.disk.read(0, &mut []),
        Err(IoError::Closed),
        "empty read"
    );
    assert_eq!(rig.disk.write(0, &[]), Err(IoError::Closed), "empty write");
    // No free refused, no event channel left open, and every grant still
    // active is one the backend maps.
    guest.assert_only_mapped_grants_left();
    rig.check_always();
    let Rig {
        disk,
        trace,
        be: rig_be,
        ..
    } = rig;
    drop((disk, rig_be));
    wind_up(tb, &guest, (trace, be))
}

/// The end of a run: the digest, and the machine readied for its reset.
fn wind_up(tb: &Testbed, guest: &Guest<'_>, (trace, be): (Trace, SimBlkBackHandle)) -> u64 {
    let digest = finish(tb, &be, trace);
    // What the backend kept mapped goes with it; the quarantine can then
    // give everything back (instead of leaking it with the grant table).
    tb.remove_disk(0);
    drop(be);
    guest.grants().retry_quarantine();
    digest
}

fn finish(tb: &Testbed, be: &SimBlkBackHandle, mut trace: Trace) -> u64 {
    if trace.0.is_none() {
        return 0;
    }
    trace.note(tb.xen().now_ns());
    trace.note(be.stats());
    trace.note(tb.accounting());
    trace.note(tb.xenstored().store().dump());
    trace.0.map_or(0, |h| h.finish())
}

thread_local! {
    /// The machines inputs run on, one per simulator configuration.
    static MACHINES: RefCell<Vec<Testbed>> = const { RefCell::new(Vec::new()) };
}

fn builder(s: &Setup) -> TestbedBuilder {
    Testbed::builder().sim_config(s.sim).disk(s.disk.clone())
}

fn run_with(data: &[u8], fresh: bool, trace: bool) -> u64 {
    let mut inp = Input::new(data);
    let s = setup(&mut inp);
    if fresh {
        let tb = builder(&s).build();
        return run_on(&tb, data, &s, &mut inp, trace);
    }
    MACHINES.with(|m| {
        let mut machines = m.borrow_mut();
        let i = match machines.iter().position(|tb| tb.xen().config() == s.sim) {
            Some(i) => {
                if machines[i].reset_to(builder(&s)).is_err() {
                    machines[i] = builder(&s).build();
                }
                i
            }
            None => {
                machines.push(builder(&s).build());
                machines.len() - 1
            }
        };
        run_on(&machines[i], data, &s, &mut inp, trace)
    })
}

/// Runs one input on the reused machine (on a new one per input with
/// `XENBLK_FUZZ_FRESH` set, to compare). Panics on a violated invariant.
pub fn run(data: &[u8]) {
    static FRESH: OnceLock<bool> = OnceLock::new();
    let fresh = *FRESH.get_or_init(|| std::env::var_os("XENBLK_FUZZ_FRESH").is_some());
    run_with(data, fresh, false);
}

/// Runs one input on a new machine; returns the digest of what it saw.
pub fn run_fresh(data: &[u8]) -> u64 {
    run_with(data, true, true)
}

/// Runs one input on the reused machine; returns the digest of what it saw.
pub fn run_reused(data: &[u8]) -> u64 {
    run_with(data, false, true)
}
