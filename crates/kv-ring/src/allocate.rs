//! Token allocation: where a joining node's virtual nodes go, and who takes
//! over a leaving node's ranges.
//!
//! Random tokens leave the most loaded of 100 nodes with 15-25% more than
//! its share even at 150 virtual nodes per node. Here a joining node instead
//! computes every member's excess over its new weighted target and takes
//! exactly that excess from each member (so primary shares stay within
//! rounding of the target and a join moves exactly the new node's share, all
//! of it to the new node). Each donor's excess is cut in equal pieces, so
//! the new node's ranges come out even. Which of the donor's ranges to cut,
//! and whether to take its head or its tail, is chosen greedily to even out
//! the load replicated over N nodes (after Cassandra's replica-aware
//! allocation). A leaving node's ranges go, largest first, to whichever
//! remaining node is furthest below its target. All of it is a deterministic
//! function of the ring and the node, so every process that replays the
//! same joins and leaves gets the same tokens.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use kv_core::NodeId;

use crate::hash::mix64;
use crate::walk::{self, Zones};

/// The ring's size in tokens.
const RING: u128 = 1 << 64;

/// The largest part of one range a joining node takes.
const MAX_CUT: f64 = 0.9;

/// Candidate ranges per cut a donor gives.
const CANDIDATES_PER_CUT: usize = 4;

/// How much more a primary-share deviation weighs than a replicated one.
const OWN_WEIGHT: f64 = 4.0;

/// A virtual node's range in allocation terms.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Exclusive start token.
    start: u64,
    /// Number of tokens.
    width: u128,
}

/// One step of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The joining node owns a new token (it takes the head of a range).
    New(u64),
    /// The joining node takes over the existing token `end` and so the tail
    /// of that range; the previous owner gets the new token `cut`, keeping
    /// the head.
    Tail {
        /// The existing token the joining node takes.
        end: u64,
        /// The new token the previous owner gets.
        cut: u64,
    },
}

/// Which end of a range the joining node takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Head,
    Tail,
}

/// What allocation reads of a ring: its tokens, who owns each, and each
/// member's weight and zone. The ring lends it; allocation answers with
/// placements or reassignments the ring applies, so neither module reaches
/// into the other.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout<'a> {
    /// Sorted ascending, unique.
    pub(crate) tokens: &'a [u64],
    /// `owners[i]` owns `tokens[i]`: a member index.
    pub(crate) owners: &'a [u32],
    /// Each member's weight, by member index.
    pub(crate) weights: &'a [u32],
    /// Each member's zone index, by member index.
    pub(crate) member_zones: &'a [Option<u16>],
    /// The zone names the indices refer to.
    pub(crate) zones: &'a [String],
}

impl Layout<'_> {
    fn members(&self) -> usize {
        self.weights.len()
    }

    /// Tokens in the range of the vnode at `v`.
    fn width(&self, v: usize) -> u128 {
        walk::vnode_range(self.tokens, v).width()
    }
}

/// Each member's target share in tokens, and the target of a node of
/// `extra_weight` joining.
fn targets(layout: &Layout<'_>, extra_weight: u32) -> (Vec<f64>, f64) {
    let total: u64 =
        layout.weights.iter().map(|&w| u64::from(w)).sum::<u64>() + u64::from(extra_weight);
    let per_weight = RING as f64 / total as f64;
    let targets = layout
        .weights
        .iter()
        .map(|&w| f64::from(w) * per_weight)
        .collect();
    (targets, f64::from(extra_weight) * per_weight)
}

/// Splits `count` items in proportion to `weights` (largest remainder),
/// each share at most its `caps` entry.
fn apportion(count: usize, weights: &[f64], caps: &[usize]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || count == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| w / total * count as f64).collect();
    let mut shares: Vec<usize> = exact
        .iter()
        .zip(caps)
        .map(|(e, &cap)| (e.floor() as usize).min(cap))
        .collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest fractional part first; index breaks ties deterministically.
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    let mut left = count.saturating_sub(shares.iter().sum());
    while left > 0 {
        let before = left;
        for &i in &order {
            if left == 0 {
                break;
            }
            if shares[i] < caps[i] {
                shares[i] += 1;
                left -= 1;
            }
        }
        if left == before {
            break;
        }
    }
    shares
}

/// A join in progress: the ring as flat vectors, with each member's primary
/// and replicated load kept exact as tokens are placed.
struct Join {
    tokens: Vec<u64>,
    owners: Vec<u32>,
    /// Per member, then the joining node last: target primary share.
    target: Vec<f64>,
    own: Vec<f64>,
    rep: Vec<f64>,
    /// Replicas the replicated balance is measured over; 0 to ignore it.
    replicas: usize,
    joiner: u32,
    /// Zone index per member, then the joining node's.
    zone_of: Vec<Option<u16>>,
    /// Distinct zones with the joining node (0 or 1: zones play no part).
    zone_slots: usize,
}

impl Join {
    fn new(layout: &Layout<'_>, weight: u32, zone: Option<&str>, replicas: usize) -> Self {
        let (mut target, need) = targets(layout, weight);
        target.push(need);
        let members = layout.members();
        let mut zone_of = layout.member_zones.to_vec();
        zone_of.push(zone.map(|z| {
            layout
                .zones
                .iter()
                .position(|known| known == z)
                .unwrap_or(layout.zones.len()) as u16
        }));
        let mut named: Vec<u16> = zone_of.iter().flatten().copied().collect();
        named.sort_unstable();
        named.dedup();
        let zone_slots = if named.is_empty() {
            0
        } else {
            named.len() + usize::from(zone_of.iter().any(Option::is_none))
        };
        let mut join = Join {
            tokens: layout.tokens.to_vec(),
            owners: layout.owners.to_vec(),
            own: vec![0.0; members + 1],
            rep: vec![0.0; members + 1],
            target,
            replicas,
            joiner: members as u32,
            zone_of,
            zone_slots,
        };
        for v in 0..join.tokens.len() {
            let len = join.len_at(v);
            join.own[join.owners[v] as usize] += len;
        }
        if replicas > 0 {
            let last = join.tokens.len() - 1;
            join.account(0, last, 1.0, &mut Vec::with_capacity(replicas));
        }
        join
    }

    fn len_at(&self, i: usize) -> f64 {
        let t = self.tokens.len();
        if t == 1 {
            return RING as f64;
        }
        let prev = self.tokens[(i + t - 1) % t];
        self.tokens[i].wrapping_sub(prev) as f64
    }

    fn owner_at(&self, v: usize, offset: isize) -> u32 {
        let t = self.tokens.len() as isize;
        self.owners[(v as isize + offset).rem_euclid(t) as usize]
    }

    fn zones(&self) -> Zones<'_> {
        Zones {
            of: &self.zone_of,
            slots: self.zone_slots,
        }
    }

    /// First index of the ranges whose replica sets can change when the
    /// range at `v` is split.
    fn window_start(&self, v: usize) -> usize {
        walk::reach_start(&self.owners, self.zones(), v, self.replicas)
    }

    /// Adds `sign` times the replicated contribution of ranges
    /// `first ..= last` (indices taken modulo the ring).
    fn account(&mut self, first: usize, last: usize, sign: f64, scratch: &mut Vec<u32>) {
        let t = self.tokens.len();
        let count = (last + t - first) % t + 1;
        for step in 0..count {
            let r = (first + step) % t;
            walk::walk(&self.owners, self.zones(), r, self.replicas, scratch);
            let len = self.len_at(r);
            for &m in scratch.iter() {
                self.rep[m as usize] += sign * len;
            }
        }
    }

    /// The cost change of the joining node taking `c` tokens from one end
    /// of the range at `v`, modelling the owners around `v` as distinct.
    ///
    /// With `p_k` the k-th range before `v` (length `l_k`) and `s_k` the
    /// owner k places after (`s_0` the donor), a head cut gives the joiner
    /// `c + l_1 + .. + l_{N-1}` of replicated load, takes `l_k` from
    /// `s_{N-1-k}` and `c` from `s_{N-1}`; a tail cut gives it
    /// `L + l_1 + .. + l_{N-2}`, takes `c` from the donor, `l_k` from
    /// `s_{N-1-k}` (k < N-1) and `L - c` from `s_{N-1}`.
    fn cost_change(&self, v: usize, c: f64, side: Side) -> f64 {
        let n = self.replicas;
        let t = self.tokens.len();
        let mut deltas: [(u32, f64, f64); 16] = [(u32::MAX, 0.0, 0.0); 16];
        let mut used = 0;
        let mut add = |node: u32, own: f64, rep: f64| {
            if let Some(d) = deltas[..used].iter_mut().find(|d| d.0 == node) {
                d.1 += own;
                d.2 += rep;
            } else if used < deltas.len() {
                deltas[used] = (node, own, rep);
                used += 1;
            }
        };
        add(self.joiner, c, 0.0);
        add(self.owner_at(v, 0), -c, 0.0);
        if n > 1 {
            let l = |k: usize| self.len_at((v + t - k % t) % t);
            match side {
                Side::Head => {
                    let mut gained = c;
                    for k in 1..n {
                        gained += l(k);
                        add(self.owner_at(v, (n - 1 - k) as isize), 0.0, -l(k));
                    }
                    add(self.joiner, 0.0, gained);
                    add(self.owner_at(v, (n - 1) as isize), 0.0, -c);
                }
                Side::Tail => {
                    let len = self.len_at(v);
                    let mut gained = len;
                    for k in 1..n - 1 {
                        gained += l(k);
                        add(self.owner_at(v, (n - 1 - k) as isize), 0.0, -l(k));
                    }
                    add(self.joiner, 0.0, gained);
                    add(self.owner_at(v, 0), 0.0, -c);
                    add(self.owner_at(v, (n - 1) as isize), 0.0, -(len - c));
                }
            }
        }
        let replicas = n.max(1) as f64;
        deltas[..used]
            .iter()
            .map(|&(node, d_own, d_rep)| {
                let m = node as usize;
                let target = self.target[m];
                let own = self.own[m] - target;
                let rep = self.rep[m] - replicas * target;
                let own_change = (own + d_own).powi(2) - own.powi(2);
                let rep_change = if n > 1 {
                    ((rep + d_rep).powi(2) - rep.powi(2)) / replicas
                } else {
                    0.0
                };
                (OWN_WEIGHT * own_change + rep_change) / target
            })
            .sum()
    }

    /// Whether [`cost_change`](Self::cost_change) is exact at `v`: the
    /// owners from `N` places before `v` to `N - 1` places after are
    /// distinct and none is the joining node (so exactly the `N - 1` ranges
    /// before `v` have walks that reach it).
    fn model_applies(&self, v: usize) -> bool {
        if self.zone_slots > 1 {
            return false;
        }
        let n = self.replicas as isize;
        let mut seen: [u32; 32] = [u32::MAX; 32];
        let mut used = 0;
        for k in -n..n {
            let owner = self.owner_at(v, k);
            if owner == self.joiner || seen[..used].contains(&owner) || used == seen.len() {
                return false;
            }
            seen[used] = owner;
            used += 1;
        }
        used < self.tokens.len()
    }

    /// The total cost: squared deviations of primary and replicated load.
    fn total_cost(&self) -> f64 {
        let n = self.replicas as f64;
        (0..self.own.len())
            .map(|m| {
                let t = self.target[m];
                let own = self.own[m] - t;
                let rep = if self.replicas > 1 {
                    (self.rep[m] - n * t).powi(2) / n
                } else {
                    0.0
                };
                (OWN_WEIGHT * own * own + rep) / t
            })
            .sum()
    }

    /// The exact cost change of a cut, by making it and undoing it.
    fn measured_cost_change(
        &mut self,
        v: usize,
        c: u64,
        side: Side,
        scratch: &mut Vec<u32>,
    ) -> f64 {
        let before = self.total_cost();
        let (own, rep) = (self.own.clone(), self.rep.clone());
        let donor = self.owners[v];
        let (placement, _) = self.apply(v, c, side, scratch);
        let after = self.total_cost();
        match placement {
            Placement::New(token) => {
                let at = self.tokens.partition_point(|&x| x < token);
                self.tokens.remove(at);
                self.owners.remove(at);
            }
            Placement::Tail { end, cut } => {
                let at = self.tokens.partition_point(|&x| x < cut);
                self.tokens.remove(at);
                self.owners.remove(at);
                let at = self.tokens.partition_point(|&x| x < end);
                self.owners[at] = donor;
            }
        }
        self.own = own;
        self.rep = rep;
        after - before
    }

    /// Gives the joining node `c` tokens from one end of the range at `v`,
    /// keeping every load exact. Returns the placement and the joiner's
    /// new range.
    fn apply(&mut self, v: usize, c: u64, side: Side, scratch: &mut Vec<u32>) -> (Placement, Span) {
        let t = self.tokens.len();
        let start = self.tokens[(v + t - 1) % t];
        let end = self.tokens[v];
        let donor = self.owners[v];
        let first_token = if self.replicas > 0 {
            let first = self.window_start(v);
            self.account(first, v, -1.0, scratch);
            (first != v).then_some(self.tokens[first])
        } else {
            None
        };
        let (inserted, placement, span) = match side {
            Side::Head => {
                let token = start.wrapping_add(c);
                let at = self.tokens.partition_point(|&x| x < token);
                self.tokens.insert(at, token);
                self.owners.insert(at, self.joiner);
                (
                    token,
                    Placement::New(token),
                    Span {
                        start,
                        width: u128::from(c),
                    },
                )
            }
            Side::Tail => {
                let cut = end.wrapping_sub(c);
                self.owners[v] = self.joiner;
                let at = self.tokens.partition_point(|&x| x < cut);
                self.tokens.insert(at, cut);
                self.owners.insert(at, donor);
                (
                    cut,
                    Placement::Tail { end, cut },
                    Span {
                        start: cut,
                        width: u128::from(c),
                    },
                )
            }
        };
        self.own[self.joiner as usize] += c as f64;
        self.own[donor as usize] -= c as f64;
        if self.replicas > 0 {
            let index = |x: u64| self.tokens.partition_point(|&y| y < x);
            let first = index(first_token.unwrap_or(inserted));
            let last = index(end);
            self.account(first, last, 1.0, scratch);
        }
        (placement, span)
    }
}

/// The placements of node `id` of `weight` in `zone` joining the ring laid
/// out as `layout` with `count` vnodes, balancing replicated load over
/// `replicas` nodes (0 or 1: primary only).
pub(crate) fn balanced_tokens(
    layout: &Layout<'_>,
    (id, weight, zone): (NodeId, u32, Option<&str>),
    count: usize,
    replicas: usize,
) -> Vec<Placement> {
    if layout.tokens.is_empty() {
        return evenly_spaced(id, count)
            .into_iter()
            .map(Placement::New)
            .collect();
    }
    let members = layout.members();
    // With as many replicas as nodes every node replicates everything.
    let replicas = if replicas <= 1 || replicas > members {
        0
    } else {
        replicas
    };
    let mut join = Join::new(layout, weight, zone, replicas);
    let need = join.target[members];

    // Donors: members above their new target, most loaded first, at most
    // one per new token; each gives its excess, scaled so they sum to need.
    let mut donors: Vec<(usize, f64)> = (0..members)
        .map(|m| (m, join.own[m] - join.target[m]))
        .filter(|&(_, excess)| excess > 0.0)
        .collect();
    donors.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    donors.truncate(count);
    let excess_sum: f64 = donors.iter().map(|d| d.1).sum();
    if excess_sum <= 0.0 {
        return Vec::new();
    }
    let quotas: Vec<f64> = donors.iter().map(|d| d.1 * need / excess_sum).collect();
    let mut ranges: Vec<Vec<(u64, u64)>> = vec![Vec::new(); members];
    for v in 0..join.tokens.len() {
        ranges[join.owners[v] as usize].push((join.len_at(v) as u64, join.tokens[v]));
    }
    let caps: Vec<usize> = donors.iter().map(|d| ranges[d.0].len()).collect();
    let cuts = apportion(count, &quotas, &caps);

    // Per donor: the size of each cut, cuts left, and candidate ranges
    // (its largest, named by end token, which is stable under insertion).
    struct Donor {
        /// Tokens this donor still owes the joining node.
        owed: f64,
        left: usize,
        candidates: Vec<u64>,
    }
    let mut plan: Vec<Donor> = Vec::with_capacity(donors.len());
    for ((&(member, _), &quota), &k) in donors.iter().zip(&quotas).zip(&cuts) {
        if k == 0 {
            continue;
        }
        let mut own = std::mem::take(&mut ranges[member]);
        own.sort_unstable_by(|a, b| b.cmp(a));
        let keep = (k * CANDIDATES_PER_CUT).max(k + 2).min(own.len());
        plan.push(Donor {
            owed: quota,
            left: k,
            candidates: own[..keep].iter().map(|&(_, end)| end).collect(),
        });
    }

    let mut scratch = Vec::with_capacity(replicas);
    let mut placements = Vec::with_capacity(count);
    let mut taken = Vec::with_capacity(count);
    // Round-robin over donors, each cut going to the donor's best
    // candidate under the current loads.
    let rounds = plan.iter().map(|d| d.left).max().unwrap_or(0);
    for _ in 0..rounds {
        for donor in &mut plan {
            if donor.left == 0 {
                continue;
            }
            // Equal cuts; a cut a small range could not give in full is
            // made up by the donor's later cuts.
            let cut = donor.owed / donor.left as f64;
            donor.left -= 1;
            let mut best: Option<(f64, usize, u64, Side)> = None;
            for i in 0..donor.candidates.len() {
                let end = donor.candidates[i];
                let v = join.tokens.partition_point(|&x| x < end);
                let len = join.len_at(v);
                let c = cut.min(len * MAX_CUT).floor();
                if c < 1.0 {
                    continue;
                }
                let exact = replicas > 0 && !join.model_applies(v);
                for side in [Side::Head, Side::Tail] {
                    let cost = if exact {
                        join.measured_cost_change(v, c as u64, side, &mut scratch)
                    } else if replicas > 0 {
                        join.cost_change(v, c, side)
                    } else if side == Side::Head {
                        // Primary only: any range will do; the largest keeps
                        // range sizes even.
                        -len
                    } else {
                        continue;
                    };
                    if best.is_none_or(|b| cost < b.0) {
                        best = Some((cost, i, c as u64, side));
                    }
                }
            }
            let Some((_, i, c, side)) = best else {
                continue;
            };
            let end = donor.candidates.swap_remove(i);
            donor.owed -= c as f64;
            let v = join.tokens.partition_point(|&x| x < end);
            let (placement, span) = join.apply(v, c, side, &mut scratch);
            placements.push(placement);
            taken.push(span);
        }
    }
    let extra = count.saturating_sub(placements.len());
    placements.extend(split_own(taken, extra).into_iter().map(Placement::New));
    placements
}

/// `count` tokens evenly spaced around the ring, rotated by the node id so
/// that independent single-node rings do not all start at zero.
fn evenly_spaced(id: NodeId, count: usize) -> Vec<u64> {
    let step = RING / count.max(1) as u128;
    let offset = u128::from(mix64(id.0));
    (0..count as u128)
        .map(|i| ((offset + i * step) % RING) as u64)
        .collect()
}

/// Places `count` more tokens by halving the largest of the joining node's
/// own new ranges (used when donors have too few ranges to take from, for
/// example when a heavy node joins a small ring). Ownership is unchanged.
fn split_own(mut own: Vec<Span>, count: usize) -> Vec<u64> {
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        let Some((at, _)) = own
            .iter()
            .enumerate()
            .filter(|(_, s)| s.width >= 2)
            .max_by_key(|(_, s)| (s.width, Reverse(s.start)))
        else {
            break;
        };
        let span = own[at];
        let half = span.width / 2;
        let token = span.start.wrapping_add(half as u64);
        tokens.push(token);
        own[at].width = half;
        own.push(Span {
            start: token,
            width: span.width - half,
        });
    }
    tokens
}

/// Reassigns the vnodes of member `leaving` to the other members, largest
/// first, each to the member furthest below its target: the new owner of
/// each of its vnodes, as (vnode index, member index).
///
/// Vnodes of the leaver that one replica walk of up to `replicas` nodes can
/// span (fewer than `replicas - 1` other owners between them) go to the same
/// member as a group: two different recipients there would make the walk
/// meet one distinct node more and drop a replica that is not leaving. With
/// that, for every replication factor up to `replicas`, only the leaving
/// node's ranges change hands.
pub(crate) fn hand_over(layout: &Layout<'_>, leaving: u32, replicas: usize) -> Vec<(usize, u32)> {
    let leaving_weight = layout.weights[leaving as usize];
    let total_weight: f64 = layout.weights.iter().map(|&w| f64::from(w)).sum();
    let per_weight = RING as f64 / (total_weight - f64::from(leaving_weight));
    let mut owned = vec![0u128; layout.members()];
    for v in 0..layout.tokens.len() {
        owned[layout.owners[v] as usize] += layout.width(v);
    }
    // Deficit in tokens, as an integer so the heap order is total.
    let mut heap: BinaryHeap<(i128, Reverse<u32>)> = layout
        .weights
        .iter()
        .enumerate()
        .filter(|&(i, _)| i as u32 != leaving)
        .map(|(i, &w)| {
            let target = f64::from(w) * per_weight;
            (target as i128 - owned[i] as i128, Reverse(i as u32))
        })
        .collect();

    let groups = leaver_groups(layout.owners, leaving, replicas.max(1));
    let mut sized: Vec<(u128, u64, Vec<usize>)> = groups
        .into_iter()
        .map(|g| {
            let width = g.iter().map(|&v| layout.width(v)).sum();
            (width, layout.tokens[g[0]], g)
        })
        .collect();
    sized.sort_by_key(|&(width, first, _)| (Reverse(width), first));
    let mut moves = Vec::new();
    for (width, _, group) in sized {
        let Some((deficit, Reverse(member))) = heap.pop() else {
            break;
        };
        moves.extend(group.into_iter().map(|v| (v, member)));
        heap.push((deficit - width as i128, Reverse(member)));
    }
    moves
}

/// The leaver's vnodes grouped so that vnodes one walk of `replicas`
/// distinct nodes can span share a group.
fn leaver_groups(owners: &[u32], leaving: u32, replicas: usize) -> Vec<Vec<usize>> {
    let len = owners.len();
    let positions: Vec<usize> = (0..len).filter(|&v| owners[v] == leaving).collect();
    if positions.is_empty() {
        return Vec::new();
    }
    // Does a walk starting at leaver vnode `a` reach leaver vnode `b`
    // (the next one clockwise) before meeting `replicas` distinct nodes?
    let linked = |a: usize, b: usize| {
        let mut seen: Vec<u32> = Vec::with_capacity(replicas);
        let mut v = (a + 1) % len;
        while v != b {
            let owner = owners[v];
            if !seen.contains(&owner) {
                seen.push(owner);
                if seen.len() + 1 >= replicas {
                    return false;
                }
            }
            v = (v + 1) % len;
        }
        true
    };
    let count = positions.len();
    let links: Vec<bool> = (0..count)
        .map(|i| replicas > 1 && linked(positions[i], positions[(i + 1) % count]))
        .collect();
    // Start after a break in the chain so no group straddles the start.
    let Some(break_at) = links.iter().position(|&l| !l) else {
        return vec![positions];
    };
    let mut groups = Vec::new();
    let mut current = Vec::new();
    for step in 1..=count {
        let i = (break_at + step) % count;
        current.push(positions[i]);
        if !links[i] {
            groups.push(std::mem::take(&mut current));
        }
    }
    groups
}

/// Classic consistent hashing: tokens derived from (node, index) hashes,
/// skipping any that collide with a token already in the ring.
pub(crate) fn hashed_tokens(layout: &Layout<'_>, id: NodeId, count: usize) -> Vec<u64> {
    let mut taken: std::collections::HashSet<u64> = layout.tokens.iter().copied().collect();
    let mut tokens = Vec::with_capacity(count);
    let mut i = 0u64;
    while tokens.len() < count {
        let token = mix64(mix64(id.0) ^ i);
        i += 1;
        if taken.insert(token) {
            tokens.push(token);
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_follows_weights_and_caps() {
        assert_eq!(apportion(10, &[1.0, 1.0], &[10, 10]), [5, 5]);
        assert_eq!(apportion(10, &[3.0, 1.0], &[10, 10]), [8, 2]);
        // A cap pushes the rest to the other.
        assert_eq!(apportion(10, &[3.0, 1.0], &[4, 10]), [4, 6]);
        assert_eq!(apportion(3, &[1.0; 4], &[5; 4]).iter().sum::<usize>(), 3);
    }

    fn cost(join: &Join) -> f64 {
        let n = join.replicas as f64;
        (0..join.own.len())
            .map(|m| {
                let t = join.target[m];
                let d_own = join.own[m] - t;
                let d_rep = join.rep[m] - n * t;
                (OWN_WEIGHT * d_own * d_own + d_rep * d_rep / n) / t
            })
            .sum()
    }

    #[test]
    fn modelled_cost_change_matches_the_exact_one() {
        for replicas in [2, 3, 4] {
            // 30 nodes of 20 hashed tokens each.
            let mut pairs: Vec<(u64, u32)> = (0..30u32)
                .flat_map(|m| (0..20u64).map(move |i| (mix64(mix64(u64::from(m)) ^ i), m)))
                .collect();
            pairs.sort_unstable();
            pairs.dedup_by_key(|p| p.0);
            let tokens: Vec<u64> = pairs.iter().map(|p| p.0).collect();
            let owners: Vec<u32> = pairs.iter().map(|p| p.1).collect();
            let ring = Layout {
                tokens: &tokens,
                owners: &owners,
                weights: &[1; 30],
                member_zones: &[None; 30],
                zones: &[],
            };
            let join = Join::new(&ring, 1, None, replicas);
            let t = join.tokens.len();
            let mut scratch = Vec::new();
            let mut checked = 0;
            for v in (0..t).step_by(13) {
                let c = (join.len_at(v) / 3.0).floor();
                for side in [Side::Head, Side::Tail] {
                    let mut after = Join::new(&ring, 1, None, replicas);
                    let before = cost(&after);
                    assert!((after.total_cost() - before).abs() <= 1e-9 * before);
                    let measured = after.measured_cost_change(v, c as u64, side, &mut scratch);
                    // Measuring leaves the state as it was.
                    assert_eq!(after.tokens, join.tokens);
                    assert_eq!(after.owners, join.owners);
                    after.apply(v, c as u64, side, &mut scratch);
                    let exact = cost(&after) - before;
                    let tolerance = 1e-6 * before.max(1.0);
                    assert!(
                        (measured - exact).abs() <= tolerance,
                        "measured {measured} exact {exact}"
                    );
                    if join.model_applies(v) {
                        let predicted = join.cost_change(v, c, side);
                        assert!(
                            (predicted - exact).abs() <= tolerance,
                            "n={replicas} v={v} {side:?}: predicted {predicted} exact {exact}"
                        );
                        checked += 1;
                    }
                }
            }
            assert!(checked > 10, "only {checked} cases checked");
        }
    }

    #[test]
    fn evenly_spaced_tokens_are_distinct_and_even() {
        let tokens = evenly_spaced(NodeId(9), 150);
        let mut sorted = tokens.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 150);
        let step = (RING / 150) as u64;
        for pair in sorted.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap == step || gap.abs_diff(step) <= 1 || gap < step * 2);
        }
    }

    #[test]
    fn split_own_keeps_tokens_inside_the_spans() {
        let own = vec![Span {
            start: 100,
            width: 1000,
        }];
        let tokens = split_own(own, 3);
        assert_eq!(tokens.len(), 3);
        assert!(tokens.iter().all(|&t| t > 100 && t < 1100));
    }
}
