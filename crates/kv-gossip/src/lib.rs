//! Cluster membership and failure detection in the style of SWIM, with
//! Lifeguard-like suspicion, as a state machine without I/O.
//!
//! Each node periodically probes a random member (round-robin over a
//! shuffled order). When the direct ack does not come within the probe
//! timeout, `k` other members are asked to probe it; when no ack arrives
//! within the probe interval, the member is suspected. A suspected member
//! is declared dead when its suspicion times out; the timeout starts long
//! and shrinks as other members independently confirm the suspicion. A
//! member refutes suspicion by raising its incarnation. News travels
//! piggybacked on probes and acks, each update about `log(n)` times. New
//! members join through seed addresses and receive the full membership;
//! leaving members announce it.
//!
//! The caller owns time (a `Duration` since any fixed origin), randomness
//! (a seed), and the network (it moves [`Outgoing`] messages): the same
//! code runs in a simulation and on sockets.
//!
//! - [`Gossip`]: `tick(now)`, `handle(message, now)`, `drain_outbox()`,
//!   `members()`, `drain_events()`.
//! - [`Config`] with `Default` and `validate()`.
//! - [`Message`]: compact encoding; decoding garbage is an error.
//!
//! Not here: sockets, timers, threads. The caller moves messages and
//! time; [`sim`] does both for seeded simulated clusters.
//!
//! Two members, the second joining through the first; the loop is the
//! network:
//!
//! ```
//! use std::time::Duration;
//! use kv_core::NodeId;
//! use kv_gossip::{Config, Gossip, Meta, Status};
//!
//! let mut nodes = [
//!     Gossip::new(Config::default(), NodeId(1), "n1".into(), Meta::default(), 1)?,
//!     Gossip::new(Config::default(), NodeId(2), "n2".into(), Meta::default(), 2)?,
//! ];
//! nodes[1].join(vec!["n1".into()], Duration::ZERO);
//! let mut now = Duration::ZERO;
//! for _ in 0..50 {
//!     now += Duration::from_millis(100);
//!     for node in nodes.iter_mut() {
//!         node.tick(now);
//!     }
//!     // Deliver every message, and the replies they cause.
//!     let mut mail: Vec<_> = nodes.iter_mut().flat_map(|n| n.drain_outbox()).collect();
//!     for _ in 0..10 {
//!         for out in std::mem::take(&mut mail) {
//!             let to = if out.to == "n1" { 0 } else { 1 };
//!             nodes[to].handle(out.message, now);
//!             mail.extend(nodes[to].drain_outbox());
//!         }
//!     }
//! }
//! for node in &nodes {
//!     let alive = node.members().iter().filter(|m| m.status == Status::Alive).count();
//!     assert_eq!(alive, 2);
//! }
//! # Ok::<(), kv_gossip::Error>(())
//! ```

mod config;
mod error;
mod gossip;
mod member;
mod message;
pub mod sim;

pub use config::Config;
pub use error::{Error, Result};
pub use gossip::{Event, Gossip};
pub use member::{Member, Meta, Status, Update, supersedes};
pub use message::{Body, MAX_INCARNATION, Message, Outgoing};
