//! Endpoint sets and how one endpoint is picked from them.
//!
//! An [`EndpointSet`] is long-lived: it is rebuilt only when its membership changes, so the
//! balancer state inside it (today a round-robin cursor; later least-request/EWMA scores and
//! outlier ejections) survives configuration swaps. [`Balance`] is the seam where the
//! resilience work plugs in other policies.

use std::sync::atomic::{AtomicUsize, Ordering};

/// One endpoint a request can be sent to: a sidecar's mesh address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Target {
    pub(crate) address: String,
    pub(crate) weight: u32,
}

/// Picks the index of the next endpoint, skipping the ones already tried for this request.
pub(crate) trait Balance: Send + Sync {
    fn pick(&self, targets: &[Target], tried: &[usize]) -> Option<usize>;
}

/// Weighted round robin: with equal weights, plain rotation; otherwise each endpoint gets
/// `weight` consecutive slots out of every `sum(weights)`.
#[derive(Default)]
pub(crate) struct RoundRobin {
    cursor: AtomicUsize,
}

impl Balance for RoundRobin {
    fn pick(&self, targets: &[Target], tried: &[usize]) -> Option<usize> {
        if targets.is_empty() || tried.len() >= targets.len() {
            return None;
        }
        let total: usize = targets.iter().map(|t| t.weight.max(1) as usize).sum();
        for _ in 0..total {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % total;
            let index = slot_owner(targets, slot);
            if !tried.contains(&index) {
                return Some(index);
            }
        }
        (0..targets.len()).find(|i| !tried.contains(i))
    }
}

fn slot_owner(targets: &[Target], slot: usize) -> usize {
    let mut acc = 0;
    for (i, t) in targets.iter().enumerate() {
        acc += t.weight.max(1) as usize;
        if slot < acc {
            return i;
        }
    }
    targets.len() - 1
}

/// The endpoints behind one cluster or one discovered app id, with their balancer.
pub(crate) struct EndpointSet {
    pub(crate) targets: Vec<Target>,
    balancer: Box<dyn Balance>,
}

impl EndpointSet {
    pub(crate) fn round_robin(mut targets: Vec<Target>) -> Self {
        targets.sort();
        EndpointSet {
            targets,
            balancer: Box::new(RoundRobin::default()),
        }
    }

    pub(crate) fn pick(&self, tried: &[usize]) -> Option<(usize, &Target)> {
        let index = self.balancer.pick(&self.targets, tried)?;
        Some((index, &self.targets[index]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(weights: &[u32]) -> Vec<Target> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Target {
                address: format!("127.0.0.1:{}", 1000 + i),
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn round_robin_rotates_over_equal_endpoints() {
        let set = EndpointSet::round_robin(targets(&[1, 1, 1]));
        let picks: Vec<usize> = (0..6).map(|_| set.pick(&[]).unwrap().0).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_give_proportional_slots() {
        let set = EndpointSet::round_robin(targets(&[3, 1]));
        let picks: Vec<usize> = (0..8).map(|_| set.pick(&[]).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|i| **i == 0).count(), 6);
    }

    #[test]
    fn tried_endpoints_are_skipped_and_none_is_left_when_all_were_tried() {
        let set = EndpointSet::round_robin(targets(&[1, 1]));
        for _ in 0..4 {
            assert_eq!(set.pick(&[0]).unwrap().0, 1);
        }
        assert!(set.pick(&[0, 1]).is_none());
        assert!(EndpointSet::round_robin(vec![]).pick(&[]).is_none());
    }
}
