//! Ring changes never conflict: before a change (join, leave, remove,
//! replace) streams any data, its node asks the owners of the ring it
//! changes to promise it the next epoch. Each owner promises an epoch to
//! one change at a time, for a while (renewed while the change runs); the
//! change goes ahead only with a majority of the owners' promises, and
//! checks it still holds them just before it installs its ring. Two
//! majorities of one ring share an owner, so two changes of the same ring
//! cannot both install its next epoch: the second is refused at once,
//! before it moves anything, with the name of the change that holds it.

use super::*;
use crate::proto::{ProposalReply, RingProposal};

/// How long an owner keeps a promise that is not renewed (a proposer that
/// died frees the epoch after this).
pub(super) const PROMISE_TTL: Duration = Duration::from_secs(30);
/// How often a running change renews its promises.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long an owner has to answer a proposal.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// An epoch this node promised to a change.
#[derive(Debug, Clone)]
pub(super) struct Promise {
    epoch: u64,
    proposer: NodeId,
    change: String,
    until: Instant,
}

/// The decision of an owner on a proposal, given its ring epoch and the
/// promise it holds (a state machine: tested with controlled time).
fn decide(
    held: &mut Option<Promise>,
    my_epoch: u64,
    asked: &RingProposal,
    now: Instant,
) -> ProposalReply {
    let proposer = NodeId(asked.proposer);
    let refuse = |holder: u64, change: String| ProposalReply {
        granted: false,
        epoch: my_epoch,
        holder,
        holder_change: change,
    };
    let grant = ProposalReply {
        granted: true,
        epoch: my_epoch,
        holder: 0,
        holder_change: String::new(),
    };
    if asked.release {
        if held
            .as_ref()
            .is_some_and(|p| p.epoch == asked.epoch && p.proposer == proposer)
        {
            *held = None;
        }
        return grant;
    }
    if asked.epoch <= my_epoch {
        return refuse(0, format!("this node already holds ring epoch {my_epoch}"));
    }
    if let Some(p) = held.as_ref()
        && p.until > now
        && p.proposer != proposer
        && p.epoch >= asked.epoch
    {
        return refuse(p.proposer.0, p.change.clone());
    }
    *held = Some(Promise {
        epoch: asked.epoch,
        proposer,
        change: asked.change.clone(),
        until: now + PROMISE_TTL,
    });
    grant
}

/// The promises a running change holds: renewed in the background until
/// the change ends, released when it is dropped.
pub(super) struct Lease {
    cluster: Arc<Cluster>,
    epoch: u64,
    change: String,
    voters: Vec<(NodeId, String)>,
    renew: JoinHandle<()>,
}

impl Lease {
    /// Checks, just before the change installs its ring, that a majority
    /// still promises its epoch to it.
    pub(super) async fn confirm(&self) -> Result<(), ClusterError> {
        self.cluster
            .gather(&self.voters, self.epoch, &self.change)
            .await
            .map(|_| ())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        let (cluster, voters, epoch) = (self.cluster.clone(), self.voters.clone(), self.epoch);
        tokio::spawn(async move {
            let release = RingProposal {
                epoch,
                proposer: cluster.settings.id.0,
                change: String::new(),
                release: true,
            };
            join_all(
                voters
                    .iter()
                    .map(|v| cluster.ask_promise(v, release.clone())),
            )
            .await;
        });
    }
}

impl Cluster {
    /// Answers a proposal of the next ring epoch.
    pub fn answer_proposal(&self, asked: &RingProposal) -> ProposalReply {
        let my_epoch = self.epoch();
        decide(&mut self.promise.lock(), my_epoch, asked, Instant::now())
    }

    /// Asks one owner (this node itself without a call).
    async fn ask_promise(
        &self,
        (id, addr): &(NodeId, String),
        asked: RingProposal,
    ) -> Result<ProposalReply, String> {
        if *id == self.settings.id {
            return Ok(self.answer_proposal(&asked));
        }
        let mut client = self.transport.bulk(addr).map_err(|e| e.to_string())?;
        match tokio::time::timeout(ASK_TIMEOUT, client.propose_ring(asked)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err("did not answer in time".into()),
        }
    }

    /// Asks every owner in `voters` to promise `epoch` to `change`;
    /// succeeds with a majority of promises, else says who holds it.
    async fn gather(
        &self,
        voters: &[(NodeId, String)],
        epoch: u64,
        change: &str,
    ) -> Result<usize, ClusterError> {
        let asked = RingProposal {
            epoch,
            proposer: self.settings.id.0,
            change: change.to_string(),
            release: false,
        };
        let replies = join_all(voters.iter().map(|v| self.ask_promise(v, asked.clone()))).await;
        let needed = voters.len() / 2 + 1;
        let granted = replies
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.granted))
            .count();
        if granted >= needed {
            return Ok(granted);
        }
        if let Some(held) = replies
            .iter()
            .flatten()
            .find(|r| !r.granted && r.holder != 0)
        {
            return Err(ClusterError::Conflict(format!(
                "ring epoch {epoch} is promised to another change ({} by n{}); retry once it is done",
                held.holder_change, held.holder
            )));
        }
        if let Some(stale) = replies.iter().flatten().find(|r| r.epoch >= epoch) {
            return Err(ClusterError::Conflict(format!(
                "the ring changed meanwhile ({}); retry",
                stale.holder_change
            )));
        }
        let silent: Vec<String> = voters
            .iter()
            .zip(&replies)
            .filter_map(|((id, _), r)| r.as_ref().err().map(|e| format!("{id}: {e}")))
            .collect();
        Err(ClusterError::Unavailable(format!(
            "{change} needs the promise of {needed} of the ring's {} owners and has {granted}; not answering: {}",
            voters.len(),
            silent.join("; ")
        )))
    }

    /// Gets a majority of `base`'s owners to promise its next epoch to
    /// `change`, and keeps the promises renewed until the lease is
    /// dropped.
    ///
    /// # Errors
    ///
    /// `Aborted` when another change holds the epoch or the ring moved on;
    /// `Unavailable` when too few owners answer.
    pub(super) async fn propose(
        self: &Arc<Self>,
        base: &RingState,
        change: String,
    ) -> Result<Lease, ClusterError> {
        let epoch = base.epoch + 1;
        let voters: Vec<(NodeId, String)> = base
            .members
            .iter()
            .map(|m| (NodeId(m.id), m.addr.clone()))
            .collect();
        let outcome = self.gather(&voters, epoch, &change).await;
        let renew = {
            let weak = Arc::downgrade(self);
            let (voters, change) = (voters.clone(), change.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    let Some(this) = weak.upgrade() else { return };
                    if let Err(e) = this.gather(&voters, epoch, &change).await {
                        tracing::warn!(error = %e, "ring change: renewing the promises failed");
                    }
                }
            })
        };
        // Dropped on failure too: promises some owners gave are released.
        let lease = Lease {
            cluster: self.clone(),
            epoch,
            change,
            voters,
            renew,
        };
        outcome.map(|_| lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(epoch: u64, proposer: u64) -> RingProposal {
        RingProposal {
            epoch,
            proposer,
            change: format!("change of n{proposer}"),
            release: false,
        }
    }

    fn release(epoch: u64, proposer: u64) -> RingProposal {
        RingProposal {
            release: true,
            ..ask(epoch, proposer)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_epoch_is_promised_to_one_change_at_a_time() {
        let mut held = None;
        let t0 = Instant::now();
        assert!(decide(&mut held, 4, &ask(5, 1), t0).granted);
        // Renewal by the holder.
        assert!(decide(&mut held, 4, &ask(5, 1), t0).granted);
        // Another change of the same ring is refused, and told whose it is.
        let refused = decide(&mut held, 4, &ask(5, 2), t0);
        assert!(!refused.granted);
        assert_eq!(
            (refused.holder, refused.holder_change.as_str()),
            (1, "change of n1")
        );
        // Even one based on an older ring.
        assert!(!decide(&mut held, 4, &ask(4, 2), t0).granted);
        // A release by another node does not free it; the holder's does.
        assert!(decide(&mut held, 4, &release(5, 2), t0).granted);
        assert!(!decide(&mut held, 4, &ask(5, 2), t0).granted);
        assert!(decide(&mut held, 4, &release(5, 1), t0).granted);
        assert!(decide(&mut held, 4, &ask(5, 2), t0).granted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_promise_lapses_unless_renewed_and_stale_proposals_are_refused() {
        let mut held = None;
        let t0 = Instant::now();
        assert!(decide(&mut held, 4, &ask(5, 1), t0).granted);
        let before = t0 + PROMISE_TTL - Duration::from_millis(1);
        assert!(!decide(&mut held, 4, &ask(5, 2), before).granted);
        // Its proposer died: after the TTL another change may have it.
        assert!(decide(&mut held, 4, &ask(5, 2), t0 + PROMISE_TTL).granted);
        // A proposal for an epoch this node already holds is stale.
        let stale = decide(&mut held, 5, &ask(5, 3), t0 + PROMISE_TTL);
        assert!(!stale.granted);
        assert_eq!((stale.epoch, stale.holder), (5, 0));
        // A newer base moves past an older promise.
        assert!(decide(&mut held, 5, &ask(6, 3), t0 + PROMISE_TTL).granted);
    }
}
