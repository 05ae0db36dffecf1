//! What a run does: the operation mix (YCSB's workloads) and which keys it
//! touches (uniform or zipfian).

use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution as _, Zipf};

/// A YCSB-style operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// Reads only.
    C,
    /// 50% reads, 50% read-modify-writes (the write carries the read's
    /// context).
    F,
    /// Updates only.
    W,
    /// 40% reads, 40% updates, 20% deletes, each write carrying the last
    /// context this client knows for the key: keys are deleted and
    /// written again, so tombstones are made, collected and superseded.
    D,
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "a" | "A" => Workload::A,
            "b" | "B" => Workload::B,
            "c" | "C" => Workload::C,
            "f" | "F" => Workload::F,
            "w" | "W" => Workload::W,
            "d" | "D" => Workload::D,
            other => return Err(format!("workload {other:?}: use a, b, c, d, f or w")),
        })
    }
}

/// One operation of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// A get.
    Read,
    /// A put carrying the last context this client knows for the key.
    Update,
    /// A get, then a put with the get's context.
    ReadModifyWrite,
    /// A delete carrying the last context this client knows for the key.
    Delete,
}

impl Op {
    /// Every kind, in report order.
    pub const ALL: [Op; 4] = [Op::Read, Op::Update, Op::ReadModifyWrite, Op::Delete];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::ReadModifyWrite => "rmw",
            Op::Delete => "delete",
        }
    }

    /// Index into per-kind tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Workload {
    /// Draws the next operation.
    pub fn pick(self, rng: &mut impl Rng) -> Op {
        let roll: u32 = rng.random_range(0..100);
        match self {
            Workload::A => {
                if roll < 50 {
                    Op::Read
                } else {
                    Op::Update
                }
            }
            Workload::B => {
                if roll < 95 {
                    Op::Read
                } else {
                    Op::Update
                }
            }
            Workload::C => Op::Read,
            Workload::F => {
                if roll < 50 {
                    Op::Read
                } else {
                    Op::ReadModifyWrite
                }
            }
            Workload::W => Op::Update,
            Workload::D => match roll {
                0..40 => Op::Read,
                40..80 => Op::Update,
                _ => Op::Delete,
            },
        }
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Every record equally likely.
    Uniform,
    /// Zipfian with YCSB's constant 0.99, hot records scattered over the
    /// key space (so they do not all land on one node).
    Zipfian,
}

impl FromStr for Distribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            other => Err(format!("distribution {other:?}: use uniform or zipfian")),
        }
    }
}

/// Draws record numbers in `0..records`.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    records: u64,
    zipf: Option<Zipf<f64>>,
}

/// FNV-1a of a rank: scatters zipfian ranks over the records.
fn scatter(rank: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rank.to_le_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl KeyChooser {
    /// Keys among `records` (at least one) drawn by `distribution`.
    ///
    /// # Errors
    ///
    /// A message if `records` is zero.
    pub fn new(records: u64, distribution: Distribution) -> Result<Self, String> {
        if records == 0 {
            return Err("records must be at least 1".into());
        }
        let zipf = match distribution {
            Distribution::Uniform => None,
            Distribution::Zipfian => {
                Some(Zipf::new(records as f64, 0.99).map_err(|e| format!("zipfian: {e}"))?)
            }
        };
        Ok(KeyChooser { records, zipf })
    }

    /// The next record number.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match &self.zipf {
            None => rng.random_range(0..self.records),
            Some(z) => {
                // Zipf samples ranks 1..=records.
                let rank = z.sample(rng) as u64;
                scatter(rank) % self.records
            }
        }
    }
}

/// The key of record `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

/// What every key of a workload starts with.
pub const KEY_PREFIX: &[u8] = b"user";

/// A value of `size` bytes (at least 16) that starts with the unique
/// `id`, as 16 hex digits, so a history can name it.
pub fn value(id: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{id:016x}").into_bytes();
    v.resize(size.max(16), b'.');
    v
}

/// The id a value of [`value`] starts with.
pub fn value_id(value: &[u8]) -> Option<u64> {
    let head = std::str::from_utf8(value.get(..16)?).ok()?;
    u64::from_str_radix(head, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn mixes_follow_their_workload() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[Workload::B.pick(&mut rng).index()] += 1;
        }
        assert!((9300..9700).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[2], 0);
        assert!((0..10).all(|_| Workload::C.pick(&mut rng) == Op::Read));
        assert!((0..10).all(|_| Workload::W.pick(&mut rng) == Op::Update));
        assert!("q".parse::<Workload>().is_err());
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let mut rng = SmallRng::seed_from_u64(3);
        let chooser = KeyChooser::new(1000, Distribution::Zipfian).unwrap();
        let mut hits = vec![0u32; 1000];
        for _ in 0..100_000 {
            hits[chooser.next(&mut rng) as usize] += 1;
        }
        hits.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = hits[..10].iter().sum();
        assert!(
            top10 > 30_000,
            "the 10 hottest of 1000 take {top10} of 100000"
        );
        let uniform = KeyChooser::new(1000, Distribution::Uniform).unwrap();
        assert!((0..1000).all(|_| uniform.next(&mut rng) < 1000));
        assert!(KeyChooser::new(0, Distribution::Uniform).is_err());
    }

    #[test]
    fn values_carry_their_id() {
        let v = value(0xabc, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(value_id(&v), Some(0xabc));
        assert_eq!(value(1, 4).len(), 16);
        assert_eq!(value_id(b"short"), None);
        assert_eq!(value_id(b"zzzzzzzzzzzzzzzzzz"), None);
    }
}
