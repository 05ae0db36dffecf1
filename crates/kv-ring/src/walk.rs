//! Walking the ring clockwise to collect a preference list.

use kv_core::{Token, TokenRange};

/// The range owned by the virtual node at `index` of sorted `tokens`: from
/// the previous token (exclusive, wrapping) to its own.
pub(crate) fn vnode_range(tokens: &[u64], index: usize) -> TokenRange {
    let end = tokens[index];
    let start = if index == 0 {
        tokens[tokens.len() - 1]
    } else {
        tokens[index - 1]
    };
    TokenRange::new(Token(start), Token(end))
}

/// The zones of the ring's members, for zone-aware walks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Zones<'a> {
    /// Each member's zone index (`None`: no zone, which counts as one zone).
    pub(crate) of: &'a [Option<u16>],
    /// How many distinct zones the members fall into; at most one means
    /// walks ignore zones.
    pub(crate) slots: usize,
}

/// The first `want` distinct owners clockwise from vnode index `start`
/// (every owner if there are fewer), as member indices. With zones, nodes
/// of zones not yet used come first; nodes skipped because their zone was
/// used fill the list afterwards, in clockwise order.
pub(crate) fn walk(
    owners: &[u32],
    zones: Zones<'_>,
    start: usize,
    want: usize,
    out: &mut Vec<u32>,
) {
    if zones.slots <= 1 {
        walk_distinct(owners, start, want, out);
    } else {
        walk_zoned(owners, zones, start, want, out);
    }
}

/// [`walk`] without zones.
pub(crate) fn walk_distinct(owners: &[u32], start: usize, want: usize, out: &mut Vec<u32>) {
    out.clear();
    let len = owners.len();
    let mut i = start;
    for _ in 0..len {
        if out.len() == want {
            return;
        }
        let owner = owners[i];
        if !out.contains(&owner) {
            out.push(owner);
        }
        i += 1;
        if i == len {
            i = 0;
        }
    }
}

fn walk_zoned(owners: &[u32], zones: Zones<'_>, start: usize, want: usize, out: &mut Vec<u32>) {
    out.clear();
    let len = owners.len();
    let mut used_zones: Vec<Option<u16>> = Vec::with_capacity(want.min(zones.slots));
    let mut deferred: Vec<u32> = Vec::new();
    let mut i = start;
    let mut steps = 0;
    while steps < len && out.len() < want && used_zones.len() < zones.slots {
        let owner = owners[i];
        if !out.contains(&owner) && !deferred.contains(&owner) {
            let zone = zones.of[owner as usize];
            if used_zones.contains(&zone) {
                deferred.push(owner);
            } else {
                used_zones.push(zone);
                out.push(owner);
            }
        }
        i = if i + 1 == len { 0 } else { i + 1 };
        steps += 1;
    }
    for owner in deferred {
        if out.len() == want {
            return;
        }
        out.push(owner);
    }
    // Every zone is used: continue with any node not yet listed.
    let mut extra = 0;
    while out.len() < want && extra < len {
        let owner = owners[i];
        if !out.contains(&owner) {
            out.push(owner);
        }
        i = if i + 1 == len { 0 } else { i + 1 };
        extra += 1;
    }
}

/// The first vnode index of the ranges whose walk of `want` nodes can reach
/// index `v`: going back from `v`, stop once the ranges passed hold `want`
/// distinct nodes (and, with zones, `min(want, zones)` distinct zones),
/// since a walk through all of them is complete before `v`.
pub(crate) fn reach_start(owners: &[u32], zones: Zones<'_>, v: usize, want: usize) -> usize {
    let len = owners.len();
    let zone_goal = if zones.slots > 1 {
        want.min(zones.slots)
    } else {
        0
    };
    let mut nodes: Vec<u32> = Vec::with_capacity(want);
    let mut seen_zones: Vec<Option<u16>> = Vec::new();
    let mut start = v;
    for back in 1..len {
        let r = (v + len - back) % len;
        let owner = owners[r];
        if !nodes.contains(&owner) {
            nodes.push(owner);
            if zone_goal > 0 {
                let zone = zones.of[owner as usize];
                if !seen_zones.contains(&zone) {
                    seen_zones.push(zone);
                }
            }
        }
        if nodes.len() >= want && seen_zones.len() >= zone_goal {
            break;
        }
        start = r;
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ZONES: Zones<'static> = Zones { of: &[], slots: 0 };

    #[test]
    fn distinct_walk_skips_repeats_and_wraps() {
        let owners = [0, 0, 1, 0, 2];
        let mut out = Vec::new();
        walk(&owners, NO_ZONES, 3, 3, &mut out);
        assert_eq!(out, [0, 2, 1]);
        walk(&owners, NO_ZONES, 0, 9, &mut out);
        assert_eq!(out, [0, 1, 2]);
    }

    #[test]
    fn zoned_walk_prefers_new_zones() {
        // Members 0 and 1 in zone 0, member 2 in zone 1.
        let of = [Some(0), Some(0), Some(1)];
        let zones = Zones { of: &of, slots: 2 };
        let owners = [0, 1, 2];
        let mut out = Vec::new();
        walk(&owners, zones, 0, 2, &mut out);
        assert_eq!(out, [0, 2]);
        walk(&owners, zones, 0, 3, &mut out);
        assert_eq!(out, [0, 2, 1]);
    }

    #[test]
    fn reach_start_covers_every_walk_that_reaches_v() {
        let owners = [0, 1, 1, 2, 3, 0, 4, 2, 1];
        for want in 1..5 {
            for v in 0..owners.len() {
                let start = reach_start(&owners, NO_ZONES, v, want);
                // Every range outside [start, v] completes before v.
                let len = owners.len();
                let inside = |r: usize| (r + len - start) % len <= (v + len - start) % len;
                for r in (0..len).filter(|&r| !inside(r)) {
                    let mut seen = Vec::new();
                    let mut i = r;
                    while i != v && seen.len() < want {
                        if !seen.contains(&owners[i]) {
                            seen.push(owners[i]);
                        }
                        i = (i + 1) % len;
                    }
                    assert_eq!(seen.len(), want, "range {r} reaches {v} (want {want})");
                }
            }
        }
    }
}
