//! Which memory the heap may use: the RAM regions of the loader's memory
//! map, clipped to what the platform can reach, minus what is already in
//! use.
//!
//! Core only (no allocation, no dependency), so that its tests build on the
//! host with `rustc --test` (`tests/unikernel-noxen.sh`).

/// The memory map's type of usable RAM (`XEN_HVM_MEMMAP_TYPE_RAM`).
pub const RAM: u32 = 1;
/// The page size regions are aligned to.
pub const PAGE: u64 = 4096;
/// Most regions kept; a map with more keeps the first ones found.
pub const MAX_REGIONS: usize = 16;

/// A range of physical memory, `start..end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Region {
    /// `start..start + len`, or `None` when that passes `u64::MAX`.
    pub fn at(start: u64, len: u64) -> Option<Region> {
        Some(Region {
            start,
            end: start.checked_add(len)?,
        })
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The heap's regions: page-aligned, disjoint, in the map's order.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    regions: [Region; MAX_REGIONS],
    len: usize,
}

impl Plan {
    /// No region.
    pub const EMPTY: Plan = Plan {
        regions: [Region { start: 0, end: 0 }; MAX_REGIONS],
        len: 0,
    };

    /// The regions.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// Bytes in all of them.
    pub fn total(&self) -> u64 {
        self.regions().iter().map(Region::len).sum()
    }

    /// The largest region, if any.
    pub fn largest(&self) -> Option<Region> {
        self.regions().iter().copied().max_by_key(Region::len)
    }

    fn push(&mut self, r: Region) {
        if r.is_empty() || self.len == MAX_REGIONS {
            return;
        }
        self.regions[self.len] = r;
        self.len += 1;
    }
}

fn align_up(x: u64) -> Option<u64> {
    x.checked_add(PAGE - 1).map(|v| v & !(PAGE - 1))
}

fn align_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

/// The heap's regions: every RAM entry of `map` (`(addr, size, type)`, as
/// the loader gave them), cut to `reach` (what is mapped and not the
/// image's: from the image's end to the top of the identity map), with
/// every range of `in_use` cut out (the start info, the map itself, the
/// command line, modules: whatever the loader placed), and every entry of
/// another type too (reserved wins over RAM, as in Linux's e820
/// clean-up), and what an earlier entry already gave (overlapping or
/// repeated entries count once); each piece shrunk inward to whole pages.
/// An entry whose end would pass `u64::MAX` is skipped.
pub fn plan(map: &[(u64, u64, u32)], reach: Region, in_use: &[Region]) -> Plan {
    let mut out = Plan::EMPTY;
    for &(addr, size, ty) in map {
        if ty != RAM {
            continue;
        }
        let Some(r) = Region::at(addr, size) else {
            continue;
        };
        let r = Region {
            start: r.start.max(reach.start),
            end: r.end.min(reach.end),
        };
        if r.start >= r.end {
            continue;
        }
        let before = out;
        let ex = Exclude {
            in_use,
            planned: before.regions(),
            map,
        };
        cut(r, &ex, &mut out);
    }
    out
}

/// What a RAM entry must not give: the loader's ranges, other entries'
/// non-RAM ranges, regions already planned.
struct Exclude<'a> {
    in_use: &'a [Region],
    planned: &'a [Region],
    map: &'a [(u64, u64, u32)],
}

impl Exclude<'_> {
    /// The first excluded range that overlaps `r`, if any.
    fn hit(&self, r: Region) -> Option<Region> {
        let overlaps = |u: &Region| !u.is_empty() && u.start < r.end && u.end > r.start;
        if let Some(u) = self.in_use.iter().chain(self.planned).find(|u| overlaps(u)) {
            return Some(*u);
        }
        self.map
            .iter()
            .filter(|e| e.2 != RAM)
            .filter_map(|&(a, n, _)| Region::at(a, n))
            .find(overlaps)
    }
}

/// Pushes what is left of `r` once every excluded range is cut out.
fn cut(r: Region, ex: &Exclude<'_>, out: &mut Plan) {
    match ex.hit(r) {
        None => {
            if let Some(start) = align_up(r.start) {
                let end = align_down(r.end);
                if start < end {
                    out.push(Region { start, end });
                }
            }
        }
        Some(u) => {
            if u.start > r.start {
                cut(
                    Region {
                        start: r.start,
                        end: u.start,
                    },
                    ex,
                    out,
                );
            }
            if u.end < r.end {
                cut(
                    Region {
                        start: u.end,
                        end: r.end,
                    },
                    ex,
                    out,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB4: u64 = 1 << 32;

    fn reach(start: u64) -> Region {
        Region { start, end: GIB4 }
    }

    #[test]
    fn a_typical_pvh_map_gives_the_ram_above_the_image() {
        // what Xen gives a memory=16 PVH guest: low RAM, then RAM from
        // 1 MiB, the special pages reserved near 4 GiB
        let map = [
            (0, 0xa0000, RAM),
            (0x100000, 15 * MIB, RAM),
            (0xfc000000, 0x1000000, 2),
        ];
        let p = plan(&map, reach(0x1a1000), &[]);
        assert_eq!(
            p.regions(),
            &[Region {
                start: 0x1a1000,
                end: 16 * MIB
            }]
        );
        assert_eq!(p.total(), 16 * MIB - 0x1a1000);
    }

    #[test]
    fn what_the_loader_placed_is_cut_out_and_pieces_are_whole_pages() {
        let map = [(MIB, 63 * MIB, RAM)];
        let start_info = Region::at(0x200010, 56).unwrap();
        let cmdline = Region::at(0x200100, 30).unwrap();
        let module = Region::at(40 * MIB + 5, 3 * PAGE).unwrap();
        let p = plan(&map, reach(0x1a1000), &[start_info, cmdline, module]);
        assert_eq!(
            p.regions(),
            &[
                Region {
                    start: 0x1a1000,
                    end: 0x200000
                },
                Region {
                    start: 0x201000,
                    end: 40 * MIB
                },
                Region {
                    start: 40 * MIB + 4 * PAGE,
                    end: 64 * MIB
                },
            ]
        );
        for r in p.regions() {
            assert_eq!(r.start % PAGE, 0);
            assert_eq!(r.end % PAGE, 0);
            for u in [start_info, cmdline, module] {
                assert!(u.end <= r.start || u.start >= r.end, "{r:?} overlaps {u:?}");
            }
        }
        assert_eq!(p.largest().unwrap().start, 0x201000);
    }

    #[test]
    fn nothing_above_the_reach_and_no_reserved_or_overflowing_entry() {
        let map = [
            (0x100000, 8 * GIB4, RAM),        // clipped at 4 GiB
            (u64::MAX - PAGE, 2 * PAGE, RAM), // overflows: skipped
            (2 * MIB, MIB, 2),                // reserved, inside the RAM: it wins
            (5 * GIB4, GIB4, RAM),            // entirely above
        ];
        let p = plan(&map, reach(2 * MIB), &[]);
        assert_eq!(
            p.regions(),
            &[Region {
                start: 3 * MIB,
                end: GIB4
            }]
        );
    }

    #[test]
    fn no_ram_no_region_and_tiny_pieces_vanish() {
        assert_eq!(plan(&[], reach(MIB), &[]).regions(), &[]);
        let p = plan(&[(MIB, 100, RAM), (3 * MIB + 1, PAGE, RAM)], reach(0), &[]);
        assert_eq!(p.regions(), &[], "less than one whole page each");
        assert!(p.largest().is_none());
    }

    #[test]
    fn overlapping_or_repeated_ram_entries_count_once_and_reserved_wins() {
        let map = [
            (MIB, 8 * MIB, RAM),
            (4 * MIB, 8 * MIB, RAM), // overlaps the first
            (MIB, 8 * MIB, RAM),     // repeats it
            (6 * MIB, MIB, 2),       // reserved inside both
        ];
        let p = plan(&map, reach(MIB), &[]);
        assert_eq!(
            p.regions(),
            &[
                Region {
                    start: MIB,
                    end: 6 * MIB
                },
                Region {
                    start: 7 * MIB,
                    end: 9 * MIB
                },
                Region {
                    start: 9 * MIB,
                    end: 12 * MIB
                },
            ]
        );
        assert_eq!(p.total(), 10 * MIB);
        for (i, a) in p.regions().iter().enumerate() {
            for b in &p.regions()[i + 1..] {
                assert!(a.end <= b.start || b.end <= a.start, "{a:?} overlaps {b:?}");
            }
        }
    }

    /// Random maps (overlapping, repeated, unsorted, reserved inside RAM)
    /// and loader ranges: every region is page-aligned, inside the reach
    /// and some RAM entry, disjoint from the others, from every loader
    /// range and from every non-RAM entry.
    #[test]
    fn random_maps_keep_every_invariant() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..5000 {
            let mut map = [(0u64, 0u64, 0u32); 6];
            for e in map.iter_mut() {
                *e = (
                    rnd(64) * MIB / 4 + rnd(3) * 100,
                    rnd(32) * MIB / 2 + rnd(2) * 7,
                    if rnd(4) == 0 { 2 } else { RAM },
                );
            }
            let in_use = [Region::at(rnd(64) * MIB / 4, rnd(4) * PAGE + rnd(100)).unwrap(); 2];
            let reach = Region {
                start: rnd(8) * MIB / 2 + 3,
                end: (40 + rnd(30)) * MIB,
            };
            let p = plan(&map, reach, &in_use);
            let rs = p.regions();
            for (i, r) in rs.iter().enumerate() {
                assert!(
                    r.start < r.end && r.start % PAGE == 0 && r.end % PAGE == 0,
                    "{r:?}"
                );
                assert!(
                    r.start >= reach.start && r.end <= reach.end,
                    "{r:?} outside {reach:?}"
                );
                let over = |a: u64, b: u64| a < r.end && b > r.start;
                assert!(
                    map.iter()
                        .any(|&(a, n, t)| t == RAM && a <= r.start && a + n >= r.end),
                    "{r:?} in no RAM entry of {map:?}"
                );
                for &(a, n, t) in &map {
                    assert!(
                        t == RAM || n == 0 || !over(a, a + n),
                        "{r:?} overlaps reserved {a:#x}+{n:#x}"
                    );
                }
                for u in &in_use {
                    assert!(
                        u.is_empty() || !over(u.start, u.end),
                        "{r:?} overlaps {u:?}"
                    );
                }
                for q in &rs[i + 1..] {
                    assert!(!over(q.start, q.end), "{r:?} overlaps {q:?}");
                }
            }
        }
    }

    #[test]
    fn a_map_of_many_entries_keeps_the_first_max_regions() {
        let map: [(u64, u64, u32); MAX_REGIONS + 4] =
            core::array::from_fn(|i| ((i as u64 + 1) * MIB, PAGE, RAM));
        let p = plan(&map, reach(0), &[]);
        assert_eq!(p.regions().len(), MAX_REGIONS);
        assert_eq!(p.regions()[0].start, MIB);
    }
}
