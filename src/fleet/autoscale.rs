//! Autoscaling a pool on its queue depth: how many agents the demand asks for, how long a
//! lower demand must last before agents go, and which slots run the agents. Pure: the
//! AgentPool controller feeds it the queue, the clock and what its caches observed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// The pool's unfinished KernelJobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    pub waiting: i64,
    pub running: i64,
}

impl Demand {
    pub fn total(self) -> i64 {
        self.waiting.max(0).saturating_add(self.running.max(0))
    }
}

/// Agents the demand asks for: running + waiting + `min_idle`, at most `slots` and
/// `max_agents`, at least 0.
pub fn recommend(demand: Demand, min_idle: i64, max_agents: Option<i64>, slots: i64) -> i64 {
    let cap = max_agents.map_or(slots, |m| m.min(slots)).max(0);
    demand.total().saturating_add(min_idle.max(0)).clamp(0, cap)
}

/// Entries a [`Stabilizer`] keeps at most (a pool whose demand changes at every reconcile
/// for a whole delay: the oldest go first, which can only shorten the delay).
const MAX_HISTORY: usize = 4096;

/// The scale-down delay, like the HorizontalPodAutoscaler's stabilization window: the
/// desired count is the highest recommendation of the last `delay`. A higher
/// recommendation applies at once; a lower one once every higher one is `delay` old.
#[derive(Clone, Debug, Default)]
pub struct Stabilizer {
    /// (since, recommendation) in time order: each holds from its time until the next's.
    history: VecDeque<(Instant, i64)>,
}

/// What a [`Stabilizer`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stabilized {
    pub desired: i64,
    /// When the desired count may drop next (a reconcile is due then).
    pub recheck_in: Option<Duration>,
}

impl Stabilizer {
    /// Records `recommended` at `now` and returns the desired count. The first call after
    /// the controller starts seeds the history with the agents the pool `runs` now, so a
    /// restart never removes agents before a whole delay has passed.
    pub fn update(&mut self, now: Instant, recommended: i64, delay: Duration, runs: i64) -> Stabilized {
        if self.history.is_empty() {
            self.history.push_back((now, runs.max(0)));
        }
        let seed_only = self.history.len() == 1;
        match self.history.back_mut() {
            Some((_, r)) if *r == recommended => {}
            // Replaced at the same instant (never the seed): it was in force for no time.
            Some((at, r)) if *at == now && !seed_only => *r = recommended,
            _ => self.history.push_back((now, recommended)),
        }
        // An entry is out of the window once its successor started `delay` ago or earlier.
        while self.history.len() > 1
            && self.history.get(1).is_some_and(|(next, _)| now.saturating_duration_since(*next) >= delay)
        {
            self.history.pop_front();
        }
        while self.history.len() > MAX_HISTORY {
            self.history.pop_front();
        }
        let desired = self.history.iter().map(|(_, r)| *r).max().unwrap_or(recommended);
        // The desired count drops once every entry holding it has left the window.
        let recheck_in = (desired > recommended)
            .then(|| {
                self.history
                    .iter()
                    .zip(self.history.iter().skip(1))
                    .filter(|((_, r), _)| *r == desired)
                    .map(|(_, (next, _))| (*next + delay).saturating_duration_since(now))
                    .max()
            })
            .flatten();
        Stabilized { desired, recheck_in }
    }
}

/// One slot the pool may run an agent on (on a node where it may create agents now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    pub gpunode: String,
    pub slot: u32,
    /// The live agent on the slot, if any (terminating ones are [`SlotAgent::Leaving`]).
    pub agent: SlotAgent,
    /// The GpuNode records the slot certified for the pool (its agent starts without
    /// re-running certification).
    pub certified: bool,
    /// The slot failed recently and waits out its backoff.
    pub backoff: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotAgent {
    None,
    /// Terminating: the slot is free once it is gone.
    Leaving,
    /// A live agent: `busy` when it runs a job (or nobody knows), `available` when Running
    /// and Ready.
    Live {
        busy: bool,
        available: bool,
    },
}

/// The slots that run agents: every busy agent (never removed), then up to `target` in
/// total, preferring what costs least and keeps most: live available agents, then live
/// starting ones, then free slots, then slots in backoff or still emptying; within each,
/// certified slots first, then in (node, slot) order, so nodes fill one after the other
/// and the same slots are chosen again and again.
pub fn choose_slots(slots: &[SlotView], target: i64) -> BTreeSet<(String, u32)> {
    let rank = |s: &SlotView| -> (u8, bool) {
        let class = match s.agent {
            SlotAgent::Live { busy: true, .. } => 0,
            SlotAgent::Live { available: true, .. } => 1,
            SlotAgent::Live { available: false, .. } => 2,
            SlotAgent::None if !s.backoff => 3,
            SlotAgent::None => 4,
            SlotAgent::Leaving => 5,
        };
        (class, !s.certified)
    };
    let mut order: Vec<&SlotView> = slots.iter().collect();
    order.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| (&a.gpunode, a.slot).cmp(&(&b.gpunode, b.slot))));
    let mut chosen = BTreeSet::new();
    let target = usize::try_from(target.max(0)).unwrap_or(usize::MAX);
    for s in order {
        let busy = matches!(s.agent, SlotAgent::Live { busy: true, .. });
        if busy || chosen.len() < target {
            chosen.insert((s.gpunode.clone(), s.slot));
        }
    }
    chosen
}

/// The chosen slots per node.
pub fn by_node(chosen: &BTreeSet<(String, u32)>) -> BTreeMap<String, BTreeSet<u32>> {
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (node, slot) in chosen {
        out.entry(node.clone()).or_default().insert(*slot);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recommendation_is_demand_plus_idle_within_the_slots() {
        let d = |waiting, running| Demand { waiting, running };
        for waiting in 0..20 {
            for running in 0..20 {
                for min_idle in 0..5 {
                    for max in [None, Some(0), Some(3), Some(30)] {
                        for slots in [0, 1, 16] {
                            let r = recommend(d(waiting, running), min_idle, max, slots);
                            let cap = max.map_or(slots, |m: i64| m.min(slots));
                            assert_eq!(
                                r,
                                (waiting + running + min_idle).min(cap),
                                "{waiting} {running} {min_idle} {max:?} {slots}"
                            );
                            assert!(r >= 0 && r <= slots);
                        }
                    }
                }
            }
        }
        assert_eq!(recommend(d(0, 0), 0, None, 16), 0, "scale to zero");
        assert_eq!(recommend(d(0, 0), 2, None, 16), 2, "minIdle held while idle");
        assert_eq!(recommend(d(40, 0), 2, None, 16), 16, "a burst fills every slot");
        assert_eq!(recommend(d(-3, -1), -2, Some(-1), 16), 0, "nonsense stays in range");
    }

    const DELAY: Duration = Duration::from_secs(60);

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_the_delay() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut s = Stabilizer::default();
        assert_eq!(s.update(at(0), 2, DELAY, 0), Stabilized { desired: 2, recheck_in: None });
        assert_eq!(s.update(at(5), 16, DELAY, 2).desired, 16, "up at once");
        // The queue drains at 30 s: 16 is held for 60 s from then.
        assert_eq!(s.update(at(30), 2, DELAY, 16), Stabilized { desired: 16, recheck_in: Some(DELAY) });
        assert_eq!(
            s.update(at(60), 2, DELAY, 16),
            Stabilized { desired: 16, recheck_in: Some(Duration::from_secs(30)) }
        );
        assert_eq!(s.update(at(60), 2, DELAY, 16).desired, 16, "the same instant twice");
        assert_eq!(s.update(at(89), 2, DELAY, 16).desired, 16);
        assert_eq!(s.update(at(90), 2, DELAY, 16), Stabilized { desired: 2, recheck_in: None });
        // A short dip and a new burst: the high value holds through the dip.
        assert_eq!(s.update(at(100), 10, DELAY, 2).desired, 10);
        assert_eq!(s.update(at(110), 4, DELAY, 10).desired, 10);
        assert_eq!(s.update(at(120), 8, DELAY, 10).desired, 10);
        // 10 was replaced at 110: it leaves the window at 170.
        assert_eq!(s.update(at(170), 8, DELAY, 10).desired, 8, "10 left the window at 170");
        assert_eq!(s.update(at(171), 3, DELAY, 8).desired, 8);
        assert_eq!(s.update(at(231), 3, DELAY, 8).desired, 3);
    }

    #[test]
    fn no_delay_follows_the_recommendation_and_a_restart_waits_a_whole_delay() {
        let t0 = Instant::now();
        let mut s = Stabilizer::default();
        assert_eq!(s.update(t0, 16, Duration::ZERO, 0).desired, 16);
        assert_eq!(s.update(t0 + Duration::from_secs(1), 2, Duration::ZERO, 16).desired, 2);
        // A fresh controller finds 16 agents and a recommendation of 2.
        let mut fresh = Stabilizer::default();
        assert_eq!(fresh.update(t0, 2, DELAY, 16), Stabilized { desired: 16, recheck_in: Some(DELAY) });
        assert_eq!(fresh.update(t0 + DELAY, 2, DELAY, 16).desired, 2);
    }

    #[test]
    fn the_desired_count_is_the_highest_recommendation_of_the_window() {
        // Against a brute-force model over random step sequences.
        let t0 = Instant::now();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..200 {
            let delay = Duration::from_secs(next(50));
            let mut s = Stabilizer::default();
            let mut seen: Vec<(u64, i64)> = Vec::new();
            let mut t = 0;
            for _ in 0..40 {
                t += next(20);
                let r = i64::try_from(next(10)).unwrap_or(0);
                let got = s.update(t0 + Duration::from_secs(t), r, delay, 0);
                if seen.is_empty() {
                    seen.push((t, 0));
                } else if seen.len() > 1 && seen.last().is_some_and(|(at, _)| *at == t) {
                    // Replaced at the same instant: never in force.
                    seen.pop();
                }
                seen.push((t, r));
                // The value in force at each instant of [t - delay, t].
                let from = t.saturating_sub(delay.as_secs());
                let in_force_at_from = seen.iter().rev().find(|(at, _)| *at <= from).map(|(_, v)| *v);
                let later = seen.iter().filter(|(at, _)| *at > from).map(|(_, v)| *v);
                let want = in_force_at_from.into_iter().chain(later).max().unwrap_or(r);
                assert_eq!(got.desired, want, "t={t} delay={delay:?} seen={seen:?}");
                assert_eq!(got.recheck_in.is_some(), want > r);
                if let Some(d) = got.recheck_in {
                    assert!(!d.is_zero() && d <= delay, "{d:?}");
                }
            }
        }
    }

    fn view(node: &str, slot: u32, agent: SlotAgent, certified: bool) -> SlotView {
        SlotView { gpunode: node.into(), slot, agent, certified, backoff: false }
    }

    fn free(node: &str, slot: u32) -> SlotView {
        view(node, slot, SlotAgent::None, false)
    }

    const IDLE: SlotAgent = SlotAgent::Live { busy: false, available: true };
    const BUSY: SlotAgent = SlotAgent::Live { busy: true, available: true };
    const STARTING: SlotAgent = SlotAgent::Live { busy: false, available: false };

    fn names(chosen: &BTreeSet<(String, u32)>) -> Vec<String> {
        chosen.iter().map(|(n, s)| format!("{n}/{s}")).collect()
    }

    #[test]
    fn empty_slots_fill_nodes_in_order() {
        let slots: Vec<SlotView> = ["b", "a"].iter().flat_map(|n| (0..4).map(move |s| free(n, s))).collect();
        assert_eq!(names(&choose_slots(&slots, 2)), ["a/0", "a/1"]);
        assert_eq!(names(&choose_slots(&slots, 5)), ["a/0", "a/1", "a/2", "a/3", "b/0"]);
        assert_eq!(choose_slots(&slots, 100).len(), 8);
        assert!(choose_slots(&slots, 0).is_empty());
        assert!(choose_slots(&slots, -1).is_empty());
    }

    #[test]
    fn certified_slots_are_preferred_and_kept() {
        let mut slots: Vec<SlotView> = (0..4).map(|s| free("a", s)).collect();
        slots[3].certified = true;
        slots[2].certified = true;
        assert_eq!(names(&choose_slots(&slots, 1)), ["a/2"]);
        assert_eq!(names(&choose_slots(&slots, 3)), ["a/0", "a/2", "a/3"]);
        // Scaling down keeps the certified agents.
        for s in &mut slots {
            s.agent = IDLE;
        }
        assert_eq!(names(&choose_slots(&slots, 2)), ["a/2", "a/3"]);
    }

    #[test]
    fn live_agents_are_kept_before_free_slots_are_used() {
        let slots = vec![free("a", 0), free("a", 1), view("b", 0, IDLE, false), view("b", 1, STARTING, false)];
        assert_eq!(names(&choose_slots(&slots, 1)), ["b/0"], "no churn: the running agent stays");
        assert_eq!(names(&choose_slots(&slots, 2)), ["b/0", "b/1"]);
        assert_eq!(names(&choose_slots(&slots, 3)), ["a/0", "b/0", "b/1"]);
    }

    #[test]
    fn busy_agents_are_never_removed() {
        let slots = vec![view("a", 0, IDLE, true), view("a", 1, BUSY, false), view("b", 0, BUSY, false), free("b", 1)];
        assert_eq!(names(&choose_slots(&slots, 0)), ["a/1", "b/0"], "scale to zero waits for the busy ones");
        assert_eq!(names(&choose_slots(&slots, 1)), ["a/1", "b/0"]);
        assert_eq!(names(&choose_slots(&slots, 3)), ["a/0", "a/1", "b/0"]);
    }

    #[test]
    fn leaving_and_backoff_slots_come_last() {
        let mut back = free("a", 0);
        back.backoff = true;
        let slots = vec![back, view("a", 1, SlotAgent::Leaving, true), free("b", 0)];
        assert_eq!(names(&choose_slots(&slots, 1)), ["b/0"]);
        assert_eq!(names(&choose_slots(&slots, 2)), ["a/0", "b/0"]);
        assert_eq!(names(&choose_slots(&slots, 3)), ["a/0", "a/1", "b/0"]);
    }

    #[test]
    fn the_choice_is_stable_and_exact_over_every_small_fleet() {
        // Every assignment of agent states and certification to 2 nodes x 2 slots, every target.
        let states = [SlotAgent::None, SlotAgent::Leaving, IDLE, BUSY, STARTING];
        let cells: Vec<(&str, u32)> = vec![("a", 0), ("a", 1), ("b", 0), ("b", 1)];
        let mut combos = 1usize;
        for _ in &cells {
            combos *= states.len() * 2;
        }
        for mut code in 0..combos {
            let slots: Vec<SlotView> = cells
                .iter()
                .map(|(n, s)| {
                    let st = states[code % states.len()];
                    code /= states.len();
                    let certified = code % 2 == 1;
                    code /= 2;
                    view(n, *s, st, certified)
                })
                .collect();
            let busy = slots.iter().filter(|s| matches!(s.agent, SlotAgent::Live { busy: true, .. })).count();
            for target in 0..=5i64 {
                let chosen = choose_slots(&slots, target);
                assert_eq!(chosen, choose_slots(&slots, target), "deterministic");
                let want = busy.max(usize::try_from(target).unwrap_or(0).min(slots.len()));
                assert_eq!(chosen.len(), want, "{slots:?} target {target}");
                for s in &slots {
                    let kept = chosen.contains(&(s.gpunode.clone(), s.slot));
                    if matches!(s.agent, SlotAgent::Live { busy: true, .. }) {
                        assert!(kept, "busy agent removed: {s:?}");
                    }
                }
                // Growing the target never drops a chosen slot (no churn while scaling up).
                let bigger = choose_slots(&slots, target + 1);
                assert!(chosen.is_subset(&bigger), "{slots:?} {target}");
                // A live agent is only dropped when every chosen slot is a live agent too.
                let live = |s: &SlotView| matches!(s.agent, SlotAgent::Live { .. });
                if slots.iter().any(|s| live(s) && !chosen.contains(&(s.gpunode.clone(), s.slot))) {
                    assert!(slots.iter().filter(|s| chosen.contains(&(s.gpunode.clone(), s.slot))).all(live));
                }
            }
        }
    }
}
