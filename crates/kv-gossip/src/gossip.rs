//! The membership state machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kv_core::NodeId;

use crate::config::Config;
use crate::error::Result;
use crate::member::{Member, Meta, Status, Update, supersedes};
use crate::message::{Body, Message, Outgoing};

/// A change of a member's state, for subscribers (the ring, the
/// coordinator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member was seen for the first time.
    Joined(Member),
    /// A suspected or dead member proved alive (or changed its metadata).
    Alive(Member),
    /// A member missed a probe.
    Suspect(Member),
    /// A member was declared failed.
    Dead(Member),
    /// A member left gracefully.
    Left(Member),
}

#[derive(Debug, Clone)]
struct Suspicion {
    started: Duration,
    /// Members that independently reported the suspicion.
    confirmations: BTreeSet<NodeId>,
}

#[derive(Debug, Clone)]
struct Entry {
    member: Member,
    suspicion: Option<Suspicion>,
    /// When the status last changed.
    since: Duration,
}

#[derive(Debug, Clone)]
struct Probe {
    target: NodeId,
    seq: u64,
    sent: Duration,
    indirect_sent: bool,
}

#[derive(Debug, Clone)]
struct Relay {
    requester: String,
    requester_seq: u64,
    expires: Duration,
}

#[derive(Debug, Clone)]
struct Broadcast {
    update: Update,
    transmits: u32,
}

/// One member's view of the cluster, driven by the caller: call
/// [`tick`](Gossip::tick) regularly and [`handle`](Gossip::handle) for
/// every message received, and send what [`drain_outbox`](Gossip::drain_outbox)
/// returns. Time and randomness come from the caller (a clock reading and a
/// seed), so a simulation replays exactly.
///
/// ```
/// use std::time::Duration;
/// use kv_core::NodeId;
/// use kv_gossip::{Config, Gossip, Meta, Status};
///
/// let mut a = Gossip::new(Config::default(), NodeId(1), "a".into(), Meta::default(), 1)?;
/// let mut b = Gossip::new(Config::default(), NodeId(2), "b".into(), Meta::default(), 2)?;
/// let now = Duration::ZERO;
/// b.join(vec!["a".into()], now);
/// // Deliver messages until nothing is left to say.
/// for _ in 0..4 {
///     for out in b.drain_outbox() { a.handle(out.message, now); }
///     for out in a.drain_outbox() { b.handle(out.message, now); }
/// }
/// assert!(a.members().iter().any(|m| m.id == NodeId(2) && m.status == Status::Alive));
/// assert!(b.members().iter().any(|m| m.id == NodeId(1) && m.status == Status::Alive));
/// # Ok::<(), kv_gossip::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Gossip {
    config: Config,
    me: Member,
    members: BTreeMap<NodeId, Entry>,
    rng: u64,
    order: Vec<NodeId>,
    order_pos: usize,
    next_probe: Duration,
    seq: u64,
    probe: Option<Probe>,
    relays: HashMap<u64, Relay>,
    broadcasts: Vec<Broadcast>,
    outbox: Vec<Outgoing>,
    events: Vec<Event>,
    seeds: Vec<String>,
    joined: bool,
    next_join: Duration,
    next_reclaim: Duration,
    next_push_pull: Duration,
    /// When dead and departed members are next looked at for forgetting.
    next_forget: Duration,
    /// Every member whose suspicion timer runs (and some whose no longer
    /// does, dropped at the next check), so the check each tick walks the
    /// suspects rather than every member: with 1,000 members that walk was
    /// the simulator's largest cost.
    suspects: BTreeSet<NodeId>,
    /// Members Alive or Suspect, kept as their statuses change: counted at
    /// every message sent, a walk over every member was the simulator's
    /// next largest cost.
    counted: usize,
    /// News of new members ignored because the table was full.
    members_refused: u64,
}

/// Whether a member in `status` counts toward the cluster's size.
fn counts(status: Status) -> bool {
    matches!(status, Status::Alive | Status::Suspect)
}

impl Gossip {
    /// A member `id` at `addr`, alone until it joins. `seed` seeds the
    /// random choices (probe order, indirect probers).
    ///
    /// # Errors
    ///
    /// [`Error`](crate::Error) if `config` does not validate.
    pub fn new(config: Config, id: NodeId, addr: String, meta: Meta, seed: u64) -> Result<Self> {
        config.validate()?;
        Ok(Gossip {
            config,
            me: Member {
                id,
                addr,
                incarnation: 0,
                status: Status::Alive,
                meta,
            },
            members: BTreeMap::new(),
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            order: Vec::new(),
            order_pos: 0,
            next_probe: Duration::ZERO,
            seq: 0,
            probe: None,
            relays: HashMap::new(),
            broadcasts: Vec::new(),
            outbox: Vec::new(),
            events: Vec::new(),
            seeds: Vec::new(),
            joined: true,
            next_join: Duration::ZERO,
            next_reclaim: Duration::ZERO,
            next_push_pull: config_push_pull_start(seed),
            next_forget: Duration::ZERO,
            suspects: BTreeSet::new(),
            counted: 0,
            members_refused: 0,
        })
    }

    /// News of new members ignored since start because the table held
    /// [`Config::max_members`] already.
    pub fn members_refused(&self) -> u64 {
        self.members_refused
    }

    /// This member's own state.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Every member known, this one included, by id.
    pub fn members(&self) -> Vec<Member> {
        let mut all: Vec<Member> = self.members.values().map(|e| e.member.clone()).collect();
        all.push(self.me.clone());
        all.sort_by_key(|m| m.id);
        all
    }

    /// The state of member `id`, if known.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        if id == self.me.id {
            return Some(&self.me);
        }
        self.members.get(&id).map(|e| &e.member)
    }

    /// Messages to send.
    pub fn drain_outbox(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// State changes since the last call.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Whether a join is still unanswered.
    pub fn joining(&self) -> bool {
        !self.joined
    }

    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Members counted for timeouts and retransmissions (this one included).
    fn cluster_size(&self) -> usize {
        1 + self.counted
    }

    /// Asks `seeds` to admit this member; retried every probe interval
    /// until one answers.
    pub fn join(&mut self, seeds: Vec<String>, now: Duration) {
        self.seeds = seeds.into_iter().filter(|s| *s != self.me.addr).collect();
        self.joined = self.seeds.is_empty();
        self.next_join = now;
        self.send_joins(now);
    }

    fn send_joins(&mut self, now: Duration) {
        if self.joined || now < self.next_join {
            return;
        }
        for seed in self.seeds.clone() {
            let message = Message {
                from: self.me.id,
                from_addr: self.me.addr.clone(),
                body: Body::Join,
                updates: vec![self.me.clone()],
            };
            self.outbox.push(Outgoing { to: seed, message });
        }
        self.next_join = now + self.config.probe_interval;
    }

    /// Changes what this member tells others about itself (its health,
    /// say), with a higher incarnation so the news supersedes the old.
    /// Nothing happens when `meta` is what it already says.
    pub fn set_meta(&mut self, meta: Meta) {
        if self.me.meta == meta || self.me.status == Status::Left {
            return;
        }
        self.me.meta = meta;
        self.me.incarnation += 1;
        let me = self.me.clone();
        self.queue_broadcast(me);
    }

    /// Leaves the cluster: announces it (with a higher incarnation, so the
    /// news beats everything said before) to a few members directly and by
    /// gossip. The member stops probing afterwards.
    pub fn leave(&mut self, now: Duration) {
        self.me.incarnation += 1;
        self.me.status = Status::Left;
        let me = self.me.clone();
        self.queue_broadcast(me);
        let live: Vec<(NodeId, String)> = self
            .members
            .values()
            .filter(|e| e.member.status == Status::Alive)
            .map(|e| (e.member.id, e.member.addr.clone()))
            .collect();
        let fanout = (self.config.indirect_probes * 2).max(3);
        for (_, addr) in self.pick(&live, fanout) {
            self.seq += 1;
            let seq = self.seq;
            self.send(addr, Body::Ping { seq });
        }
        let _ = now;
    }

    /// Up to `n` distinct random entries of `from`.
    fn pick<T: Clone>(&mut self, from: &[T], n: usize) -> Vec<T> {
        let mut pool: Vec<T> = from.to_vec();
        let mut out = Vec::with_capacity(n.min(pool.len()));
        while out.len() < n && !pool.is_empty() {
            let i = (self.random() % pool.len() as u64) as usize;
            out.push(pool.swap_remove(i));
        }
        out
    }

    /// Advances timers: probes, indirect probes, suspicion, joins.
    pub fn tick(&mut self, now: Duration) {
        if self.me.status == Status::Left {
            return;
        }
        self.send_joins(now);
        self.check_probe(now);
        if self.probe.is_none() && now >= self.next_probe {
            self.start_probe(now);
        }
        self.check_suspicions(now);
        self.reclaim(now);
        self.push_pull(now);
        self.relays.retain(|_, r| r.expires > now);
        self.forget(now);
    }

    /// Forgets members dead or departed for longer than `forget_after`,
    /// looking at most once per [`FORGET_CHECK`]: a walk over every member
    /// at each tick was a third of a 1,000-member simulation's time (the
    /// test of 10, 100 and 1,000 members: 91 s, now 61 s), and a member
    /// forgotten a second late is no different.
    fn forget(&mut self, now: Duration) {
        if now < self.next_forget {
            return;
        }
        self.next_forget = now + FORGET_CHECK;
        let forget = self.config.forget_after;
        self.members.retain(|_, e| {
            !(matches!(e.member.status, Status::Dead | Status::Left)
                && now.saturating_sub(e.since) > forget)
        });
    }

    fn check_probe(&mut self, now: Duration) {
        let Some(probe) = self.probe.clone() else {
            return;
        };
        if !probe.indirect_sent && now >= probe.sent + self.config.probe_timeout {
            let helpers: Vec<(NodeId, String)> = self
                .members
                .values()
                .filter(|e| e.member.status == Status::Alive && e.member.id != probe.target)
                .map(|e| (e.member.id, e.member.addr.clone()))
                .collect();
            let target_addr = self
                .members
                .get(&probe.target)
                .map(|e| e.member.addr.clone());
            if let Some(target_addr) = target_addr {
                for (_, addr) in self.pick(&helpers, self.config.indirect_probes) {
                    self.send(
                        addr,
                        Body::PingReq {
                            seq: probe.seq,
                            target: probe.target,
                            target_addr: target_addr.clone(),
                        },
                    );
                }
            }
            if let Some(p) = &mut self.probe {
                p.indirect_sent = true;
            }
        }
        if now >= probe.sent + self.config.probe_interval {
            self.probe = None;
            self.suspect(probe.target, now);
        }
    }

    fn start_probe(&mut self, now: Duration) {
        self.next_probe = now + self.config.probe_interval;
        let target = loop {
            if self.order_pos >= self.order.len() {
                let mut ids: Vec<NodeId> = self
                    .members
                    .values()
                    .filter(|e| matches!(e.member.status, Status::Alive | Status::Suspect))
                    .map(|e| e.member.id)
                    .collect();
                for i in (1..ids.len()).rev() {
                    let j = (self.random() % (i as u64 + 1)) as usize;
                    ids.swap(i, j);
                }
                self.order = ids;
                self.order_pos = 0;
                if self.order.is_empty() {
                    return;
                }
            }
            let id = self.order[self.order_pos];
            self.order_pos += 1;
            if self
                .members
                .get(&id)
                .is_some_and(|e| matches!(e.member.status, Status::Alive | Status::Suspect))
            {
                break id;
            }
        };
        self.seq += 1;
        let seq = self.seq;
        let Some(addr) = self.members.get(&target).map(|e| e.member.addr.clone()) else {
            return;
        };
        self.send(addr, Body::Ping { seq });
        self.probe = Some(Probe {
            target,
            seq,
            sent: now,
            indirect_sent: false,
        });
    }

    /// Pings a random Dead member now and then: if it is alive after all
    /// (a healed partition), the news of its death it receives makes it
    /// refute, and the two sides merge again.
    fn reclaim(&mut self, now: Duration) {
        if now < self.next_reclaim {
            return;
        }
        self.next_reclaim = now + self.config.reclaim_interval;
        let dead: Vec<String> = self
            .members
            .values()
            .filter(|e| e.member.status == Status::Dead)
            .map(|e| e.member.addr.clone())
            .collect();
        if let Some(addr) = self.pick(&dead, 1).pop() {
            self.seq += 1;
            let seq = self.seq;
            // Tell it what we believe of it, whatever else is queued.
            let mut message = Message {
                from: self.me.id,
                from_addr: self.me.addr.clone(),
                body: Body::Ping { seq },
                updates: self.piggyback(),
            };
            if let Some(entry) = self.members.values().find(|e| e.member.addr == addr) {
                message.updates.push(entry.member.clone());
            }
            message.updates.push(self.me.clone());
            self.outbox.push(Outgoing { to: addr, message });
        }
    }

    /// Sends the whole membership to a random live member, which answers
    /// with its own (a join exchange carrying everything).
    fn push_pull(&mut self, now: Duration) {
        if now < self.next_push_pull {
            return;
        }
        self.next_push_pull = now + self.config.push_pull_interval;
        let live: Vec<String> = self
            .members
            .values()
            .filter(|e| e.member.status == Status::Alive)
            .map(|e| e.member.addr.clone())
            .collect();
        if let Some(addr) = self.pick(&live, 1).pop() {
            let message = Message {
                from: self.me.id,
                from_addr: self.me.addr.clone(),
                body: Body::Join,
                updates: self.full_state(),
            };
            self.outbox.push(Outgoing { to: addr, message });
        }
    }

    /// Every member known, this one included, as updates.
    fn full_state(&self) -> Vec<Update> {
        let mut everyone: Vec<Update> = self.members.values().map(|e| e.member.clone()).collect();
        everyone.push(self.me.clone());
        everyone
    }

    /// Lifeguard: the suspicion timeout shrinks from `max` towards `min`
    /// as independent confirmations arrive (`min` for a cluster of
    /// `cluster_size`).
    fn suspicion_timeout(config: &Config, cluster_size: usize, confirmations: usize) -> Duration {
        let min = config.suspicion_min(cluster_size);
        let max = min * config.suspicion_max_factor;
        let k = f64::from(config.suspicion_confirmations.max(1));
        let fraction = ((confirmations as f64 + 1.0).ln() / (k + 1.0).ln()).min(1.0);
        max.saturating_sub((max - min).mul_f64(fraction)).max(min)
    }

    fn check_suspicions(&mut self, now: Duration) {
        if self.suspects.is_empty() {
            return;
        }
        let size = self.cluster_size();
        let mut expired = Vec::new();
        let (members, config) = (&self.members, &self.config);
        self.suspects.retain(|id| {
            let Some(entry) = members.get(id) else {
                return false;
            };
            let Some(s) = &entry.suspicion else {
                return false;
            };
            if entry.member.status != Status::Suspect {
                return false;
            }
            let timeout = Self::suspicion_timeout(config, size, s.confirmations.len());
            if now >= s.started + timeout {
                expired.push(*id);
                return false;
            }
            true
        });
        for id in expired {
            let Some(entry) = self.members.get_mut(&id) else {
                continue;
            };
            entry.member.status = Status::Dead;
            entry.suspicion = None;
            entry.since = now;
            self.counted -= 1;
            let member = entry.member.clone();
            self.events.push(Event::Dead(member.clone()));
            self.queue_broadcast(member);
        }
    }

    fn suspect(&mut self, id: NodeId, now: Duration) {
        let Some(entry) = self.members.get_mut(&id) else {
            return;
        };
        if entry.member.status != Status::Alive {
            return;
        }
        entry.member.status = Status::Suspect;
        entry.since = now;
        entry.suspicion = Some(Suspicion {
            started: now,
            confirmations: BTreeSet::new(),
        });
        self.suspects.insert(id);
        let member = entry.member.clone();
        self.events.push(Event::Suspect(member.clone()));
        self.queue_broadcast(member.clone());
        // Tell the suspect (it refutes at once if alive) and a few others
        // (an independent confirmation for their timers).
        let report = Body::Suspect {
            target: member.id,
            incarnation: member.incarnation,
        };
        self.send(member.addr.clone(), report.clone());
        let others: Vec<String> = self
            .members
            .values()
            .filter(|e| e.member.status == Status::Alive)
            .map(|e| e.member.addr.clone())
            .collect();
        for addr in self.pick(&others, self.config.indirect_probes) {
            self.send(addr, report.clone());
        }
    }

    /// A direct suspicion report from `from`.
    fn suspicion_report(&mut self, target: NodeId, incarnation: u64, from: NodeId, now: Duration) {
        if target == self.me.id {
            let claim = Update {
                status: Status::Suspect,
                incarnation,
                ..self.me.clone()
            };
            self.about_me(&claim);
            return;
        }
        let Some(entry) = self.members.get_mut(&target) else {
            return;
        };
        if incarnation < entry.member.incarnation {
            return;
        }
        match entry.member.status {
            Status::Suspect if incarnation == entry.member.incarnation => {
                if let Some(s) = &mut entry.suspicion {
                    s.confirmations.insert(from);
                }
            }
            Status::Alive => {
                entry.member.status = Status::Suspect;
                entry.member.incarnation = incarnation;
                entry.since = now;
                entry.suspicion = Some(Suspicion {
                    started: now,
                    confirmations: BTreeSet::from([from]),
                });
                self.suspects.insert(target);
                let member = entry.member.clone();
                self.events.push(Event::Suspect(member.clone()));
                self.queue_broadcast(member);
            }
            _ => {}
        }
    }

    /// Processes one received message.
    pub fn handle(&mut self, message: Message, now: Duration) {
        if self.me.status == Status::Left {
            return;
        }
        let from = message.from;
        for update in message.updates {
            self.apply(update, now);
        }
        match message.body {
            Body::Ping { seq } => self.send(message.from_addr, Body::Ack { seq }),
            Body::Ack { seq } => {
                if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
                    self.probe = None;
                }
                if let Some(relay) = self.relays.remove(&seq) {
                    self.send(
                        relay.requester,
                        Body::Ack {
                            seq: relay.requester_seq,
                        },
                    );
                }
            }
            Body::PingReq {
                seq, target_addr, ..
            } => {
                self.seq += 1;
                let ours = self.seq;
                self.relays.insert(
                    ours,
                    Relay {
                        requester: message.from_addr,
                        requester_seq: seq,
                        expires: now + self.config.probe_interval,
                    },
                );
                self.send(target_addr, Body::Ping { seq: ours });
            }
            Body::Join => {
                let mut everyone: Vec<Update> =
                    self.members.values().map(|e| e.member.clone()).collect();
                everyone.push(self.me.clone());
                let message = Message {
                    from: self.me.id,
                    from_addr: self.me.addr.clone(),
                    body: Body::JoinReply,
                    updates: everyone,
                };
                self.outbox.push(Outgoing {
                    to: message_addr(&message, &self.members, from),
                    message,
                });
            }
            Body::JoinReply => self.joined = true,
            Body::Suspect {
                target,
                incarnation,
            } => self.suspicion_report(target, incarnation, from, now),
        }
    }

    /// Applies news about a member.
    fn apply(&mut self, update: Update, now: Duration) {
        if update.id == self.me.id {
            self.about_me(&update);
            return;
        }
        let Some(entry) = self.members.get_mut(&update.id) else {
            if self.members.len() + 1 >= self.config.max_members {
                self.members_refused += 1;
                return;
            }
            let event = match update.status {
                Status::Alive => Some(Event::Joined(update.clone())),
                Status::Suspect => Some(Event::Suspect(update.clone())),
                _ => None,
            };
            let suspicion = (update.status == Status::Suspect).then(|| Suspicion {
                started: now,
                confirmations: BTreeSet::new(),
            });
            if suspicion.is_some() {
                self.suspects.insert(update.id);
            }
            self.counted += usize::from(counts(update.status));
            self.members.insert(
                update.id,
                Entry {
                    member: update.clone(),
                    suspicion,
                    since: now,
                },
            );
            self.events.extend(event);
            self.order.push(update.id);
            self.queue_broadcast(update);
            return;
        };
        // Relayed news of a suspicion already known is no confirmation:
        // only direct reports from suspecting members count (Lifeguard).
        if !supersedes(&update, &entry.member) {
            return;
        }
        let before = entry.member.status;
        entry.member = update.clone();
        if before != update.status {
            entry.since = now;
            self.counted =
                self.counted + usize::from(counts(update.status)) - usize::from(counts(before));
        }
        entry.suspicion = (update.status == Status::Suspect).then(|| Suspicion {
            started: now,
            confirmations: BTreeSet::new(),
        });
        if entry.suspicion.is_some() {
            self.suspects.insert(update.id);
        }
        let event = match update.status {
            Status::Alive => Event::Alive(update.clone()),
            Status::Suspect => Event::Suspect(update.clone()),
            Status::Dead => Event::Dead(update.clone()),
            Status::Left => Event::Left(update.clone()),
        };
        self.events.push(event);
        self.queue_broadcast(update);
    }

    /// News about this member: refute suspicion or death by raising the
    /// incarnation above what was said.
    fn about_me(&mut self, update: &Update) {
        if self.me.status == Status::Left {
            return;
        }
        let wrong = update.status != Status::Alive || update.incarnation > self.me.incarnation;
        if wrong && update.incarnation >= self.me.incarnation {
            self.me.incarnation = update.incarnation + 1;
            let me = self.me.clone();
            self.queue_broadcast(me);
        }
    }

    fn queue_broadcast(&mut self, update: Update) {
        self.broadcasts.retain(|b| b.update.id != update.id);
        self.broadcasts.push(Broadcast {
            update,
            transmits: 0,
        });
    }

    /// Up to `max_piggyback` updates for a message to `to`: news about the
    /// destination itself first (a suspected member learns of it from the
    /// first member that contacts it, in time to refute), then the least
    /// transmitted.
    fn piggyback_for(&mut self, to: Option<&str>) -> Vec<Update> {
        let limit = self.config.retransmits(self.cluster_size());
        // Cached: each key compares an address, once per broadcast rather
        // than at every comparison of the sort.
        self.broadcasts
            .sort_by_cached_key(|b| (to.is_none_or(|addr| b.update.addr != addr), b.transmits));
        let mut out = Vec::new();
        for b in self.broadcasts.iter_mut().take(self.config.max_piggyback) {
            b.transmits += 1;
            out.push(b.update.clone());
        }
        self.broadcasts.retain(|b| b.transmits < limit);
        out
    }

    fn piggyback(&mut self) -> Vec<Update> {
        self.piggyback_for(None)
    }

    fn send(&mut self, to: String, body: Body) {
        let updates = self.piggyback_for(Some(&to));
        self.outbox.push(Outgoing {
            to,
            message: Message {
                from: self.me.id,
                from_addr: self.me.addr.clone(),
                body,
                updates,
            },
        });
    }
}

/// How often dead and departed members are looked at for forgetting.
const FORGET_CHECK: Duration = Duration::from_secs(1);

/// Spreads members' first push-pull over an interval, from their seed.
fn config_push_pull_start(seed: u64) -> Duration {
    Duration::from_millis(1_000 + seed % 9_000)
}

/// Where to answer a join: the joiner's own address, as it announced it.
fn message_addr(reply: &Message, members: &BTreeMap<NodeId, Entry>, joiner: NodeId) -> String {
    members
        .get(&joiner)
        .map(|e| e.member.addr.clone())
        .unwrap_or_else(|| reply.from_addr.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Network, Sim};

    /// What the kept counts stand for, walked the long way.
    fn check_kept_counts(sim: &Sim) {
        for (i, g) in sim.running() {
            let walked = g
                .members
                .values()
                .filter(|e| counts(e.member.status))
                .count();
            assert_eq!(g.counted, walked, "member {i} at {:?}", sim.now());
            for (id, e) in &g.members {
                if e.member.status == Status::Suspect && e.suspicion.is_some() {
                    assert!(
                        g.suspects.contains(id),
                        "member {i}: suspect {id:?} unwatched"
                    );
                }
            }
        }
    }

    /// The member count and the set of suspects, kept as statuses change,
    /// match a walk over the members through joins, a crash (suspected,
    /// then dead), a partition and its healing, a departure, and the
    /// forgetting of the dead and departed.
    #[test]
    fn kept_counts_match_the_members_through_every_change_of_status() {
        let config = Config {
            forget_after: Duration::from_secs(20),
            ..Config::default()
        };
        let mut sim = Sim::new(12, config, Network::default(), 7).unwrap();
        for i in 1..12 {
            sim.join(i, 0);
        }
        sim.run_for(Duration::from_secs(30), check_kept_counts);
        sim.crash(3);
        sim.run_for(Duration::from_secs(30), check_kept_counts);
        assert!(sim.all_see(3, Status::Dead), "the crash was never declared");
        sim.partition(vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
        sim.run_for(Duration::from_secs(30), check_kept_counts);
        sim.heal();
        sim.leave(5);
        sim.run_for(Duration::from_secs(60), check_kept_counts);
        // Forgotten: the crashed and departed members are gone from tables.
        let (_, g) = sim.running().find(|(i, _)| *i == 0).unwrap();
        assert!(
            !g.members.contains_key(&NodeId(3)),
            "{:?}",
            g.members.keys()
        );
        assert_eq!(g.counted, 9, "eleven others, one crashed, one departed");
    }
}
