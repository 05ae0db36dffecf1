//! The ring: sorted tokens, each owned by a physical node.

use std::collections::BTreeMap;

use kv_core::{NodeId, Partitioner, PartitionerError, Token, TokenRange};

use crate::allocate::{self, Layout, Placement};
use crate::error::{Result, RingError};
use crate::hash::token_of;
use crate::walk::{self, Zones};

/// Virtual nodes per unit of weight, by default (Dynamo's and Riak's order
/// of magnitude; enough for balance within a few percent).
pub const DEFAULT_VNODES: u32 = 150;

/// A physical node as the ring sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeSpec {
    /// The node.
    pub id: NodeId,
    /// Relative capacity: a node of weight 2 gets twice the virtual nodes
    /// and twice the share of a node of weight 1.
    pub weight: u32,
    /// Failure domain (rack, availability zone). Replicas of a key go to
    /// distinct zones while there are zones left.
    pub zone: Option<String>,
}

impl NodeSpec {
    /// A node of weight 1 with no zone.
    pub fn new(id: NodeId) -> Self {
        NodeSpec {
            id,
            weight: 1,
            zone: None,
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }
}

impl From<NodeId> for NodeSpec {
    fn from(id: NodeId) -> Self {
        NodeSpec::new(id)
    }
}

/// How a joining node's tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TokenStrategy {
    /// Deterministic balanced allocation: the joining node takes from each
    /// existing node exactly its excess over the new target share, cut from
    /// that node's largest ranges. Ownership stays within rounding of the
    /// weighted ideal, and a join moves only the ideal share, all of it to
    /// the new node.
    #[default]
    Balanced,
    /// Classic consistent hashing: tokens are hashes of (node, index).
    /// Kept as the baseline the balanced strategy is measured against.
    Hashed,
}

/// A member node with its index into the ring's node table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) spec: NodeSpec,
    /// Index into `zones`, or `None` without a zone.
    pub(crate) zone: Option<u16>,
}

/// Consistent hashing with virtual nodes over 64-bit SipHash tokens.
///
/// Each token is owned by a physical node; a token's virtual node owns the
/// keys from the previous token (exclusive) to itself (inclusive). The
/// preference list of a key is the first `n` distinct physical nodes met
/// clockwise from the key's token, spread across zones when zones are set.
///
/// A ring is a value: joins and leaves return a new ring
/// ([`with_node`](Self::with_node), [`without_node`](Self::without_node)),
/// and [`RingDiff`](crate::RingDiff) tells which ranges change replicas
/// between two rings. The same sequence of joins and leaves gives the same
/// ring in every process; a cluster that learns tokens from gossip instead
/// rebuilds the ring with [`from_tokens`](Self::from_tokens).
///
/// ```
/// use kv_core::{NodeId, Partitioner};
/// use kv_ring::ConsistentHashRing;
///
/// let ring = ConsistentHashRing::builder()
///     .nodes((1..=5).map(NodeId))
///     .build()?;
/// let replicas = ring.preference_list(b"cart:17", 3)?;
/// assert_eq!(replicas.len(), 3);
///
/// // A sixth node joins: only ranges that now include it change replicas.
/// let bigger = ring.with_node(NodeId(6).into())?;
/// let diff = kv_ring::RingDiff::between(&ring, &bigger, 3)?;
/// assert!(diff.moves().iter().all(|m| m.to.contains(&NodeId(6))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistentHashRing {
    pub(crate) vnodes: u32,
    pub(crate) strategy: TokenStrategy,
    /// Sorted ascending, unique.
    pub(crate) tokens: Vec<u64>,
    /// `owners[i]` owns `tokens[i]`: an index into `members`.
    pub(crate) owners: Vec<u32>,
    /// Sorted by node id.
    pub(crate) members: Vec<Member>,
    pub(crate) zones: Vec<String>,
    /// Distinct zones among members (members without a zone count as one
    /// more zone); 0 or 1 means placement ignores zones.
    pub(crate) zone_slots: usize,
    /// `members[i].zone`, flat for walks.
    pub(crate) member_zones: Vec<Option<u16>>,
    /// The replication factor the balanced strategy balances for.
    pub(crate) balance_replicas: usize,
}

/// The replication factor balanced for by default (the store's N).
pub const DEFAULT_BALANCE_REPLICAS: usize = 3;

/// Builds a [`ConsistentHashRing`] by joining nodes in the given order.
#[derive(Debug, Clone)]
pub struct RingBuilder {
    vnodes: u32,
    strategy: TokenStrategy,
    balance_replicas: usize,
    nodes: Vec<NodeSpec>,
}

impl Default for RingBuilder {
    fn default() -> Self {
        RingBuilder {
            vnodes: DEFAULT_VNODES,
            strategy: TokenStrategy::Balanced,
            balance_replicas: DEFAULT_BALANCE_REPLICAS,
            nodes: Vec::new(),
        }
    }
}

impl RingBuilder {
    /// Virtual nodes per unit of weight (150 by default).
    pub fn vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes;
        self
    }

    /// The token strategy (balanced by default).
    pub fn strategy(mut self, strategy: TokenStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The replication factor whose replicated load the balanced strategy
    /// evens out (3 by default; set it to the cluster's N).
    pub fn balance_replicas(mut self, n: usize) -> Self {
        self.balance_replicas = n;
        self
    }

    /// Adds one node (joined after those already added).
    pub fn node(mut self, node: impl Into<NodeSpec>) -> Self {
        self.nodes.push(node.into());
        self
    }

    /// Adds nodes in order.
    pub fn nodes<N: Into<NodeSpec>>(mut self, nodes: impl IntoIterator<Item = N>) -> Self {
        self.nodes.extend(nodes.into_iter().map(Into::into));
        self
    }

    /// Joins the nodes one after another. An empty node list gives an empty
    /// ring (which answers every lookup with an error).
    ///
    /// # Errors
    ///
    /// [`RingError`] for a node listed twice, a weight or vnode count of zero,
    /// or colliding tokens.
    pub fn build(self) -> Result<ConsistentHashRing> {
        let mut ring = ConsistentHashRing::empty(self.vnodes, self.strategy)?;
        ring.balance_replicas = self.balance_replicas;
        for node in self.nodes {
            ring.join(node)?;
        }
        Ok(ring)
    }
}

impl ConsistentHashRing {
    /// A builder with the defaults (150 vnodes, balanced tokens).
    pub fn builder() -> RingBuilder {
        RingBuilder::default()
    }

    /// A ring with no nodes.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroVnodes`] if `vnodes` is zero.
    pub fn empty(vnodes: u32, strategy: TokenStrategy) -> Result<Self> {
        if vnodes == 0 {
            return Err(RingError::ZeroVnodes);
        }
        Ok(ConsistentHashRing {
            vnodes,
            strategy,
            tokens: Vec::new(),
            owners: Vec::new(),
            members: Vec::new(),
            zones: Vec::new(),
            zone_slots: 0,
            member_zones: Vec::new(),
            balance_replicas: DEFAULT_BALANCE_REPLICAS,
        })
    }

    fn refresh_zone_slots(&mut self) {
        let named = self
            .members
            .iter()
            .filter_map(|m| m.zone)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let unnamed = usize::from(self.members.iter().any(|m| m.zone.is_none()));
        self.zone_slots = if named == 0 { 0 } else { named + unnamed };
        self.member_zones = self.members.iter().map(|m| m.zone).collect();
    }

    /// Rebuilds a ring from known token assignments (for example tokens
    /// learned through gossip). `vnodes` and `strategy` govern later joins.
    ///
    /// # Errors
    ///
    /// [`RingError`] if two nodes claim one token, a node is listed twice, or a
    /// weight is zero.
    pub fn from_tokens(
        vnodes: u32,
        strategy: TokenStrategy,
        assignments: impl IntoIterator<Item = (NodeSpec, Vec<Token>)>,
    ) -> Result<Self> {
        let mut ring = Self::empty(vnodes, strategy)?;
        let mut claimed: BTreeMap<u64, NodeId> = BTreeMap::new();
        let mut specs = Vec::new();
        for (spec, tokens) in assignments {
            ring.check_new(&spec)?;
            for token in tokens {
                if let Some(&first) = claimed.get(&token.0) {
                    return Err(RingError::TokenCollision {
                        token: token.0,
                        first,
                        second: spec.id,
                    });
                }
                claimed.insert(token.0, spec.id);
            }
            ring.add_member(spec.clone());
            specs.push(spec);
        }
        ring.tokens = claimed.keys().copied().collect();
        ring.owners = claimed
            .values()
            .map(|id| ring.member_index(*id).unwrap_or(0) as u32)
            .collect();
        Ok(ring)
    }

    fn check_new(&self, spec: &NodeSpec) -> Result<()> {
        if spec.weight == 0 {
            return Err(RingError::ZeroWeight(spec.id));
        }
        if self.member_index(spec.id).is_some() {
            return Err(RingError::DuplicateNode(spec.id));
        }
        Ok(())
    }

    /// Inserts a member keeping `members` sorted; shifts owner indices.
    fn add_member(&mut self, spec: NodeSpec) -> u32 {
        let zone =
            spec.zone
                .as_ref()
                .map(|z| match self.zones.iter().position(|known| known == z) {
                    Some(i) => i as u16,
                    None => {
                        self.zones.push(z.clone());
                        (self.zones.len() - 1) as u16
                    }
                });
        let at = self.members.partition_point(|m| m.spec.id < spec.id);
        self.members.insert(at, Member { spec, zone });
        for owner in &mut self.owners {
            if *owner as usize >= at {
                *owner += 1;
            }
        }
        self.refresh_zone_slots();
        at as u32
    }

    pub(crate) fn member_index(&self, id: NodeId) -> Option<usize> {
        self.members.binary_search_by_key(&id, |m| m.spec.id).ok()
    }

    /// Joins `node` in place, choosing its tokens by the ring's strategy.
    ///
    /// # Errors
    ///
    /// [`RingError`] if the node is already in the ring or its weight is zero.
    pub fn join(&mut self, node: NodeSpec) -> Result<()> {
        self.check_new(&node)?;
        let count = (self.vnodes as usize).saturating_mul(node.weight as usize);
        let id = node.id;
        let weights = self.weights();
        let layout = self.layout(&weights);
        let placements = match self.strategy {
            TokenStrategy::Balanced => allocate::balanced_tokens(
                &layout,
                (id, node.weight, node.zone.as_deref()),
                count,
                self.balance_replicas,
            ),
            TokenStrategy::Hashed => allocate::hashed_tokens(&layout, id, count)
                .into_iter()
                .map(Placement::New)
                .collect(),
        };
        let index = self.add_member(node);
        let mut added: Vec<(u64, u32)> = Vec::with_capacity(placements.len());
        for placement in placements {
            match placement {
                Placement::New(token) => added.push((token, index)),
                Placement::Tail { end, cut } => {
                    let at = self.vnode_of(end);
                    added.push((cut, self.owners[at]));
                    self.owners[at] = index;
                }
            }
        }
        let mut merged: Vec<(u64, u32)> = self
            .tokens
            .iter()
            .copied()
            .zip(self.owners.iter().copied())
            .chain(added)
            .collect();
        merged.sort_unstable_by_key(|&(t, _)| t);
        self.tokens = merged.iter().map(|&(t, _)| t).collect();
        self.owners = merged.iter().map(|&(_, o)| o).collect();
        Ok(())
    }

    /// The ring after `node` joins.
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join).
    pub fn with_node(&self, node: NodeSpec) -> Result<Self> {
        let mut next = self.clone();
        next.join(node)?;
        Ok(next)
    }

    /// Removes `id` in place. Its ranges are handed to the remaining nodes
    /// furthest below their target share, largest range first, so balance
    /// holds and only the leaving node's ranges change hands.
    ///
    /// # Errors
    ///
    /// [`RingError::UnknownNode`] if `id` is not in the ring.
    pub fn leave(&mut self, id: NodeId) -> Result<()> {
        let index = self.member_index(id).ok_or(RingError::UnknownNode(id))? as u32;
        if self.members.len() == 1 {
            let balance_replicas = self.balance_replicas;
            *self = Self::empty(self.vnodes, self.strategy)?;
            self.balance_replicas = balance_replicas;
            return Ok(());
        }
        match self.strategy {
            TokenStrategy::Balanced => {
                let weights = self.weights();
                let moves =
                    allocate::hand_over(&self.layout(&weights), index, self.balance_replicas);
                for (v, member) in moves {
                    self.owners[v] = member;
                }
            }
            TokenStrategy::Hashed => {
                let keep: Vec<bool> = self.owners.iter().map(|&o| o != index).collect();
                let mut k = keep.iter();
                self.tokens.retain(|_| *k.next().unwrap_or(&true));
                self.owners.retain(|&o| o != index);
            }
        }
        self.members.remove(index as usize);
        for owner in &mut self.owners {
            if *owner > index {
                *owner -= 1;
            }
        }
        self.refresh_zone_slots();
        Ok(())
    }

    /// The ring after `id` leaves.
    ///
    /// # Errors
    ///
    /// As [`leave`](Self::leave).
    pub fn without_node(&self, id: NodeId) -> Result<Self> {
        let mut next = self.clone();
        next.leave(id)?;
        Ok(next)
    }

    /// The ring with `new` in `old`'s place: the same tokens, owned by the
    /// new node (a dead node replaced by a new machine). Every key keeps
    /// its replicas but for `old`, which becomes `new`; no other range
    /// changes hands.
    ///
    /// # Errors
    ///
    /// [`RingError::UnknownNode`] if `old` is not in the ring;
    /// [`RingError::DuplicateNode`] if `new` already is;
    /// [`RingError::ZeroWeight`] for a weight of zero.
    pub fn with_replacement(&self, old: NodeId, new: NodeSpec) -> Result<Self> {
        if self.member_index(old).is_none() {
            return Err(RingError::UnknownNode(old));
        }
        if new.id != old && self.member_index(new.id).is_some() {
            return Err(RingError::DuplicateNode(new.id));
        }
        let assignments: Vec<(NodeSpec, Vec<Token>)> = self
            .members
            .iter()
            .map(|m| {
                let spec = if m.spec.id == old {
                    new.clone()
                } else {
                    m.spec.clone()
                };
                (spec, self.tokens_of(m.spec.id))
            })
            .collect();
        let mut ring = Self::from_tokens(self.vnodes, self.strategy, assignments)?;
        ring.balance_replicas = self.balance_replicas;
        Ok(ring)
    }

    /// Virtual nodes per unit of weight.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// The token strategy for joins.
    pub fn strategy(&self) -> TokenStrategy {
        self.strategy
    }

    /// How many physical nodes the ring holds.
    pub fn node_count(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// How many tokens (virtual nodes) the ring holds.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Every node's spec, in ascending id order.
    pub fn node_specs(&self) -> impl Iterator<Item = &NodeSpec> + '_ {
        self.members.iter().map(|m| &m.spec)
    }

    /// The spec of `id`, if it is in the ring.
    pub fn node_spec(&self, id: NodeId) -> Option<&NodeSpec> {
        self.member_index(id).map(|i| &self.members[i].spec)
    }

    /// The tokens `id` owns, ascending (empty if not in the ring).
    pub fn tokens_of(&self, id: NodeId) -> Vec<Token> {
        let Some(index) = self.member_index(id) else {
            return Vec::new();
        };
        self.tokens
            .iter()
            .zip(&self.owners)
            .filter(|&(_, &o)| o as usize == index)
            .map(|(&t, _)| Token(t))
            .collect()
    }

    /// Every (token, owner) pair in ring order.
    pub fn token_owners(&self) -> impl Iterator<Item = (Token, NodeId)> + '_ {
        self.tokens
            .iter()
            .zip(&self.owners)
            .map(|(&t, &o)| (Token(t), self.members[o as usize].spec.id))
    }

    /// The index of the virtual node that owns `token`.
    pub(crate) fn vnode_of(&self, token: u64) -> usize {
        let i = self.tokens.partition_point(|&t| t < token);
        if i == self.tokens.len() { 0 } else { i }
    }

    /// The range owned by the virtual node at `index`.
    pub(crate) fn vnode_range(&self, index: usize) -> TokenRange {
        walk::vnode_range(&self.tokens, index)
    }

    /// Each member's weight, by member index (for [`layout`](Self::layout)).
    fn weights(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.spec.weight).collect()
    }

    /// The ring as token allocation reads it, with `weights` from
    /// [`weights`](Self::weights).
    fn layout<'a>(&'a self, weights: &'a [u32]) -> Layout<'a> {
        Layout {
            tokens: &self.tokens,
            owners: &self.owners,
            weights,
            member_zones: &self.member_zones,
            zones: &self.zones,
        }
    }

    /// Writes into `out` the member indices of the first `n` distinct
    /// nodes clockwise from the virtual node at `start`, zone-aware.
    pub(crate) fn walk(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        let want = n.min(self.members.len());
        walk::walk(&self.owners, self.zones(), start, want, out);
    }

    /// The members' zones, for walks.
    pub(crate) fn zones(&self) -> Zones<'_> {
        Zones {
            of: &self.member_zones,
            slots: self.zone_slots,
        }
    }

    /// The first `n` distinct nodes clockwise from `token`; see
    /// [`Partitioner::preference_list_for_token`].
    ///
    /// # Errors
    ///
    /// [`RingError`] if the ring is empty or `n` is zero.
    pub fn nodes_for_token(&self, token: Token, n: usize) -> Result<Vec<NodeId>> {
        if self.tokens.is_empty() {
            return Err(RingError::Empty);
        }
        if n == 0 {
            return Err(RingError::ZeroReplicas);
        }
        let mut indices = Vec::with_capacity(n.min(self.members.len()));
        self.walk(self.vnode_of(token.0), n, &mut indices);
        Ok(indices
            .into_iter()
            .map(|i| self.members[i as usize].spec.id)
            .collect())
    }

    /// The ranges `id` owns as primary (first replica), adjacent ranges
    /// merged, in ring order.
    pub fn primary_ranges(&self, id: NodeId) -> Vec<TokenRange> {
        match self.member_index(id) {
            Some(index) => self.ranges_where(|vnode, _| self.owners[vnode] as usize == index),
            None => Vec::new(),
        }
    }

    /// The ranges for which `id` is one of the `n` replicas, merged.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroReplicas`] if `n` is zero.
    pub fn replica_ranges(&self, id: NodeId, n: usize) -> Result<Vec<TokenRange>> {
        if n == 0 {
            return Err(RingError::ZeroReplicas);
        }
        let Some(index) = self.member_index(id) else {
            return Ok(Vec::new());
        };
        Ok(self.ranges_where(|vnode, scratch| {
            self.walk(vnode, n, scratch);
            scratch.contains(&(index as u32))
        }))
    }

    /// The virtual-node ranges for which `pick` holds, adjacent merged.
    fn ranges_where(&self, mut pick: impl FnMut(usize, &mut Vec<u32>) -> bool) -> Vec<TokenRange> {
        let len = self.tokens.len();
        if len == 0 {
            return Vec::new();
        }
        let mut scratch = Vec::new();
        let picked: Vec<bool> = (0..len).map(|v| pick(v, &mut scratch)).collect();
        if picked.iter().all(|&p| p) {
            return vec![TokenRange::full(Token(self.tokens[len - 1]))];
        }
        // Start just after an unpicked vnode so runs do not straddle index 0.
        let first_gap = picked.iter().position(|&p| !p).unwrap_or(0);
        let mut out = Vec::new();
        let mut run_start: Option<u64> = None;
        for step in 1..=len {
            let v = (first_gap + step) % len;
            if picked[v] {
                if run_start.is_none() {
                    run_start = Some(self.vnode_range(v).start.0);
                }
            } else if let Some(start) = run_start.take() {
                let prev = (v + len - 1) % len;
                out.push(TokenRange::new(Token(start), Token(self.tokens[prev])));
            }
        }
        out.sort_by_key(|r| r.end);
        out
    }

    /// The share of the ring each node owns as primary, by node id.
    pub fn ownership(&self) -> BTreeMap<NodeId, f64> {
        let mut widths = vec![0u128; self.members.len()];
        for v in 0..self.tokens.len() {
            widths[self.owners[v] as usize] += self.vnode_range(v).width();
        }
        self.shares(&widths)
    }

    /// The share of the ring each node replicates, counting each range once
    /// for each of its `n` replicas (so shares sum to `min(n, nodes)`).
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroReplicas`] if `n` is zero.
    pub fn replicated_ownership(&self, n: usize) -> Result<BTreeMap<NodeId, f64>> {
        if n == 0 {
            return Err(RingError::ZeroReplicas);
        }
        let mut widths = vec![0u128; self.members.len()];
        let mut scratch = Vec::with_capacity(n);
        for v in 0..self.tokens.len() {
            self.walk(v, n, &mut scratch);
            let width = self.vnode_range(v).width();
            for &m in &scratch {
                widths[m as usize] += width;
            }
        }
        Ok(self.shares(&widths))
    }

    fn shares(&self, widths: &[u128]) -> BTreeMap<NodeId, f64> {
        let ring = (1u128 << 64) as f64;
        self.members
            .iter()
            .zip(widths)
            .map(|(m, &w)| (m.spec.id, w as f64 / ring))
            .collect()
    }
}

impl Partitioner for ConsistentHashRing {
    fn token(&self, key: &[u8]) -> Token {
        token_of(key)
    }

    fn preference_list_for_token(
        &self,
        token: Token,
        n: usize,
    ) -> std::result::Result<Vec<NodeId>, PartitionerError> {
        Ok(self.nodes_for_token(token, n)?)
    }

    fn replicated_ranges(
        &self,
        node: NodeId,
        n: usize,
    ) -> std::result::Result<Vec<TokenRange>, PartitionerError> {
        Ok(self.replica_ranges(node, n)?)
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.spec.id).collect()
    }
}
