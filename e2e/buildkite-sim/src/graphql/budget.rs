//! The GraphQL complexity budget: fixed windows of actual points per organization and per
//! user (docs "GraphQL resource limits"). A request is refused (429, not executed, nothing
//! charged) when its requested complexity exceeds what either window has left; otherwise
//! its requested complexity is held while it runs and replaced by its actual complexity
//! when it ends. A window starts with the first request after the previous one ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::GraphqlConfig;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    used: u64,
    generation: u64,
}

/// One scope's state for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScopeState {
    /// `organization` or `user` (the `RateLimit-Scope` header).
    pub scope: &'static str,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// Whole seconds until the window resets, rounded up (the full window when none is open).
    pub reset: u64,
}

/// Counters of one operation kind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct OpCount {
    pub requests: u64,
    pub points: u64,
}

/// Exact counts for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Every `POST /v1` that reached the endpoint (401/403 included).
    pub requests: u64,
    /// Executed (charged) requests.
    pub executed: u64,
    pub rejected_429: u64,
    /// Of `rejected_429`, refused by the per-user window.
    pub rejected_429_user: u64,
    /// Refused for a requested complexity above `max_query_complexity`.
    pub rejected_complexity: u64,
    /// Refused at parse or validation.
    pub rejected_invalid: u64,
    /// Refused at authentication (401) or for a token without `graphql` (403).
    pub rejected_auth: u64,
    pub requested_points_total: u64,
    pub actual_points_total: u64,
    /// Points charged with `POST /_sim/graphql/spend`.
    pub spent_by_sim: u64,
    /// `buildCreate`, `buildCancel` or `query` → requests executed and actual points.
    pub by_operation: BTreeMap<String, OpCount>,
}

/// A hold on the windows for one executing request.
#[derive(Debug, Clone)]
pub struct Hold {
    user: String,
    requested: u64,
    org_generation: u64,
    user_generation: Option<u64>,
}

struct Inner {
    cfg: GraphqlConfig,
    org: Option<Window>,
    users: HashMap<String, Window>,
    generation: u64,
    counts: Counts,
    /// Test control: once this many `buildCreate`s have executed, the rest of the
    /// organization's window is spent (someone else's burst, at a known point).
    spend_after_creates: Option<u64>,
}

pub struct Budget {
    inner: Mutex<Inner>,
}

fn window_len(cfg: &GraphqlConfig) -> Duration {
    Duration::from_secs_f64(cfg.window_secs.max(0.001))
}

fn roll(w: &mut Option<Window>, now: Instant, len: Duration) {
    if w.is_some_and(|w| now.duration_since(w.started) >= len) {
        *w = None;
    }
}

fn state(scope: &'static str, w: Option<&Window>, limit: u64, now: Instant, len: Duration) -> ScopeState {
    let (used, left) = match w {
        Some(w) => (w.used, len.saturating_sub(now.duration_since(w.started))),
        None => (0, len),
    };
    let reset = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    ScopeState { scope, limit, used, remaining: limit.saturating_sub(used), reset }
}

/// The decision on one request.
pub enum Admit {
    Run(Hold),
    /// Refused: the scope that refused and its state.
    Refused(ScopeState),
}

impl Budget {
    pub fn new(cfg: GraphqlConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                cfg,
                org: None,
                users: HashMap::new(),
                generation: 0,
                counts: Counts::default(),
                spend_after_creates: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> GraphqlConfig {
        self.lock().cfg.clone()
    }

    pub fn set_config(&self, cfg: GraphqlConfig) {
        self.lock().cfg = cfg;
    }

    /// Clears windows and counters.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.org = None;
        g.users.clear();
        g.counts = Counts::default();
        g.spend_after_creates = None;
    }

    pub fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.lock().counts);
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }

    fn open(g: &mut Inner, now: Instant, user: Option<&str>) {
        let len = window_len(&g.cfg);
        roll(&mut g.org, now, len);
        if g.org.is_none() {
            g.generation += 1;
            g.org = Some(Window { started: now, used: 0, generation: g.generation });
        }
        if let Some(u) = user {
            let mut w = g.users.get(u).copied();
            roll(&mut w, now, len);
            if w.is_none() {
                g.generation += 1;
                w = Some(Window { started: now, used: 0, generation: g.generation });
            }
            if let Some(w) = w {
                g.users.insert(u.to_string(), w);
            }
        }
    }

    /// Opens the windows if needed and admits a request of `requested` points from `user`.
    pub fn admit(&self, user: &str, requested: u64) -> Admit {
        let now = Instant::now();
        let mut g = self.lock();
        let user_limit = g.cfg.user_points_limit;
        Self::open(&mut g, now, (user_limit > 0).then_some(user));
        let (org_s, user_s) = Self::states_locked(&g, now, user);
        for s in std::iter::once(org_s).chain(user_s) {
            if requested > s.remaining {
                g.counts.rejected_429 += 1;
                if s.scope == "user" {
                    g.counts.rejected_429_user += 1;
                }
                return Admit::Refused(s);
            }
        }
        let org_generation = g.org.map_or(0, |w| w.generation);
        if let Some(w) = g.org.as_mut() {
            w.used = w.used.saturating_add(requested);
        }
        let user_generation = if user_limit > 0 {
            g.users.get_mut(user).map(|w| {
                w.used = w.used.saturating_add(requested);
                w.generation
            })
        } else {
            None
        };
        Admit::Run(Hold { user: user.to_string(), requested, org_generation, user_generation })
    }

    /// Replaces a hold by the actual complexity (in the windows it was taken from, if they
    /// are still open) and counts the request.
    pub fn settle(&self, hold: Hold, actual: u64, operation: &str) {
        let mut g = self.lock();
        let fix = |w: &mut Window| w.used = w.used.saturating_sub(hold.requested).saturating_add(actual);
        if let Some(w) = g.org.as_mut().filter(|w| w.generation == hold.org_generation) {
            fix(w);
        }
        if let Some(gen_) = hold.user_generation
            && let Some(w) = g.users.get_mut(&hold.user).filter(|w| w.generation == gen_)
        {
            fix(w);
        }
        let c = &mut g.counts;
        c.executed += 1;
        c.requested_points_total += hold.requested;
        c.actual_points_total += actual;
        let op = c.by_operation.entry(operation.to_string()).or_default();
        op.requests += 1;
        op.points += actual;
        let creates = op.requests;
        if operation == "buildCreate" && g.spend_after_creates.is_some_and(|n| creates >= n) {
            g.spend_after_creates = None;
            let limit = g.cfg.points_limit;
            if let Some(w) = g.org.as_mut() {
                let left = limit.saturating_sub(w.used);
                w.used = w.used.saturating_add(left);
                g.counts.spent_by_sim += left;
            }
        }
    }

    /// Spends the rest of the organization's window right after the `n`th `buildCreate`
    /// in all has executed.
    pub fn spend_after_creates(&self, n: u64) {
        self.lock().spend_after_creates = Some(n);
    }

    /// Charges `points` to the organization's window (opening one if none is open).
    pub fn spend(&self, points: u64) {
        let now = Instant::now();
        let mut g = self.lock();
        Self::open(&mut g, now, None);
        if let Some(w) = g.org.as_mut() {
            w.used = w.used.saturating_add(points);
        }
        g.counts.spent_by_sim += points;
    }

    fn states_locked(g: &Inner, now: Instant, user: &str) -> (ScopeState, Option<ScopeState>) {
        let len = window_len(&g.cfg);
        let mut org = g.org;
        roll(&mut org, now, len);
        let org_s = state("organization", org.as_ref(), g.cfg.points_limit, now, len);
        let user_s = (g.cfg.user_points_limit > 0).then(|| {
            let mut w = g.users.get(user).copied();
            roll(&mut w, now, len);
            state("user", w.as_ref(), g.cfg.user_points_limit, now, len)
        });
        (org_s, user_s)
    }

    /// The organization's and `user`'s windows now.
    pub fn states(&self, user: &str) -> (ScopeState, Option<ScopeState>) {
        let g = self.lock();
        Self::states_locked(&g, Instant::now(), user)
    }

    /// What the headers show: the scope closest to exhaustion (fewest points left;
    /// organization on a tie), docs "Accessing limit details".
    pub fn header_state(&self, user: Option<&str>) -> ScopeState {
        let (org, u) = self.states(user.unwrap_or(""));
        match (user, u) {
            (Some(_), Some(u)) if u.remaining < org.remaining => u,
            _ => org,
        }
    }

    /// Every open user window (user → state), for `/_sim/graphql`.
    pub fn user_states(&self) -> BTreeMap<String, ScopeState> {
        let g = self.lock();
        let now = Instant::now();
        let len = window_len(&g.cfg);
        g.users
            .iter()
            .filter(|(_, w)| now.duration_since(w.started) < len)
            .map(|(u, w)| (u.clone(), state("user", Some(w), g.cfg.user_points_limit, now, len)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(org: u64, user: u64) -> GraphqlConfig {
        GraphqlConfig { points_limit: org, user_points_limit: user, window_secs: 300.0, max_query_complexity: 50_000 }
    }

    #[test]
    fn holds_requested_then_charges_actual() {
        let b = Budget::new(cfg(100, 0));
        let Admit::Run(h) = b.admit("u", 60) else { panic!("refused") };
        // While it runs, 60 points are held: a second request of 50 does not fit.
        assert!(matches!(b.admit("u", 50), Admit::Refused(s) if s.remaining == 40 && s.scope == "organization"));
        b.settle(h, 10, "query");
        assert_eq!(b.states("u").0.remaining, 90);
        let c = b.counts();
        assert_eq!((c.requested_points_total, c.actual_points_total, c.rejected_429), (60, 10, 1));
    }

    #[test]
    fn user_window_refuses_first_when_smaller() {
        let b = Budget::new(cfg(100, 10));
        let Admit::Run(h) = b.admit("a", 10) else { panic!("refused") };
        b.settle(h, 10, "query");
        assert!(matches!(b.admit("a", 1), Admit::Refused(s) if s.scope == "user"));
        assert!(matches!(b.admit("b", 1), Admit::Run(_)));
        assert_eq!(b.header_state(Some("a")).scope, "user");
        assert_eq!(b.counts().rejected_429_user, 1);
    }

    #[test]
    fn the_window_goes_right_after_the_nth_create() {
        let b = Budget::new(cfg(100, 0));
        b.spend_after_creates(2);
        let Admit::Run(h) = b.admit("u", 2) else { panic!("refused") };
        b.settle(h, 2, "buildCreate");
        let Admit::Run(q) = b.admit("u", 1) else { panic!("refused") };
        b.settle(q, 1, "query");
        assert_eq!(b.states("u").0.remaining, 97, "a query is not a create");
        let Admit::Run(h) = b.admit("u", 2) else { panic!("refused") };
        b.settle(h, 2, "buildCreate");
        assert_eq!(b.states("u").0.remaining, 0);
        assert_eq!(b.counts().spent_by_sim, 95);
        assert!(matches!(b.admit("u", 1), Admit::Refused(_)));
    }
}
