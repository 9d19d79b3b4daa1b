//! Endpoint sets and how one endpoint is picked from them.
//!
//! An [`EndpointSet`] is rebuilt when its membership changes; the [`Endpoint`]s in it are
//! shared by address, so their pools and statistics survive. [`Balance`] is the seam where
//! least-request, peak-EWMA or ring-hash policies plug in; a pick may skip endpoints this
//! request already tried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::endpoint::{Endpoint, Endpoints};

/// A member of a set: an endpoint and its weight.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) weight: u32,
}

/// Picks the index of the next member, skipping the ones in `tried`.
pub(crate) trait Balance: Send + Sync {
    fn pick(&self, members: &[Member], tried: &[usize]) -> Option<usize>;
}

/// Weighted round robin: with equal weights, plain rotation; otherwise each endpoint gets
/// `weight` consecutive slots out of every `sum(weights)`.
#[derive(Default)]
pub(crate) struct RoundRobin {
    cursor: AtomicUsize,
}

impl Balance for RoundRobin {
    fn pick(&self, members: &[Member], tried: &[usize]) -> Option<usize> {
        if members.is_empty() || tried.len() >= members.len() {
            return None;
        }
        if members.len() == 1 {
            return Some(0);
        }
        let total: usize = members.iter().map(|m| m.weight.max(1) as usize).sum();
        for _ in 0..total {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % total;
            let index = slot_owner(members, slot);
            if !tried.contains(&index) {
                return Some(index);
            }
        }
        (0..members.len()).find(|i| !tried.contains(i))
    }
}

fn slot_owner(members: &[Member], slot: usize) -> usize {
    let mut acc = 0;
    for (i, m) in members.iter().enumerate() {
        acc += m.weight.max(1) as usize;
        if slot < acc {
            return i;
        }
    }
    members.len() - 1
}

/// The endpoints behind one cluster, one discovered app id, or the local app.
pub(crate) struct EndpointSet {
    pub(crate) members: Vec<Member>,
    balancer: Box<dyn Balance>,
}

impl EndpointSet {
    /// A round-robin set over `(address, weight)` pairs (sorted, so that the same members
    /// always make the same set).
    pub(crate) fn round_robin(endpoints: &Endpoints, mut targets: Vec<(String, u32)>) -> Self {
        targets.sort();
        EndpointSet {
            members: targets
                .into_iter()
                .map(|(address, weight)| Member {
                    endpoint: endpoints.get(&address),
                    weight,
                })
                .collect(),
            balancer: Box::new(RoundRobin::default()),
        }
    }

    /// Whether this set has exactly these members (addresses and weights, sorted).
    pub(crate) fn same_members(&self, targets: &[(String, u32)]) -> bool {
        self.members.len() == targets.len()
            && self
                .members
                .iter()
                .zip(targets)
                .all(|(m, (address, weight))| m.endpoint.address == *address && m.weight == *weight)
    }

    pub(crate) fn pick(&self, tried: &[usize]) -> Option<(usize, &Arc<Endpoint>)> {
        let index = self.balancer.pick(&self.members, tried)?;
        Some((index, &self.members[index].endpoint))
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32]) -> EndpointSet {
        let endpoints = Endpoints::default();
        let targets = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("127.0.0.1:{}", 1000 + i), *w))
            .collect();
        EndpointSet::round_robin(&endpoints, targets)
    }

    #[test]
    fn round_robin_rotates_over_equal_endpoints() {
        let set = set(&[1, 1, 1]);
        let picks: Vec<usize> = (0..6).map(|_| set.pick(&[]).unwrap().0).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_give_proportional_slots() {
        let set = set(&[3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| set.pick(&[]).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|i| **i == 0).count(), 6);
    }

    #[test]
    fn tried_endpoints_are_skipped_and_none_is_left_when_all_were_tried() {
        let two = set(&[1, 1]);
        for _ in 0..4 {
            assert_eq!(two.pick(&[0]).unwrap().0, 1);
        }
        assert!(two.pick(&[0, 1]).is_none());
        assert!(set(&[]).pick(&[]).is_none());
        assert!(set(&[1]).pick(&[0]).is_none());
    }

    #[test]
    fn sets_naming_the_same_address_share_its_endpoint() {
        let endpoints = Endpoints::default();
        let a = EndpointSet::round_robin(&endpoints, vec![("127.0.0.1:1".into(), 1)]);
        let b = EndpointSet::round_robin(
            &endpoints,
            vec![("127.0.0.1:2".into(), 1), ("127.0.0.1:1".into(), 5)],
        );
        assert!(Arc::ptr_eq(&a.members[0].endpoint, &b.members[0].endpoint));
        assert!(b.same_members(&[("127.0.0.1:1".into(), 5), ("127.0.0.1:2".into(), 1)]));
        assert!(!b.same_members(&[("127.0.0.1:1".into(), 1), ("127.0.0.1:2".into(), 1)]));
    }
}
