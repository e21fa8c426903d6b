//! Every parser of a value a backend (or the toolstack) writes into
//! xenstore, on arbitrary maps and strings: `BackendInfo::from_keys`,
//! `parse_offered`, `StallReport`, the `xenbus` key parsers and
//! `XenbusState`. None may panic; whatever they accept must make sense
//! (a power-of-two sector size of at least 512, a capacity that is a whole
//! number of sectors, a parsed number that prints back as the input).

use std::collections::BTreeMap;

use xenblk::blkfront::info::parse_offered;
use xenblk::blkfront::Endpoints;
use xenblk::blkfront::{BackendInfo, StallReport};
use xenblk::hal::DomId;
use xenblk::xenbus::{self, XenbusState};

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
const VALUES: [&str; 16] = [
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
    for connected in [false, true] {
        let state = XenbusState::from_u32(u32::from(inp.u8() % 9)).unwrap_or(XenbusState::Unknown);
        let ends = Endpoints {
            vdev: 51712,
            frontend: "device/vbd/51712".into(),
            backend: path.into(),
            backend_id: DomId(0),
        };
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
                    let ss = info.sector_size;
                    assert!(
                        ss.is_power_of_two() && ss >= 512,
                        "accepted sector-size {ss}"
                    );
                    assert_eq!(info.capacity_bytes % u64::from(ss), 0);
                    assert_eq!(info.logical_sectors() * u64::from(ss), info.capacity_bytes);
                    if let Some(p) = info.physical_sector_size {
                        assert!(p >= ss && p % ss == 0, "accepted physical-sector-size {p}");
                    }
                    if let Some(d) = info.offered.discard {
                        assert!(d.granularity > 0);
                    }
                }
            }
            Err(e) => {
                assert!(connected, "from_keys without `connected` failed: {e}");
                let _ = format!("{e}");
            }
        }
    }
    let seen = match inp.u8() % 10 {
        9 => None,
        s => XenbusState::from_u32(u32::from(s)),
    };
    let report = StallReport::new(51712, path, XenbusState::Connected, seen, raw.clone());
    let _ = (format!("{report}"), report.disk_line(), report.error());

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
