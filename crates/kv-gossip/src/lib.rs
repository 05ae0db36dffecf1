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
pub use message::{Body, Message, Outgoing};
