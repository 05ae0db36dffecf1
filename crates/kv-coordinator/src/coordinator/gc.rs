//! Tombstone collection: a delete older than the grace, held by every
//! replica, is removed everywhere.

use super::decide::{may_collect, tombstone_time};
use super::*;

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// Collects the tombstones of keys this node coordinates (it is their
    /// first replica) that are older than the grace period at `now_secs`
    /// (seconds since the Unix epoch) and that every replica holds,
    /// byte for byte; keys with a hint pending here are left alone. Each
    /// replica deletes only if its state is still that tombstone. Returns
    /// (tombstones examined, keys collected).
    ///
    /// # Errors
    ///
    /// Storage errors; replicas that cannot be reached keep their tombstones
    /// for a later pass.
    pub async fn collect_tombstones(&self, now_secs: u64) -> Result<(usize, usize)> {
        let me = self.replica.id();
        let grace = self.config.tombstone_grace.as_secs();
        let (mut examined, mut collected) = (0, 0);
        for key in self.replica.tombstone_keys() {
            let bytes = {
                let k = key.clone();
                match engine_read(&self.replica, move |r| Ok(r.engine().get(&k)?)).await? {
                    Some(bytes) => bytes,
                    None => continue,
                }
            };
            let state = Siblings::from_bytes(&bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
            let Some(newest) = tombstone_time(&state) else {
                continue;
            };
            let replicas = self.ring.preference_list(&key, self.config.n)?;
            if replicas.first() != Some(&me) {
                continue;
            }
            examined += 1;
            let hinted = {
                let (r, k) = (self.replica.clone(), key.clone());
                off_runtime(move || r.hints().holds_key(&k)).await?
            };
            if !may_collect(newest, now_secs, grace, hinted) {
                continue;
            }
            let mut everywhere = true;
            for &peer in replicas.iter().filter(|&&p| p != me) {
                let theirs = tokio::time::timeout(
                    self.config.request_timeout,
                    self.transport.read(peer, key.clone()),
                )
                .await;
                if !matches!(&theirs, Ok(Ok(Some(b))) if *b == bytes) {
                    everywhere = false;
                    break;
                }
            }
            if !everywhere {
                continue;
            }
            // Every other replica reaps first; this one only once all of
            // them confirmed. A replica that did not (it timed out, or a
            // write reached it meanwhile) keeps its tombstone, and so does
            // this node, so anti-entropy puts the tombstone back wherever
            // it went and a later pass collects it everywhere. Until then
            // no replica forgets the delete while another still holds the
            // deleted value's dots.
            let mut confirmed = true;
            for &peer in replicas.iter().filter(|&&p| p != me) {
                let reaped = tokio::time::timeout(
                    self.config.request_timeout,
                    self.transport.reap(peer, key.clone(), bytes.clone()),
                )
                .await;
                confirmed &= matches!(reaped, Ok(Ok(true)));
            }
            if !confirmed {
                Metrics::add(&self.metrics.reaps_unconfirmed, 1);
                continue;
            }
            let reaped = {
                let (r, k, b) = (self.replica.clone(), key.clone(), bytes.clone());
                off_runtime(move || r.reap(&k, &b)).await?
            };
            if reaped {
                collected += 1;
                Metrics::add(&self.metrics.tombstones_collected, 1);
            }
        }
        Ok((examined, collected))
    }
}
