//! Load generation and history checking for a running kv cluster.
//!
//! - [`run`]: drives a cluster through the client SDK with YCSB-style
//!   workloads ([`workload`]), closed or open loop, and reports throughput
//!   and latency percentiles per operation;
//! - [`record`]: the history file a run can write (every operation, then
//!   the converged final state of every key written);
//! - [`check`]: the offline checker of such a file.
//!
//! The binary `kv-bench` puts them behind one command line. It is not a
//! general benchmark framework: it speaks only to a kv cluster, through
//! the SDK.
//!
//! ```
//! use kv_bench::workload::{Distribution, KeyChooser, Op, Workload, key, value, value_id};
//! use rand::SeedableRng;
//!
//! // Workload b: 95% reads, 5% updates, over zipfian keys.
//! let workload: Workload = "b".parse()?;
//! let keys = KeyChooser::new(1_000, Distribution::Zipfian)?;
//! let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
//! let reads = (0..10_000).filter(|_| workload.pick(&mut rng) == Op::Read).count();
//! assert!((9_300..9_700).contains(&reads));
//! assert!(keys.next(&mut rng) < 1_000);
//!
//! // Values carry the id a history names them by.
//! assert_eq!(key(42), b"user000000000042".to_vec());
//! assert_eq!(value_id(&value(0xbeef, 100)), Some(0xbeef));
//! # Ok::<(), String>(())
//! ```

pub mod check;
mod pace;
pub mod plot;
pub mod record;
pub mod run;
mod watching;
pub mod workload;
