//! A seeded, deterministic simulation of many members over a lossy network
//! with delays and partitions, for tests and for exploring settings.
//!
//! Every message goes through the wire encoding. Time advances in fixed
//! steps; at each step due messages are delivered and every live member is
//! ticked. Replaying a seed replays the run exactly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use kv_core::NodeId;

use crate::config::Config;
use crate::error::Result;
use crate::gossip::Gossip;
use crate::member::{Meta, Status};
use crate::message::Message;

/// Network behaviour.
#[derive(Debug, Clone)]
pub struct Network {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Shortest delivery delay.
    pub min_delay: Duration,
    /// Longest delivery delay.
    pub max_delay: Duration,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            loss: 0.0,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(10),
        }
    }
}

/// A message in flight: (deliver at, order, destination, encoded message).
type InFlight = (Duration, u64, usize, Vec<u8>);

/// A simulated cluster. Member `i` has id `i` and address `"m{i}"`.
#[derive(Debug)]
pub struct Sim {
    config: Config,
    nodes: Vec<Option<Gossip>>,
    by_addr: HashMap<String, usize>,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    now: Duration,
    step: Duration,
    rng: u64,
    /// The network.
    pub network: Network,
    /// Partition group per member: messages cross only within a group.
    groups: Vec<u32>,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Messages lost so far (loss or partition).
    pub dropped: u64,
    /// Messages that failed to decode: always a bug (tests assert 0).
    pub undecodable: u64,
}

fn addr(i: usize) -> String {
    format!("m{i}")
}

impl Sim {
    /// `n` members, all alive, none joined yet. `seed` drives every
    /// random choice of the run.
    ///
    /// # Errors
    ///
    /// [`Error`](crate::Error) if `config` does not validate.
    pub fn new(n: usize, config: Config, network: Network, seed: u64) -> Result<Self> {
        let mut nodes = Vec::with_capacity(n);
        let mut by_addr = HashMap::with_capacity(n);
        for i in 0..n {
            let g = Gossip::new(
                config.clone(),
                NodeId(i as u64),
                addr(i),
                Meta::default(),
                seed ^ ((i as u64 + 1) * 0x5851_f42d),
            )?;
            nodes.push(Some(g));
            by_addr.insert(addr(i), i);
        }
        Ok(Sim {
            step: config.probe_interval / 10,
            config,
            nodes,
            by_addr,
            queue: BinaryHeap::new(),
            order: 0,
            now: Duration::ZERO,
            rng: seed,
            network,
            groups: vec![0; n],
            delivered: 0,
            dropped: 0,
            undecodable: 0,
        })
    }

    /// Simulated time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The configuration every member uses.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Member `i` joins through member `seed`.
    pub fn join(&mut self, i: usize, seed: usize) {
        let now = self.now;
        if let Some(g) = self.nodes[i].as_mut() {
            g.join(vec![addr(seed)], now);
        }
        self.collect(i);
    }

    /// Member `i` leaves gracefully.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(g) = self.nodes[i].as_mut() {
            g.leave(now);
        }
        self.collect(i);
    }

    /// Member `i` changes what it says of itself (see
    /// [`Gossip::set_meta`]).
    pub fn set_meta(&mut self, i: usize, meta: crate::Meta) {
        if let Some(g) = self.nodes[i].as_mut() {
            g.set_meta(meta);
        }
        self.collect(i);
    }

    /// Member `i` restarts: a fresh member with the same id and address,
    /// knowing nothing (incarnation 0, default metadata), that joins
    /// through member `seed`.
    ///
    /// # Errors
    ///
    /// [`Error`](crate::Error) if the configuration does not validate.
    pub fn restart(&mut self, i: usize, seed: usize) -> Result<()> {
        let g = Gossip::new(
            self.config.clone(),
            NodeId(i as u64),
            addr(i),
            Meta::default(),
            self.rng ^ ((i as u64 + 1) * 0x9e37_79b9),
        )?;
        self.nodes[i] = Some(g);
        self.join(i, seed);
        Ok(())
    }

    /// Member `i` stops (crash): it neither sends nor receives.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Puts each member in a partition group; messages between groups are
    /// dropped. `heal` puts everyone back together.
    pub fn partition(&mut self, groups: Vec<u32>) {
        self.groups = groups;
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.groups = vec![0; self.nodes.len()];
    }

    /// The member `i`, if running.
    pub fn node(&self, i: usize) -> Option<&Gossip> {
        self.nodes[i].as_ref()
    }

    /// Members still running.
    pub fn running(&self) -> impl Iterator<Item = (usize, &Gossip)> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.as_ref().map(|g| (i, g)))
    }

    /// What running member `observer` believes of member `subject`.
    pub fn view(&self, observer: usize, subject: usize) -> Option<Status> {
        self.nodes[observer]
            .as_ref()?
            .member(NodeId(subject as u64))
            .map(|m| m.status)
    }

    fn collect(&mut self, i: usize) {
        let Some(g) = self.nodes[i].as_mut() else {
            return;
        };
        let out = g.drain_outbox();
        let _ = g.drain_events();
        for o in out {
            let Some(&to) = self.by_addr.get(&o.to) else {
                self.dropped += 1;
                continue;
            };
            let lost = self.network.loss > 0.0
                && (self.random() as f64 / u64::MAX as f64) < self.network.loss;
            if lost || self.groups[i] != self.groups[to] {
                self.dropped += 1;
                continue;
            }
            let span = self
                .network
                .max_delay
                .saturating_sub(self.network.min_delay)
                .as_micros() as u64;
            let delay = self.network.min_delay
                + Duration::from_micros(if span == 0 { 0 } else { self.random() % span });
            self.order += 1;
            self.queue.push(Reverse((
                self.now + delay,
                self.order,
                to,
                o.message.encode(),
            )));
        }
    }

    /// Advances one step: delivers due messages, ticks every member.
    pub fn step(&mut self) {
        self.now += self.step;
        while let Some(Reverse((at, _, _, _))) = self.queue.peek() {
            if *at > self.now {
                break;
            }
            let Some(Reverse((_, _, to, bytes))) = self.queue.pop() else {
                break;
            };
            // Partitions also cut messages already in flight.
            let Some(g) = self.nodes[to].as_mut() else {
                self.dropped += 1;
                continue;
            };
            match Message::decode(&bytes) {
                Ok(message) => {
                    g.handle(message, self.now);
                    self.delivered += 1;
                }
                Err(_) => self.undecodable += 1,
            }
            self.collect(to);
        }
        let now = self.now;
        for i in 0..self.nodes.len() {
            if let Some(g) = self.nodes[i].as_mut() {
                g.tick(now);
                self.collect(i);
            }
        }
    }

    /// Steps until `done` holds or `limit` passes; returns the time taken
    /// when `done` held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            if done(self) {
                return Some(self.now - start);
            }
            self.step();
        }
        done(self).then(|| self.now - start)
    }

    /// Steps for `duration`, calling `each` after every step.
    pub fn run_for(&mut self, duration: Duration, mut each: impl FnMut(&Sim)) {
        let end = self.now + duration;
        while self.now < end {
            self.step();
            each(self);
        }
    }

    /// Whether every running member sees `subject` as `status`.
    pub fn all_see(&self, subject: usize, status: Status) -> bool {
        self.running()
            .filter(|(i, _)| *i != subject)
            .all(|(i, _)| self.view(i, subject) == Some(status))
    }

    /// Whether every running member sees every running member as Alive.
    pub fn converged(&self) -> bool {
        let running: Vec<usize> = self.running().map(|(i, _)| i).collect();
        running.iter().all(|&o| {
            running
                .iter()
                .all(|&s| o == s || self.view(o, s) == Some(Status::Alive))
        })
    }
}
