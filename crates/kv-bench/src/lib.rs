//! Load generation and history checking for a running kv cluster.
//!
//! - [`run`]: drives a cluster through the client SDK with YCSB-style
//!   workloads ([`workload`]), closed or open loop, and reports throughput
//!   and latency percentiles per operation;
//! - [`record`]: the history file a run can write (every operation, then
//!   the converged final state of every key written);
//! - [`check`]: the offline checker of such a file.
//!
//! The binary `kv-bench` puts them behind one command line.

pub mod check;
pub mod record;
pub mod run;
pub mod workload;
