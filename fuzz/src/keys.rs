//! Every parser of a value a backend (or the toolstack) writes into
//! xenstore, on arbitrary maps and strings: `BackendInfo::from_keys` (the
//! connect-time reading and the report's), the resize path's reading of a
//! new `sectors` (through `from_keys` on the same keys with `sectors`
//! replaced, which is how `check_backend` must read it), `parse_offered`,
//! `StallReport` and `StallCause::diagnose`, the `xenbus` key parsers and
//! `XenbusState`. None may panic; whatever they accept must make sense:
//! a sector size that is a power of two from 512 to 4096, a capacity that
//! is exactly `sectors` times its unit (512 bytes for blkback, the logical
//! sector for qdisk and others), fits `i64::MAX` bytes and is whole
//! sectors, a parsed number that prints back as the input, a stall blamed
//! on what the state and keys show.

use std::collections::BTreeMap;

use xenblk::blkfront::info::parse_offered;
use xenblk::blkfront::Endpoints;
use xenblk::blkfront::{BackendInfo, BackendKind, SectorsUnit, StallCause, StallReport};
use xenblk::hal::DomId;
use xenblk::xenbus::{self, XenbusError, XenbusState};

use crate::hostile::Input;

/// Keys a backend directory holds; the input picks among them.
const KEYS: [&str; 24] = [
    "sectors",
    "sector-size",
    "physical-sector-size",
    "info",
    "mode",
    "type",
    "params",
    "state",
    "feature-flush-cache",
    "feature-barrier",
    "feature-discard",
    "discard-granularity",
    "discard-alignment",
    "discard-secure",
    "feature-persistent",
    "feature-max-indirect-segments",
    "max-ring-page-order",
    "max-ring-pages",
    "multi-queue-max-queues",
    "direct-io-safe",
    "physical-device",
    "online",
    "hotplug-status",
    "frontend-id",
];

/// Values that sit on the edges.
const VALUES: [&str; 24] = [
    "0",
    "1",
    "512",
    "4096",
    "3000",
    "18446744073709551615",
    "18446744073709551616",
    "36028797018963968",
    "4294967295",
    "4294967296",
    "-1",
    "+5",
    " 7 ",
    "0x10",
    "",
    "w",
    "8192",
    "1000",
    "2147483648",
    "18014398509481983",
    "18014398509481984",
    "2251799813685247",
    "2251799813685248",
    "4097",
];

fn value(inp: &mut Input<'_>) -> String {
    let b = inp.u8();
    if b < 128 {
        VALUES[usize::from(b) % VALUES.len()].to_string()
    } else {
        String::from_utf8_lossy(inp.bytes(40)).into_owned()
    }
}

/// Runs one input. Panics on a broken invariant.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let path = match inp.u8() % 3 {
        0 => "/local/domain/0/backend/vbd/1/51712",
        1 => "/local/domain/0/backend/qdisk/1/51712",
        _ => "backend/other",
    };
    let mut raw = BTreeMap::new();
    let n = inp.u8() % 24;
    for _ in 0..n {
        let k = KEYS[usize::from(inp.u8()) % KEYS.len()];
        raw.insert(k.to_string(), value(&mut inp));
    }
    let (offered, _malformed) = parse_offered(&raw);
    assert!(offered.max_queues >= 1);
    let ends = Endpoints {
        vdev: 51712,
        frontend: "device/vbd/51712".into(),
        backend: path.into(),
        backend_id: DomId(0),
    };
    for connected in [false, true] {
        let state = XenbusState::from_u32(u32::from(inp.u8() % 9)).unwrap_or(XenbusState::Unknown);
        match BackendInfo::from_keys(&ends, state, raw.clone(), connected) {
            Ok(info) => {
                let _ = format!("{info}");
                let _ = info.disk_line();
                let _ = (
                    info.read_only(),
                    info.cdrom(),
                    info.removable(),
                    info.logical_sectors(),
                );
                if connected {
                    check_geometry(&info, &raw);
                }
            }
            Err(e) => {
                assert!(connected, "from_keys without `connected` failed: {e}");
                let _ = format!("{e}");
            }
        }
    }
    // A resize: the same keys with another `sectors`, read as at connect.
    if let Ok(before) = BackendInfo::from_keys(&ends, XenbusState::Connected, raw.clone(), true) {
        let mut resized = raw.clone();
        resized.insert("sectors".into(), value(&mut inp));
        match BackendInfo::from_keys(&ends, XenbusState::Connected, resized.clone(), true) {
            Ok(after) => {
                check_geometry(&after, &resized);
                assert_eq!(
                    (after.sector_size, after.sectors_unit, after.kind),
                    (before.sector_size, before.sectors_unit, before.kind),
                    "a new sectors value changed more than the size"
                );
            }
            Err(e) => assert_eq!(
                e,
                XenbusError::MalformedKey("sectors"),
                "only the new sectors value can be refused"
            ),
        }
    }
    let seen = match inp.u8() % 10 {
        9 => None,
        s => XenbusState::from_u32(u32::from(s)),
    };
    let report = StallReport::new(51712, path, XenbusState::Connected, seen, raw.clone());
    let _ = (format!("{report}"), report.disk_line(), report.error());
    assert_eq!(report.cause, StallCause::diagnose(seen, report.kind, &raw));
    for kind in [BackendKind::Blkback, BackendKind::Qdisk, BackendKind::Other] {
        check_diagnosis(seen, kind, &raw);
    }

    // The typed key parsers, on the raw strings.
    for v in raw.values() {
        if let Ok(x) = xenbus::parse_u64("k", v) {
            assert_eq!(xenbus::parse_u64("k", &x.to_string()), Ok(x));
        }
        if let Ok(x) = xenbus::parse_u32("k", v) {
            assert_eq!(xenbus::parse_u64("k", v), Ok(u64::from(x)));
        }
        let _ = xenbus::parse_bool("k", v);
        if let Ok(s) = xenbus::parse_state(v) {
            assert_eq!(xenbus::parse_state(s.as_str()), Ok(s));
            assert_eq!(XenbusState::from_u32(s as u32), Some(s));
        }
    }
    let n = inp.u32();
    if let Some(s) = XenbusState::from_u32(n) {
        assert_eq!(s as u32, n);
        let _ = format!("{s}");
    }
}

/// What a connected reading of `raw` must say about the disk's size.
fn check_geometry(info: &BackendInfo, raw: &BTreeMap<String, String>) {
    let ss = info.sector_size;
    assert!(
        ss.is_power_of_two() && (512..=4096).contains(&ss),
        "accepted sector-size {ss}"
    );
    assert!(
        info.capacity_bytes <= i64::MAX as u64,
        "accepted a capacity of {} bytes",
        info.capacity_bytes
    );
    assert_eq!(info.capacity_bytes % u64::from(ss), 0);
    assert_eq!(info.logical_sectors() * u64::from(ss), info.capacity_bytes);
    let sectors = raw.get("sectors").map(|v| xenbus::parse_u64("sectors", v));
    let Some(Ok(sectors)) = sectors else {
        panic!("connected without a valid sectors key: {sectors:?}");
    };
    assert_eq!(info.sectors_raw, Some(sectors));
    let unit = match info.sectors_unit {
        SectorsUnit::Bytes512 => 512,
        SectorsUnit::LogicalBlocks => u64::from(ss),
    };
    assert_eq!(
        u128::from(sectors) * u128::from(unit),
        u128::from(info.capacity_bytes),
        "sectors={sectors} in units of {unit} is not {} bytes",
        info.capacity_bytes
    );
    // docs/SECTORS.md: qdisk counts logical blocks; blkback, and a backend
    // the driver does not recognise, 512-byte units (blkif.h since 2024).
    let expect_unit = match info.kind {
        BackendKind::Blkback | BackendKind::Other => SectorsUnit::Bytes512,
        BackendKind::Qdisk => SectorsUnit::LogicalBlocks,
    };
    assert_eq!(info.sectors_unit, expect_unit);
    if let Some(p) = info.physical_sector_size {
        assert!(p >= ss && p % ss == 0, "accepted physical-sector-size {p}");
    }
    if let Some(d) = info.offered.discard {
        assert!(d.granularity > 0);
    }
}

/// A stall is blamed on what the state and the keys show.
fn check_diagnosis(seen: Option<XenbusState>, kind: BackendKind, raw: &BTreeMap<String, String>) {
    let cause = StallCause::diagnose(seen, kind, raw);
    let _ = (cause.token(), cause.explain());
    let dio = raw
        .get("direct-io-safe")
        .map(|v| xenbus::parse_bool("d", v));
    match seen {
        None => assert_eq!(cause, StallCause::NoBackendDirectory),
        Some(XenbusState::Closing | XenbusState::Closed) => {
            assert_eq!(cause, StallCause::BackendClosed)
        }
        Some(_) => {
            assert_ne!(cause, StallCause::NoBackendDirectory);
            assert_ne!(cause, StallCause::BackendClosed);
        }
    }
    if cause == StallCause::QdiskDirectIoSafe {
        assert_eq!(kind, BackendKind::Qdisk);
        assert_eq!(dio, Some(Ok(true)), "blamed on direct-io-safe={dio:?}");
    }
    if cause == StallCause::HotplugScript {
        assert_eq!(kind, BackendKind::Blkback);
        assert!(!raw.contains_key("physical-device"));
    }
}
