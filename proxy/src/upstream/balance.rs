//! Endpoint sets and how one endpoint is picked from them.
//!
//! An [`EndpointSet`] is rebuilt when its membership or its policy changes; the [`Endpoint`]s
//! in it are shared by address, so their pools and statistics survive. Policies
//! (`Cluster.spec.loadBalancer`): weighted round robin, and two power-of-two-choices policies
//! — least-request and Linkerd's peak-EWMA — which pick two distinct random endpoints and send
//! to the cheaper. A pick may skip endpoints this request already tried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use outrigger_config::LoadBalancer;

use super::endpoint::{Endpoint, Endpoints};

fn balancer(policy: LoadBalancer) -> Box<dyn Balance> {
    match policy {
        LoadBalancer::RoundRobin => Box::new(RoundRobin::default()),
        LoadBalancer::LeastRequest => Box::new(PowerOfTwo {
            cost: least_request_cost,
        }),
        LoadBalancer::PeakEwma => Box::new(PowerOfTwo {
            cost: Endpoint::peak_ewma_cost,
        }),
    }
}

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

/// Power of two choices: two distinct random members not yet tried; the one `cost` rates
/// lower (the first of the two on a tie). Weights divide the cost.
struct PowerOfTwo {
    cost: fn(&Endpoint) -> f64,
}

impl Balance for PowerOfTwo {
    fn pick(&self, members: &[Member], tried: &[usize]) -> Option<usize> {
        let open: Vec<usize> = (0..members.len()).filter(|i| !tried.contains(i)).collect();
        match open.len() {
            0 => None,
            1 => Some(open[0]),
            n => {
                let first = fastrand::usize(..n);
                let mut second = fastrand::usize(..n - 1);
                if second >= first {
                    second += 1;
                }
                let cost = |i: usize| {
                    let member = &members[open[i]];
                    (self.cost)(&member.endpoint) / f64::from(member.weight.max(1))
                };
                if cost(second) < cost(first) {
                    Some(open[second])
                } else {
                    Some(open[first])
                }
            }
        }
    }
}

fn least_request_cost(endpoint: &Endpoint) -> f64 {
    f64::from(endpoint.stats.in_flight.load(Ordering::Relaxed))
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
    pub(crate) policy: LoadBalancer,
    balancer: Box<dyn Balance>,
}

impl EndpointSet {
    /// A round-robin set over `(address, weight)` pairs (sorted, so that the same members
    /// always make the same set).
    pub(crate) fn round_robin(endpoints: &Endpoints, targets: Vec<(String, u32)>) -> Self {
        EndpointSet::new(endpoints, targets, LoadBalancer::RoundRobin)
    }

    /// A set over `(address, weight)` pairs with the given policy.
    pub(crate) fn new(
        endpoints: &Endpoints,
        mut targets: Vec<(String, u32)>,
        policy: LoadBalancer,
    ) -> Self {
        targets.sort();
        EndpointSet {
            policy,
            members: targets
                .into_iter()
                .map(|(address, weight)| Member {
                    endpoint: endpoints.get(&address),
                    weight,
                })
                .collect(),
            balancer: balancer(policy),
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

    fn policy_set(policy: LoadBalancer, n: usize) -> EndpointSet {
        let endpoints = Endpoints::default();
        let targets = (0..n)
            .map(|i| (format!("127.0.0.1:{}", 2000 + i), 1))
            .collect();
        EndpointSet::new(&endpoints, targets, policy)
    }

    #[test]
    fn least_request_never_picks_the_busier_of_two() {
        let set = policy_set(LoadBalancer::LeastRequest, 2);
        let _busy: Vec<_> = (0..3).map(|_| set.members[1].endpoint.begin()).collect();
        for _ in 0..50 {
            assert_eq!(set.pick(&[]).unwrap().0, 0);
        }
        assert_eq!(set.pick(&[0]).unwrap().0, 1, "tried ones are skipped");
        assert!(set.pick(&[0, 1]).is_none());
    }

    #[test]
    fn least_request_spreads_over_idle_endpoints() {
        let set = policy_set(LoadBalancer::LeastRequest, 3);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[set.pick(&[]).unwrap().0] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
    }

    #[test]
    fn peak_ewma_avoids_a_slow_endpoint_whenever_it_is_paired() {
        let set = policy_set(LoadBalancer::PeakEwma, 3);
        let report = |i: usize, ms: u64| {
            set.members[i]
                .endpoint
                .report(&super::super::endpoint::Outcome {
                    status: Some(200),
                    latency: std::time::Duration::from_millis(ms),
                    failure: None,
                })
        };
        report(0, 1);
        report(1, 1);
        report(2, 21);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[set.pick(&[]).unwrap().0] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1000 && counts[1] > 1000, "{counts:?}");
        // Busy enough, the fast ones cost more than the slow one: 1 ms × 30 > 21 ms × 1.
        let _busy: Vec<_> = (0..29)
            .flat_map(|_| {
                [
                    set.members[0].endpoint.begin(),
                    set.members[1].endpoint.begin(),
                ]
            })
            .collect();
        let slow = (0..600).filter(|_| set.pick(&[]).unwrap().0 == 2).count();
        // Every pair holding it (two in three) now goes to the slow one.
        assert!((300..=500).contains(&slow), "{slow} of 600");
    }
}
