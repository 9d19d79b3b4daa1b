//! Endpoint sets and how one endpoint is picked from them.
//!
//! An [`EndpointSet`] is rebuilt when its membership or its policy changes; the [`Endpoint`]s
//! in it are shared by address, so their pools and statistics survive. Policies
//! (`Cluster.spec.loadBalancer`): weighted round robin, and two power-of-two-choices policies
//! — least-request and Linkerd's peak-EWMA — which pick two distinct random endpoints and send
//! to the cheaper. A pick may skip endpoints this request already tried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use outrigger_config::{HashOn, LoadBalancer};

use super::endpoint::{Endpoint, Endpoints};

fn balancer(policy: LoadBalancer, members: &[Member]) -> Box<dyn Balance> {
    match policy {
        LoadBalancer::RingHash => Box::new(RingHash::new(members)),
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

/// Picks the index of the next member, skipping the ones in `tried`. `key` is the request's
/// hash key, for the policies that hash (`None` when the request has none).
pub(crate) trait Balance: Send + Sync {
    fn pick(&self, members: &[Member], tried: &[usize], key: Option<u64>) -> Option<usize>;
}

/// Weighted round robin: with equal weights, plain rotation; otherwise each endpoint gets
/// `weight` consecutive slots out of every `sum(weights)`.
#[derive(Default)]
pub(crate) struct RoundRobin {
    cursor: AtomicUsize,
}

impl Balance for RoundRobin {
    fn pick(&self, members: &[Member], tried: &[usize], _key: Option<u64>) -> Option<usize> {
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
    /// The cost of an endpoint, compared with the other candidate.
    cost: fn(&Endpoint, &Endpoint) -> f64,
}

impl Balance for PowerOfTwo {
    fn pick(&self, members: &[Member], tried: &[usize], _key: Option<u64>) -> Option<usize> {
        // A first attempt (nothing tried) picks among all members without building a list.
        if tried.is_empty() {
            return match members.len() {
                0 => None,
                1 => Some(0),
                n => Some(self.cheaper(members, |i| i, n)),
            };
        }
        let open: Vec<usize> = (0..members.len()).filter(|i| !tried.contains(i)).collect();
        match open.len() {
            0 => None,
            1 => Some(open[0]),
            n => Some(self.cheaper(members, |i| open[i], n)),
        }
    }
}

impl PowerOfTwo {
    /// Of two distinct random candidates among `n` (`index` maps a candidate to a member),
    /// the member that costs less.
    fn cheaper(&self, members: &[Member], index: impl Fn(usize) -> usize, n: usize) -> usize {
        let first = fastrand::usize(..n);
        let mut second = fastrand::usize(..n - 1);
        if second >= first {
            second += 1;
        }
        let (first, second) = (index(first), index(second));
        let cost = |i: usize, other: usize| {
            let member = &members[i];
            (self.cost)(&member.endpoint, &members[other].endpoint)
                / f64::from(member.weight.max(1))
        };
        if cost(second, first) < cost(first, second) {
            second
        } else {
            first
        }
    }
}

/// Consistent hashing (ketama-style): each member owns `POINTS_PER_WEIGHT × weight` points
/// on a ring of u64 hashes of `address#i`; a key goes to the owner of the first point at or
/// after its hash. Adding a member takes over only the arcs its points land on — about 1/N of
/// the keys. A request with no key goes round robin; a tried owner passes to the next owner
/// along the ring.
struct RingHash {
    ring: Vec<(u64, usize)>,
    fallback: RoundRobin,
}

const POINTS_PER_WEIGHT: u32 = 160;
/// The most points a ring holds (weights beyond are scaled down), so a ring is bounded.
const MAX_RING_POINTS: usize = 100_000;

impl RingHash {
    fn new(members: &[Member]) -> RingHash {
        let total: u64 = members.iter().map(|m| u64::from(m.weight.max(1))).sum();
        let scale =
            (MAX_RING_POINTS as f64 / (total * u64::from(POINTS_PER_WEIGHT)) as f64).min(1.0);
        let mut ring = Vec::new();
        for (index, member) in members.iter().enumerate() {
            let points =
                (u64::from(member.weight.max(1)) as f64 * f64::from(POINTS_PER_WEIGHT) * scale)
                    .max(1.0);
            for point in 0..points as u32 {
                ring.push((
                    hash_key(&format!("{}#{point}", member.endpoint.address)),
                    index,
                ));
            }
        }
        ring.sort_unstable();
        RingHash {
            ring,
            fallback: RoundRobin::default(),
        }
    }
}

impl Balance for RingHash {
    fn pick(&self, members: &[Member], tried: &[usize], key: Option<u64>) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(members, tried, None);
        };
        if self.ring.is_empty() || tried.len() >= members.len() {
            return None;
        }
        let start = self.ring.partition_point(|(point, _)| *point < key);
        (0..self.ring.len())
            .map(|i| self.ring[(start + i) % self.ring.len()].1)
            .find(|index| !tried.contains(index))
    }
}

/// A 64-bit hash that is the same in every sidecar, whatever toolchain built it (FNV-1a,
/// then a 64-bit finalizer so nearby keys spread over the ring): sidecars of two versions
/// must agree on where a key goes during a rolling upgrade.
pub(crate) fn hash_key(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

fn least_request_cost(endpoint: &Endpoint, _other: &Endpoint) -> f64 {
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
    /// What a `ringHash` set hashes.
    pub(crate) hash_on: Option<HashOn>,
    balancer: Box<dyn Balance>,
}

impl EndpointSet {
    /// A round-robin set over `(address, weight)` pairs (sorted, so that the same members
    /// always make the same set).
    pub(crate) fn round_robin(endpoints: &Endpoints, targets: Vec<(String, u32)>) -> Self {
        EndpointSet::new(endpoints, targets, LoadBalancer::RoundRobin, None)
    }

    /// A set over `(address, weight)` pairs with the given policy.
    pub(crate) fn new(
        endpoints: &Endpoints,
        mut targets: Vec<(String, u32)>,
        policy: LoadBalancer,
        hash_on: Option<HashOn>,
    ) -> Self {
        targets.sort();
        let members: Vec<Member> = targets
            .into_iter()
            .map(|(address, weight)| Member {
                endpoint: endpoints.get(&address),
                weight,
            })
            .collect();
        EndpointSet {
            policy,
            hash_on,
            balancer: balancer(policy, &members),
            members,
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
        self.pick_for(tried, None)
    }

    /// The same, for a request with this hash key. Endpoints outlier detection ejected are
    /// skipped — at most a tenth of the set (at least one), and never all that is left.
    pub(crate) fn pick_for(
        &self,
        tried: &[usize],
        key: Option<u64>,
    ) -> Option<(usize, &Arc<Endpoint>)> {
        if self.members.len() > 1 {
            let now = super::endpoint::millis_now();
            let out =
                |i: &usize| !tried.contains(i) && self.members[*i].endpoint.is_ejected_at(now);
            // The common case, nothing ejected, allocates nothing.
            if !(0..self.members.len()).any(|i| out(&i)) {
                let index = self.balancer.pick(&self.members, tried, key)?;
                return Some((index, &self.members[index].endpoint));
            }
            let most = (self.members.len() / 10).max(1);
            let ejected: Vec<usize> = (0..self.members.len()).filter(out).take(most).collect();
            if !ejected.is_empty() && tried.len() + ejected.len() < self.members.len() {
                let skip: Vec<usize> = tried.iter().copied().chain(ejected).collect();
                if let Some(index) = self.balancer.pick(&self.members, &skip, key) {
                    return Some((index, &self.members[index].endpoint));
                }
            }
        }
        let index = self.balancer.pick(&self.members, tried, key)?;
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
        EndpointSet::new(&endpoints, targets, policy, None)
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
        assert!(counts[0] > 500 && counts[1] > 500, "{counts:?}");
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

    #[test]
    fn ring_hash_keeps_keys_in_place_and_a_joining_endpoint_takes_about_a_quarter() {
        let endpoints = Endpoints::default();
        let targets = |n: usize| -> Vec<(String, u32)> {
            (0..n)
                .map(|i| (format!("10.0.0.{}:15008", i + 1), 1))
                .collect()
        };
        let three = EndpointSet::new(&endpoints, targets(3), LoadBalancer::RingHash, None);
        let four = EndpointSet::new(&endpoints, targets(4), LoadBalancer::RingHash, None);
        let owner = |set: &EndpointSet, key: &str| {
            let (_, endpoint) = set.pick_for(&[], Some(hash_key(key))).unwrap();
            endpoint.address.clone()
        };
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let mut moved = 0;
        let mut counts = std::collections::HashMap::new();
        for key in &keys {
            let before = owner(&three, key);
            assert_eq!(
                owner(&three, key),
                before,
                "the same key, the same endpoint"
            );
            *counts.entry(before.clone()).or_insert(0) += 1;
            let after = owner(&four, key);
            if after != before {
                moved += 1;
                assert_eq!(
                    after, "10.0.0.4:15008",
                    "a moved key moves to the new endpoint"
                );
            }
        }
        assert!(
            (300..=700).contains(&moved),
            "{moved} of 2000 keys moved (1/4 is 500)"
        );
        assert!(counts.values().all(|c| *c > 450), "spread: {counts:?}");
        // A tried owner passes the key along the ring; no key falls back to rotation.
        let (first, _) = three.pick_for(&[], Some(hash_key("user-1"))).unwrap();
        let (next, _) = three.pick_for(&[first], Some(hash_key("user-1"))).unwrap();
        assert_ne!(first, next);
        assert!(three.pick_for(&[0, 1, 2], Some(1)).is_none());
        let rotation: Vec<usize> = (0..3)
            .map(|_| three.pick_for(&[], None).unwrap().0)
            .collect();
        assert_eq!(rotation, vec![0, 1, 2]);
    }

    #[test]
    fn five_consecutive_failures_eject_an_endpoint_from_the_rotation() {
        let set = policy_set(LoadBalancer::RoundRobin, 3);
        let failed = super::super::endpoint::Outcome {
            status: Some(503),
            latency: std::time::Duration::from_millis(1),
            failure: None,
        };
        for _ in 0..4 {
            set.members[1].endpoint.report(&failed);
        }
        assert!(!set.members[1].endpoint.is_ejected(), "four are not enough");
        set.members[1].endpoint.report(&failed);
        assert!(set.members[1].endpoint.is_ejected());
        let picks: Vec<usize> = (0..6).map(|_| set.pick(&[]).unwrap().0).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        // Never all that is left: with the others tried, the ejected one still serves.
        assert_eq!(set.pick(&[0, 2]).unwrap().0, 1);
        // At most a tenth of the set (at least one): a second ejection is not honoured.
        for _ in 0..5 {
            set.members[2].endpoint.report(&failed);
        }
        let picks: Vec<usize> = (0..6).map(|_| set.pick(&[]).unwrap().0).collect();
        assert!(picks.contains(&2), "{picks:?}");
    }
}
