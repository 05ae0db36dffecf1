//! Integration tests of kv-gossip, on the seeded simulator.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::time::Duration;

use kv_core::NodeId;
use kv_gossip::sim::{Network, Sim};
use kv_gossip::{Body, Config, Gossip, Message, Meta, Status};
use proptest::prelude::*;

const PERIOD: Duration = Duration::from_secs(1);

fn periods(d: Duration) -> f64 {
    d.as_secs_f64() / PERIOD.as_secs_f64()
}

/// A cluster of `n` members all joined through member 0, converged.
fn cluster(n: usize, network: Network, seed: u64) -> Sim {
    let mut sim = Sim::new(n, Config::default(), network, seed).unwrap();
    for i in 1..n {
        sim.join(i, 0);
    }
    let took = sim.run_until(Duration::from_secs(120), Sim::converged);
    assert!(took.is_some(), "{n} members did not converge (seed {seed})");
    assert_eq!(sim.undecodable, 0);
    sim
}

fn log2(n: usize) -> f64 {
    (n as f64).log2()
}

/// Joins and failures spread in O(log N) periods; the crashed member is
/// Dead everywhere within the configured bound. Prints the table.
fn spread(n: usize, seed: u64) -> (f64, f64, f64) {
    // The newcomer is the last member; it joins once the others converged.
    let mut sim = Sim::new(n + 1, Config::default(), Network::default(), seed).unwrap();
    for i in 1..n {
        sim.join(i, 0);
    }
    let converged = sim.run_until(Duration::from_secs(300), |s| {
        let ids: Vec<usize> = (0..n).collect();
        ids.iter().all(|&o| {
            ids.iter()
                .all(|&x| o == x || s.view(o, x) == Some(Status::Alive))
        })
    });
    assert!(
        converged.is_some(),
        "seed {seed}: bootstrap of {n} did not converge"
    );
    // Join: through a member other than the seed, to exercise gossip.
    sim.join(n, n / 2);
    let join = sim
        .run_until(Duration::from_secs(120), |s| s.all_see(n, Status::Alive))
        .unwrap_or_else(|| panic!("seed {seed}: join of member {n} never reached everyone"));
    // Failure: crash member 1.
    sim.crash(1);
    let suspected = sim
        .run_until(Duration::from_secs(300), |s| {
            s.running()
                .all(|(i, _)| matches!(s.view(i, 1), Some(Status::Suspect | Status::Dead)))
        })
        .unwrap_or_else(|| panic!("seed {seed}: crash never suspected everywhere"));
    let dead_more = sim
        .run_until(Duration::from_secs(300), |s| s.all_see(1, Status::Dead))
        .unwrap_or_else(|| panic!("seed {seed}: crash never declared dead everywhere"));
    let dead = suspected + dead_more;
    // The configured bound: a few periods to be probed, the longest
    // suspicion, and dissemination.
    let config = sim.config();
    let bound = config.suspicion_min(n + 1) * config.suspicion_max_factor
        + PERIOD.mul_f64(3.0 + 3.0 * log2(n + 1));
    assert!(
        dead <= bound,
        "seed {seed}: {n} members: dead everywhere after {dead:?}, bound {bound:?}"
    );
    (periods(join), periods(suspected), periods(dead))
}

#[test]
fn join_and_failure_spread_in_logarithmic_periods() {
    println!(
        "members | join known everywhere | crash suspected everywhere | crash dead everywhere (periods)"
    );
    for (n, seed) in [(10usize, 1u64), (100, 2), (1000, 3)] {
        let (join, suspected, dead) = spread(n, seed);
        println!("{n:7} | {join:21.1} | {suspected:26.1} | {dead:21.1}");
        // O(log N): generous constant, but it must not grow linearly.
        assert!(join <= 4.0 + 3.0 * log2(n), "{n}: join took {join} periods");
        assert!(
            suspected <= 6.0 + 3.0 * log2(n),
            "{n}: suspicion took {suspected} periods"
        );
    }
}

#[test]
fn no_false_positives_with_ten_percent_loss() {
    let network = Network {
        loss: 0.10,
        ..Network::default()
    };
    let mut sim = cluster(50, network, 11);
    // Count transitions into Dead and into Suspect, per observer.
    let mut last: Vec<Vec<Option<Status>>> = vec![vec![None; 50]; 50];
    let (mut dead, mut suspected) = (0u64, 0u64);
    sim.run_for(PERIOD * 10_000, |s| {
        for (o, row) in last.iter_mut().enumerate() {
            for (x, seen) in row.iter_mut().enumerate() {
                let now = s.view(o, x);
                if now != *seen {
                    match now {
                        Some(Status::Dead) => dead += 1,
                        Some(Status::Suspect) => suspected += 1,
                        _ => {}
                    }
                    *seen = now;
                }
            }
        }
    });
    println!(
        "10% loss, 50 members, 10000 periods: {dead} false dead declarations, {suspected} suspicions (all refuted), {} messages delivered, {} dropped",
        sim.delivered, sim.dropped
    );
    assert_eq!(dead, 0, "a live member was declared dead");
    assert_eq!(sim.undecodable, 0, "every message decodes");
    // Suspicions come and go under loss; without it, all settle as Alive.
    sim.network.loss = 0.0;
    assert!(
        sim.run_until(Duration::from_secs(60), Sim::converged)
            .is_some()
    );
}

#[test]
fn partitioned_minority_is_suspected_and_refutes_after_healing() {
    let mut sim = cluster(20, Network::default(), 21);
    let minority = [17usize, 18, 19];
    let groups: Vec<u32> = (0..20).map(|i| u32::from(minority.contains(&i))).collect();
    // Short partition: suspected, then refuted once healed.
    sim.partition(groups.clone());
    let suspected = sim.run_until(Duration::from_secs(60), |s| {
        minority
            .iter()
            .all(|&m| matches!(s.view(0, m), Some(Status::Suspect)))
    });
    assert!(suspected.is_some(), "minority never suspected");
    sim.heal();
    let healed = sim.run_until(Duration::from_secs(120), Sim::converged);
    assert!(healed.is_some(), "short partition did not heal");
    let refuted = (0..20).all(|o| {
        minority
            .iter()
            .all(|&m| o == m || sim.node(m).unwrap().me().incarnation > 0)
    });
    assert!(refuted, "the minority refuted with higher incarnations");
    // Long partition: declared dead on both sides, then merged again.
    sim.partition(groups);
    let dead = sim.run_until(Duration::from_secs(300), |s| {
        minority.iter().all(|&m| s.view(0, m) == Some(Status::Dead))
            && s.view(17, 0) == Some(Status::Dead)
    });
    assert!(dead.is_some(), "long partition never declared dead");
    sim.heal();
    let merged = sim.run_until(Duration::from_secs(300), Sim::converged);
    println!(
        "long partition healed in {:.1} periods",
        periods(merged.unwrap_or_default())
    );
    assert!(merged.is_some(), "sides never merged after healing");
    assert_eq!(sim.undecodable, 0, "every message decodes");
}

#[test]
fn a_member_that_turns_unhealthy_is_known_as_such_and_back() {
    let mut sim = cluster(10, Network::default(), 17);
    // Runs until every other member sees member 4 alive and `want`.
    let spreads = |sim: &mut Sim, want: bool, what: &str| {
        let seen = sim.run_until(Duration::from_secs(60), |s| {
            s.running().filter(|(i, _)| *i != 4).all(|(_, g)| {
                g.member(NodeId(4))
                    .is_some_and(|m| m.meta.unhealthy == want && m.status == Status::Alive)
            })
        });
        assert!(seen.is_some(), "{what} did not spread");
    };
    let mut meta = sim.node(4).unwrap().me().meta.clone();
    meta.unhealthy = true;
    sim.set_meta(4, meta.clone());
    spreads(&mut sim, true, "the news");
    meta.unhealthy = false;
    sim.set_meta(4, meta.clone());
    spreads(&mut sim, false, "the recovery");
    // Unhealthy again, then restarted (as an operator does after freeing
    // the disk): the fresh member starts at incarnation 0, below what the
    // others hold, and must still replace the stale news.
    meta.unhealthy = true;
    sim.set_meta(4, meta);
    spreads(&mut sim, true, "the news again");
    sim.restart(4, 0).unwrap();
    spreads(&mut sim, false, "a restarted member's news");
}

#[test]
fn left_members_stay_left() {
    let mut sim = cluster(12, Network::default(), 31);
    sim.leave(5);
    let left = sim.run_until(Duration::from_secs(60), |s| {
        s.running()
            .filter(|(i, _)| *i != 5)
            .all(|(i, _)| s.view(i, 5) == Some(Status::Left))
    });
    assert!(left.is_some(), "leave did not reach everyone");
    // It keeps running (not crashed) but stays Left everywhere.
    let mut resurrected = false;
    sim.run_for(PERIOD * 200, |s| {
        resurrected |= s
            .running()
            .filter(|(i, _)| *i != 5)
            .any(|(i, _)| s.view(i, 5) != Some(Status::Left));
    });
    assert!(!resurrected, "a left member came back");
    assert!(sim.running().filter(|(i, _)| *i != 5).all(|(i, _)| {
        (0..12)
            .filter(|&x| x != 5 && x != i)
            .all(|x| sim.view(i, x) == Some(Status::Alive))
    }));
}

/// A departed member is remembered for `forget_after` (so its departure
/// is not undone by stale news) and forgotten everywhere soon after.
#[test]
fn a_departed_member_is_forgotten_after_forget_after_and_not_before() {
    let forget_after = Duration::from_secs(20);
    let config = Config {
        forget_after,
        ..Config::default()
    };
    let mut sim = Sim::new(8, config, Network::default(), 41).unwrap();
    for i in 1..8 {
        sim.join(i, 0);
    }
    assert!(
        sim.run_until(Duration::from_secs(120), Sim::converged)
            .is_some()
    );
    let others = |sim: &Sim| -> Vec<Option<Status>> {
        (0..8).filter(|&i| i != 5).map(|i| sim.view(i, 5)).collect()
    };
    sim.leave(5);
    // No observer learns of the departure before it happens, so none may
    // forget it before `forget_after` has passed since.
    let mut forgotten_early = false;
    let all_left = sim.run_until(forget_after, |s| {
        forgotten_early |= others(s).contains(&None);
        others(s).iter().all(|v| *v == Some(Status::Left))
    });
    let all_left = all_left.expect("the departure reached everyone");
    sim.run_for(forget_after - all_left, |s| {
        forgotten_early |= others(s).contains(&None);
    });
    assert!(!forgotten_early, "a member forgot the departure too soon");
    // Everyone learnt of it by `all_left`: by then plus `forget_after` and
    // the forgetting walk's interval, everyone has forgotten it.
    sim.run_for(all_left + Duration::from_secs(2), |_| {});
    assert!(
        others(&sim).iter().all(Option::is_none),
        "{:?}",
        others(&sim)
    );
}

#[test]
fn runs_replay_from_their_seed() {
    let run = |seed| {
        let mut sim = cluster(
            15,
            Network {
                loss: 0.05,
                ..Network::default()
            },
            seed,
        );
        sim.crash(3);
        sim.run_for(PERIOD * 30, |_| {});
        (
            sim.delivered,
            sim.dropped,
            (0..15).map(|o| sim.view(o, 3)).collect::<Vec<_>>(),
        )
    };
    assert_eq!(run(7), run(7));
}

proptest! {
    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode(&bytes);
    }
}

/// A stranger's news about a member, as it would send it.
fn invented(id: u64, incarnation: u64) -> kv_gossip::Update {
    kv_gossip::Member {
        id: NodeId(id),
        addr: format!("10.0.0.{}:7000", id % 250),
        incarnation,
        status: kv_gossip::Status::Alive,
        meta: kv_gossip::Meta::default(),
    }
}

#[test]
fn invented_members_stop_at_the_cap_and_are_counted() {
    let config = Config {
        max_members: 8,
        ..Config::default()
    };
    let mut node = Gossip::new(config, NodeId(1), "n1".into(), Meta::default(), 7).unwrap();
    // One message announcing 100 members nobody started.
    let message = Message {
        from: NodeId(1000),
        from_addr: "stranger".into(),
        body: Body::Ping { seq: 1 },
        updates: (2..102).map(|id| invented(id, 0)).collect(),
    };
    node.handle(message, Duration::ZERO);
    // The table holds at most 8 (this node included); the rest is
    // counted, not kept.
    assert_eq!(node.members().len(), 8, "{:?}", node.members());
    assert_eq!(node.members_refused(), 93);
}

#[test]
fn an_incarnation_near_the_end_of_the_counter_is_refused() {
    let mut good = Message {
        from: NodeId(2),
        from_addr: "n2".into(),
        body: Body::Suspect {
            target: NodeId(3),
            incarnation: kv_gossip::MAX_INCARNATION,
        },
        updates: vec![invented(3, kv_gossip::MAX_INCARNATION)],
    };
    assert!(Message::decode(&good.encode()).is_ok(), "2^48 is allowed");
    // In an update: a forged u64::MAX would leave member 3 unable to
    // refute (its next incarnation would overflow).
    good.updates = vec![invented(3, u64::MAX)];
    let err = Message::decode(&good.encode()).unwrap_err().to_string();
    assert!(err.contains("incarnation"), "{err}");
    // In a suspicion.
    let forged = Message {
        body: Body::Suspect {
            target: NodeId(3),
            incarnation: kv_gossip::MAX_INCARNATION + 1,
        },
        updates: vec![],
        ..good
    };
    assert!(Message::decode(&forged.encode()).is_err());
}
