//! Buildkite's REST rate limits: a fixed window per organization (scope `rest`) and per
//! user/token (scope `rest_user`). Every authenticated request counts, rejected ones too
//! (so `current` in a 429 body can exceed `limit`). A window starts with the first request
//! after the previous window expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::RateLimitConfig;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u64,
    saw_429: bool,
    /// When the window's first 429 was decided.
    first_429_at: Option<Instant>,
}

impl Window {
    fn fresh(now: Instant) -> Self {
        Self { started: now, count: 0, saw_429: false, first_429_at: None }
    }
}

/// The state of one scope after a request was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeState {
    pub limit: u64,
    pub current: u64,
    pub remaining: u64,
    /// Seconds until the window resets (rounded up, at least 1 while a window is open).
    pub reset: u64,
}

impl ScopeState {
    pub fn exceeded(&self) -> bool {
        self.current > self.limit
    }
}

/// Outcome of counting one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub org: ScopeState,
    pub user: Option<ScopeState>,
}

impl Decision {
    /// The scope that rejects the request, if any (organization first).
    pub fn rejected_by(&self) -> Option<(&'static str, ScopeState)> {
        if self.org.exceeded() {
            return Some(("rest", self.org));
        }
        match self.user {
            Some(u) if u.exceeded() => Some(("rest_user", u)),
            _ => None,
        }
    }
}

/// Requests arriving this soon after a 429 were on the wire before the client could have
/// read it (loopback round trips take a few milliseconds).
pub const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Exact counts for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RateLimitStats {
    /// Authenticated REST requests counted against the limits.
    pub counted: u64,
    /// Requests answered 429.
    pub rejected: u64,
    /// Requests received after a 429 in the same window, before that window reset, and
    /// more than [`IN_FLIGHT_GRACE`] after the 429: the client had the answer when it sent
    /// them (a request already on the wire when the 429 left is counted in
    /// `in_flight_at_429` instead).
    pub after_429_before_reset: u64,
    /// Requests that arrived after a 429 within [`IN_FLIGHT_GRACE`] of it: sent concurrently,
    /// before the client could know.
    pub in_flight_at_429: u64,
    /// Windows that saw at least one 429.
    pub windows_with_429: u64,
    /// Requests counted in the current organization window.
    pub current_window_count: u64,
}

struct Inner {
    cfg: RateLimitConfig,
    org: Window,
    users: HashMap<String, Window>,
    stats: RateLimitStats,
}

pub struct RateLimiter {
    inner: Mutex<Inner>,
}

impl RateLimiter {
    pub fn new(cfg: RateLimitConfig) -> Self {
        let now = Instant::now();
        Self {
            inner: Mutex::new(Inner {
                cfg,
                org: Window::fresh(now),
                users: HashMap::new(),
                stats: RateLimitStats::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> RateLimitConfig {
        self.lock().cfg.clone()
    }

    /// Replaces the limits; `reset` also starts fresh windows.
    pub fn set_config(&self, cfg: RateLimitConfig, reset: bool) {
        let mut g = self.lock();
        g.cfg = cfg;
        if reset {
            let now = Instant::now();
            g.org = Window::fresh(now);
            g.users.clear();
        }
    }

    /// Clears counters and windows.
    pub fn reset(&self) {
        let mut g = self.lock();
        let now = Instant::now();
        g.org = Window::fresh(now);
        g.users.clear();
        g.stats = RateLimitStats::default();
    }

    pub fn stats(&self) -> RateLimitStats {
        let mut g = self.lock();
        let now = Instant::now();
        let window = window_len(&g.cfg);
        roll(&mut g.org, now, window);
        g.stats.current_window_count = g.org.count;
        g.stats
    }

    /// Counts one authenticated request of `user` and says whether it is allowed.
    pub fn check(&self, user: &str) -> Decision {
        let now = Instant::now();
        let mut g = self.lock();
        let window = window_len(&g.cfg);
        let (org_limit, user_limit) = (g.cfg.org_limit, g.cfg.user_limit);

        roll(&mut g.org, now, window);
        let mut first_429 = g.org.first_429_at;
        g.org.count += 1;
        let org = state(&g.org, org_limit, now, window);

        let user_state = if user_limit > 0 {
            let w = g.users.entry(user.to_string()).or_insert_with(|| Window::fresh(now));
            roll(w, now, window);
            first_429 = match (first_429, w.first_429_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            w.count += 1;
            Some(state(w, user_limit, now, window))
        } else {
            None
        };

        let decision = Decision { org, user: user_state };
        g.stats.counted += 1;
        if let Some(at) = first_429 {
            if now.duration_since(at) > IN_FLIGHT_GRACE {
                g.stats.after_429_before_reset += 1;
            } else {
                g.stats.in_flight_at_429 += 1;
            }
        }
        if let Some((scope, _)) = decision.rejected_by() {
            g.stats.rejected += 1;
            let first_in_window = if scope == "rest" {
                g.org.first_429_at.get_or_insert(now);
                !std::mem::replace(&mut g.org.saw_429, true)
            } else {
                g.users.get_mut(user).is_some_and(|w| {
                    w.first_429_at.get_or_insert(now);
                    !std::mem::replace(&mut w.saw_429, true)
                })
            };
            if first_in_window {
                g.stats.windows_with_429 += 1;
            }
        }
        decision
    }

    /// Header values without counting (for answers to unauthenticated requests).
    pub fn peek(&self) -> ScopeState {
        let now = Instant::now();
        let mut g = self.lock();
        let window = window_len(&g.cfg);
        let limit = g.cfg.org_limit;
        roll(&mut g.org, now, window);
        state(&g.org, limit, now, window)
    }
}

fn window_len(cfg: &RateLimitConfig) -> Duration {
    Duration::from_secs_f64(cfg.window_secs.max(0.001))
}

fn roll(w: &mut Window, now: Instant, window: Duration) {
    if now.duration_since(w.started) >= window {
        *w = Window::fresh(now);
    }
}

fn state(w: &Window, limit: u64, now: Instant, window: Duration) -> ScopeState {
    let left = window.saturating_sub(now.duration_since(w.started));
    let reset = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    ScopeState {
        limit,
        current: w.count,
        remaining: limit.saturating_sub(w.count),
        reset: reset.max(u64::from(w.count > 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rejects() {
        let rl = RateLimiter::new(RateLimitConfig { org_limit: 3, user_limit: 0, window_secs: 60.0 });
        for i in 1..=3 {
            let d = rl.check("u");
            assert!(d.rejected_by().is_none());
            assert_eq!(d.org.remaining, 3 - i);
        }
        let d = rl.check("u");
        let (scope, s) = d.rejected_by().unwrap();
        assert_eq!(scope, "rest");
        assert_eq!(s.current, 4);
        // Right after the 429: on the wire before the client could know.
        rl.check("u");
        let st = rl.stats();
        assert_eq!((st.after_429_before_reset, st.in_flight_at_429), (0, 1));
        // Later in the same window: the client ignored the 429.
        std::thread::sleep(IN_FLIGHT_GRACE + std::time::Duration::from_millis(20));
        rl.check("u");
        let st = rl.stats();
        assert_eq!(st.rejected, 3);
        assert_eq!((st.after_429_before_reset, st.in_flight_at_429), (1, 1));
        assert_eq!(st.windows_with_429, 1);
    }

    #[test]
    fn user_scope() {
        let rl = RateLimiter::new(RateLimitConfig { org_limit: 100, user_limit: 1, window_secs: 60.0 });
        assert!(rl.check("a").rejected_by().is_none());
        assert_eq!(rl.check("a").rejected_by().map(|r| r.0), Some("rest_user"));
        assert!(rl.check("b").rejected_by().is_none());
    }
}
