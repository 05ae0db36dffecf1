//! Protocol settings.

use std::time::Duration;

use crate::error::{Error, Result};

/// How the protocol behaves. `Default` gives the usual SWIM settings;
/// [`Config::validate`] is called by [`Gossip::new`](crate::Gossip::new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Time between probes of one member by this node (1 s).
    pub probe_interval: Duration,
    /// Time to wait for a direct ack before asking others (400 ms).
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly when a direct probe times out (3).
    pub indirect_probes: usize,
    /// Suspicion lasts `suspicion_multiplier * log10(max(n, 10)) *
    /// probe_interval` at least (4).
    pub suspicion_multiplier: u32,
    /// Without independent confirmations, suspicion lasts this many times
    /// its minimum; each confirmation from another member shortens it
    /// towards the minimum (Lifeguard) (6).
    pub suspicion_max_factor: u32,
    /// Independent confirmations that bring suspicion down to its minimum (3).
    pub suspicion_confirmations: u32,
    /// Each update is piggybacked `retransmit_multiplier *
    /// ceil(log10(n + 1))` times (4).
    pub retransmit_multiplier: u32,
    /// Updates piggybacked on one message at most (16).
    pub max_piggyback: usize,
    /// How long Dead and Left members are remembered before being
    /// forgotten (so their news stops circulating) (10 min).
    pub forget_after: Duration,
    /// How often a random Dead member is probed anyway, so that the two
    /// sides of a healed partition find each other again (5 s).
    pub reclaim_interval: Duration,
    /// How often the full membership is exchanged with a random member
    /// (push-pull anti-entropy), which repairs whatever piggybacked gossip
    /// missed (10 s).
    pub push_pull_interval: Duration,
    /// Members this node keeps track of, itself included (1,024): news of
    /// further members is ignored and counted
    /// ([`Gossip::members_refused`](crate::Gossip::members_refused)), so a
    /// stranger that invents members cannot grow the table without bound.
    pub max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(400),
            indirect_probes: 3,
            suspicion_multiplier: 4,
            suspicion_max_factor: 6,
            suspicion_confirmations: 3,
            retransmit_multiplier: 4,
            max_piggyback: 16,
            forget_after: Duration::from_secs(600),
            reclaim_interval: Duration::from_secs(5),
            push_pull_interval: Duration::from_secs(10),
            max_members: 1024,
        }
    }
}

impl Config {
    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error`] naming the first setting out of range (a probe timeout not
    /// shorter than the probe interval, zero counts).
    pub fn validate(&self) -> Result<()> {
        if self.probe_interval.is_zero() {
            return Err(Error::InvalidConfig(
                "probe_interval must be positive".into(),
            ));
        }
        if self.probe_timeout.is_zero() || self.probe_timeout >= self.probe_interval {
            return Err(Error::ProbeTimeout {
                timeout: self.probe_timeout,
                interval: self.probe_interval,
            });
        }
        if self.suspicion_multiplier == 0 || self.suspicion_max_factor == 0 {
            return Err(Error::InvalidConfig(
                "suspicion multipliers must be at least 1".into(),
            ));
        }
        if self.retransmit_multiplier == 0 {
            return Err(Error::InvalidConfig(
                "retransmit_multiplier must be at least 1".into(),
            ));
        }
        if self.max_members < 2 {
            return Err(Error::InvalidConfig(
                "max_members must be at least 2".into(),
            ));
        }
        if self.max_piggyback == 0 {
            return Err(Error::InvalidConfig(
                "max_piggyback must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The shortest suspicion for a cluster of `n` members.
    pub fn suspicion_min(&self, n: usize) -> Duration {
        let scale = (n.max(10) as f64).log10();
        self.probe_interval
            .mul_f64(f64::from(self.suspicion_multiplier) * scale)
    }

    /// How many times an update is piggybacked in a cluster of `n`.
    pub fn retransmits(&self, n: usize) -> u32 {
        self.retransmit_multiplier * ((n + 1) as f64).log10().ceil().max(1.0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        Config::default().validate().unwrap();
        let bad = Config {
            probe_timeout: Duration::from_secs(2),
            ..Config::default()
        };
        assert!(matches!(bad.validate(), Err(Error::ProbeTimeout { .. })));
        let zero = Config {
            max_piggyback: 0,
            ..Config::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn timeouts_scale_with_log_n() {
        let c = Config::default();
        assert_eq!(c.suspicion_min(5), Duration::from_secs(4));
        assert_eq!(c.suspicion_min(1000), Duration::from_secs(12));
        assert_eq!(c.retransmits(9), 4);
        assert_eq!(c.retransmits(1000), 16);
    }
}
