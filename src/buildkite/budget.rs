//! The request budget: one per organization, shared by every caller of a [`Client`].
//!
//! Buildkite counts REST requests per organization (and per user) over fixed windows and
//! answers `429` beyond the limit. The budget makes sure the client never sends a request
//! it knows would be refused:
//!
//! * **Our cap.** At most `requests_per_minute` (default 180) per window, below Buildkite's
//!   200 to leave room for humans and other tools. The window starts with the first request
//!   after the previous one ended and lasts `rate_limit_window` (+ `reset_margin`).
//! * **The server's view.** Every answer's `RateLimit-Limit`/`-Remaining`/`-Reset` (and the
//!   `RateLimit-User-*` scope when present) tighten the estimate: the server's limit wins
//!   when it is lower than ours, the server's count (which includes other users of the
//!   organization) wins when it is higher, and `RateLimit-Reset` moves the window end.
//!   Requests still in flight when an answer was produced are counted conservatively (as
//!   if the server had not seen them yet), so concurrency and reordering never make the
//!   estimate too low.
//! * **Cold start.** Until the first answer arrives only one request is in flight: a
//!   restarted operator learns how much of the current window is already spent before it
//!   sends a burst.
//! * **429.** After a `429` nothing at all is sent until `RateLimit-Reset` (or the body's
//!   `reset`) plus the margin has passed.
//! * **Priorities.** [`Priority::Submit`] and [`Priority::Cancel`] may spend the whole
//!   window; [`Priority::Refresh`] leaves a reserve (default 10 % of the limit, at least one
//!   request when the limit allows it) for them. Waiters are released urgent class first,
//!   then first come, first served.
//!
//! [`Client`]: super::Client

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

mod permit;
mod points;
mod types;

pub use permit::Permit;
use permit::PermitState;
pub use points::{PointsBudget, PointsConfig, PointsPermit, PointsSnapshot, TooCostly};
pub use types::{BudgetConfig, BudgetSnapshot, Priority, RateLimitHeaders, ScopeHeaders, ThrottleScope};

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 4)
}

/// One rate-limit scope (organization or user).
///
/// The estimated count of the server's current window is the larger of
/// * our own requests that may land in it: those in flight when it opened plus those sent
///   since (`local_base + sent_total`), and
/// * the highest count the server reported in this window (`best_used`, which includes the
///   requests of other users of the organization) plus our requests not known to be part
///   of it (`unconfirmed`: in flight, or answered without rate-limit headers).
///
/// The server's count only grows within a window, so an answer reporting `used` proves
/// that every request it answered earlier in the window with a count of at most `used`
/// is included; any request handled after the highest-count answer is still unanswered
/// and thus unconfirmed. The estimate is exact when nothing is in flight, never too low
/// whatever the order of the answers, and follows other users' traffic as of the latest
/// answer (the gap between our cap and Buildkite's limit covers what they send after it).
#[derive(Debug)]
struct Scope {
    /// Our cap (organization scope only).
    cap: Option<u32>,
    /// The server's latest `RateLimit-Limit`.
    server_limit: Option<u32>,
    /// End of the current window, if one is open.
    window_end: Option<Instant>,
    /// `sent_total` when the current window opened: answers to requests with a sequence
    /// number at or below it may describe an earlier window; their counts are ignored.
    window_start_seq: u64,
    local_base: i64,
    best_used: Option<u64>,
    unconfirmed: u64,
}

impl Scope {
    fn new(cap: Option<u32>) -> Self {
        Scope {
            cap,
            server_limit: None,
            window_end: None,
            window_start_seq: 0,
            local_base: 0,
            best_used: None,
            unconfirmed: 0,
        }
    }

    fn limit(&self) -> u32 {
        match (self.cap, self.server_limit) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => u32::MAX,
        }
    }

    fn used(&self, sent_total: u64) -> u64 {
        let local = u64::try_from(self.local_base.saturating_add(int(sent_total)).max(0)).unwrap_or(0);
        let observed = self.best_used.map_or(0, |m| m.saturating_add(self.unconfirmed));
        local.max(observed)
    }

    fn remaining(&self, sent_total: u64) -> u32 {
        let left = u64::from(self.limit()).saturating_sub(self.used(sent_total));
        u32::try_from(left).unwrap_or(u32::MAX)
    }

    fn reserve(&self, fraction: f64) -> u32 {
        let limit = self.limit();
        if limit == u32::MAX {
            return 0;
        }
        // Rounded up so that a small positive fraction keeps at least one request, but never
        // the whole window.
        let r = (f64::from(limit) * fraction).ceil();
        let r = if r.is_finite() && r > 0.0 { r.min(f64::from(u32::MAX)) as u32 } else { 0 };
        r.min(limit.saturating_sub(1))
    }

    /// Opens a window in which `possibly_counted` of our requests may already be (in flight
    /// or answered without a usable count) and of which the server told nothing yet.
    fn open(&mut self, end: Option<Instant>, start_seq: u64, possibly_counted: u64, sent_total: u64) {
        self.window_end = end;
        self.window_start_seq = start_seq;
        self.local_base = int(possibly_counted) - int(sent_total);
        self.best_used = None;
        self.unconfirmed = possibly_counted;
    }

    /// Closes the window if it has ended: the server's count starts from zero, only the
    /// requests still in flight can be in the new window.
    fn roll(&mut self, now: Instant, sent_total: u64, in_flight: u64, cfg: &BudgetConfig) {
        if let Some(end) = self.window_end
            && now >= end
        {
            let end = (in_flight > 0).then(|| now + cfg.window + cfg.reset_margin);
            self.open(end, sent_total, in_flight, sent_total);
        }
    }

    fn on_send(&mut self, now: Instant, cfg: &BudgetConfig) {
        if self.window_end.is_none() {
            self.window_end = Some(now + cfg.window + cfg.reset_margin);
        }
        self.unconfirmed += 1;
    }

    /// Takes in the headers of the answer to request `seq`, sent while `in_flight_at_send`
    /// others were in flight.
    fn observe(
        &mut self,
        h: &ScopeHeaders,
        seq: u64,
        in_flight_at_send: u64,
        sent_total: u64,
        now: Instant,
        cfg: &BudgetConfig,
    ) {
        if let Some(l) = h.limit {
            self.server_limit = Some(l);
        }
        if seq <= self.window_start_seq {
            // Sent before the current window opened: its count may describe the old one,
            // and it stays unconfirmed.
            return;
        }
        if let Some(reset) = h.reset {
            let end = now + reset + cfg.reset_margin;
            match self.window_end {
                // The server is a whole window ahead of us (it rolled over earlier than we
                // assumed): follow it. Of our requests, this one, those in flight when it was
                // sent and those sent after it may be in the server's new window.
                Some(ours) if end > ours + cfg.window / 2 => {
                    let possibly = in_flight_at_send + 1 + sent_total.saturating_sub(seq);
                    self.open(Some(end), seq - 1, possibly, sent_total);
                }
                _ => self.window_end = Some(end),
            }
        }
        if let (Some(limit), Some(remaining)) = (h.limit, h.remaining) {
            let used = u64::from(limit.saturating_sub(remaining));
            self.best_used = Some(self.best_used.map_or(used, |m| m.max(used)));
            self.unconfirmed = self.unconfirmed.saturating_sub(1);
        }
    }

    /// A 429: the window is spent until `until`.
    fn throttle(&mut self, seq: u64, until: Instant, sent_total: u64) {
        let limit = u64::from(self.limit());
        self.best_used = Some(self.best_used.map_or(limit, |m| m.max(limit)));
        self.local_base = self.local_base.max(int(limit) - int(sent_total));
        self.window_end = match self.window_end {
            Some(end) if seq <= self.window_start_seq => Some(end.max(until)),
            _ => Some(until),
        };
    }

    /// A permit that was never used.
    fn refund(&mut self) {
        self.local_base -= 1;
        self.unconfirmed = self.unconfirmed.saturating_sub(1);
    }
}

#[derive(Debug)]
struct State {
    cfg: BudgetConfig,
    /// Requests granted so far (sequence numbers are 1, 2, …).
    sent_total: u64,
    in_flight: u64,
    /// Whether any answer was seen yet (cold start: one request at a time until then).
    calibrated: bool,
    org: Scope,
    user: Option<Scope>,
    throttled_until: Option<Instant>,
    /// Consecutive attempts that got a 5xx or no answer (an outage, or a flaky network).
    failures: u32,
    /// Set while Buildkite looks down: nothing is sent before, then one probe at a time.
    paused_until: Option<Instant>,
    /// Waiters by (class, arrival).
    waiters: BTreeMap<(u8, u64), oneshot::Sender<Permit>>,
    next_waiter: u64,
}

/// Consecutive failures that make an outage: from then on requests pause (1 s, doubling up
/// to 30 s) and go out one probe at a time until an answer comes back.
pub const OUTAGE_AFTER: u32 = 2;
const OUTAGE_PAUSE_MAX: Duration = Duration::from_secs(30);

/// Pause after `failures` consecutive failures (none below [`OUTAGE_AFTER`]).
pub fn outage_pause(failures: u32) -> Option<Duration> {
    let n = failures.checked_sub(OUTAGE_AFTER)?;
    Some(Duration::from_secs(1u64 << n.min(5)).min(OUTAGE_PAUSE_MAX))
}

impl State {
    fn record_failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if let Some(pause) = outage_pause(self.failures) {
            let until = now + pause;
            self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
        }
    }

    fn scopes(&self) -> impl Iterator<Item = &Scope> {
        std::iter::once(&self.org).chain(self.user.as_ref())
    }

    fn roll(&mut self, now: Instant) {
        if self.throttled_until.is_some_and(|t| now >= t) {
            self.throttled_until = None;
        }
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        let (sent, in_flight) = (self.sent_total, self.in_flight);
        self.org.roll(now, sent, in_flight, &self.cfg);
        if let Some(u) = self.user.as_mut() {
            u.roll(now, sent, in_flight, &self.cfg);
        }
    }

    /// Whether a request of class `class` may be sent now (ignoring the queue).
    fn can_take(&self, class: u8, now: Instant) -> bool {
        if self.throttled_until.is_some_and(|t| now < t) || self.paused_until.is_some_and(|t| now < t) {
            return false;
        }
        // During an outage, one probe at a time until an answer comes back.
        if self.failures >= OUTAGE_AFTER && self.in_flight > 0 {
            return false;
        }
        if !self.calibrated && self.in_flight > 0 {
            return false;
        }
        self.scopes().all(|s| {
            let need = if class == 0 { 1 } else { s.reserve(self.cfg.reserve_fraction).saturating_add(1) };
            s.remaining(self.sent_total) >= need
        })
    }

    fn queued_ahead(&self, class: u8) -> bool {
        self.waiters.keys().any(|(c, _)| *c <= class)
    }

    /// The next moment the budget changes by itself (a window ends, a throttle expires).
    fn earliest_change(&self) -> Option<Instant> {
        let mut t: Option<Instant> = match (self.throttled_until, self.paused_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for s in self.scopes() {
            if let Some(end) = s.window_end {
                t = Some(t.map_or(end, |x| x.min(end)));
            }
        }
        t
    }

    /// When waiting callers should look again, without news from answers.
    fn next_deadline(&self, now: Instant) -> Instant {
        // Without any deadline (only possible while in flight requests are unanswered, or
        // with a zero limit), look again after a while.
        self.earliest_change().filter(|t| *t > now).unwrap_or_else(|| now + self.cfg.window.min(Duration::from_secs(1)))
    }

    fn grant(&mut self, shared: &Arc<Shared>, now: Instant) -> Permit {
        self.sent_total += 1;
        let permit = Permit {
            shared: Arc::clone(shared),
            seq: self.sent_total,
            in_flight_at_send: self.in_flight,
            state: PermitState::Granted,
        };
        self.in_flight += 1;
        let cfg = self.cfg.clone();
        self.org.on_send(now, &cfg);
        if let Some(u) = self.user.as_mut() {
            u.on_send(now, &cfg);
        }
        permit
    }

    /// Takes back a permit that was never used (its request was not sent).
    fn refund(&mut self, permit: &mut Permit) {
        if permit.state == PermitState::Done {
            return;
        }
        if permit.state == PermitState::Granted {
            self.org.refund();
            if let Some(u) = self.user.as_mut() {
                u.refund();
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        permit.state = PermitState::Done;
    }

    /// Releases waiters in order while the budget allows.
    fn drain(&mut self, shared: &Arc<Shared>, now: Instant) {
        self.roll(now);
        while let Some((&key, _)) = self.waiters.first_key_value() {
            if !self.can_take(key.0, now) {
                break;
            }
            let Some(tx) = self.waiters.remove(&key) else { break };
            let permit = self.grant(shared, now);
            if let Err(mut p) = tx.send(permit) {
                // The waiter gave up in the meantime.
                self.refund(&mut p);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes waiters when the next deadline moved closer.
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The shared request budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget {
    shared: Arc<Shared>,
}

/// Removes a waiter that gave up.
struct WaiterGuard<'a> {
    shared: &'a Arc<Shared>,
    key: (u8, u64),
    armed: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.shared.lock();
            if st.waiters.remove(&self.key).is_some() {
                st.drain(self.shared, Instant::now());
            }
        }
    }
}

impl Budget {
    pub fn new(cfg: BudgetConfig) -> Self {
        let org = Scope::new(Some(cfg.limit));
        Budget {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    cfg,
                    sent_total: 0,
                    in_flight: 0,
                    calibrated: false,
                    org,
                    user: None,
                    throttled_until: None,
                    failures: 0,
                    paused_until: None,
                    waiters: BTreeMap::new(),
                    next_waiter: 0,
                }),
                changed: Notify::new(),
            }),
        }
    }

    /// Waits until a request of `priority` may be sent and returns its permit.
    pub async fn acquire(&self, priority: Priority) -> Permit {
        let class = priority.class();
        let (mut rx, key) = {
            let mut st = self.shared.lock();
            let now = Instant::now();
            st.roll(now);
            if !st.queued_ahead(class) && st.can_take(class, now) {
                return st.grant(&self.shared, now);
            }
            let (tx, rx) = oneshot::channel();
            let key = (class, st.next_waiter);
            st.next_waiter += 1;
            st.waiters.insert(key, tx);
            (rx, key)
        };
        let mut guard = WaiterGuard { shared: &self.shared, key, armed: true };
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = self.shared.lock().next_deadline(Instant::now());
            tokio::select! {
                biased;
                r = &mut rx => match r {
                    Ok(permit) => {
                        guard.armed = false;
                        return permit;
                    }
                    Err(_) => {
                        // The sender is only dropped by `drain` after a successful send or
                        // by the guard; re-register to be safe.
                        let (tx, new_rx) = oneshot::channel();
                        let mut st = self.shared.lock();
                        st.waiters.insert(key, tx);
                        rx = new_rx;
                    }
                },
                () = &mut notified => {
                    let mut st = self.shared.lock();
                    st.drain(&self.shared, Instant::now());
                }
                () = tokio::time::sleep_until(deadline) => {
                    let mut st = self.shared.lock();
                    st.drain(&self.shared, Instant::now());
                }
            }
        }
    }

    /// `None` when a request of `priority` could be sent right now; otherwise an estimate of
    /// the wait (zero when others are queued ahead and the window is open). Takes nothing.
    pub fn would_wait(&self, priority: Priority) -> Option<Duration> {
        let class = priority.class();
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.roll(now);
        if !st.queued_ahead(class) && st.can_take(class, now) {
            return None;
        }
        Some(st.next_deadline(now).saturating_duration_since(now))
    }

    /// Takes a permit if one is available right now, without waiting.
    pub fn try_acquire(&self, priority: Priority) -> Option<Permit> {
        let class = priority.class();
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.roll(now);
        (!st.queued_ahead(class) && st.can_take(class, now)).then(|| st.grant(&self.shared, now))
    }

    pub fn snapshot(&self) -> BudgetSnapshot {
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.roll(now);
        let sent = st.sent_total;
        let binding = match &st.user {
            Some(u) if u.remaining(sent) < st.org.remaining(sent) => u,
            _ => &st.org,
        };
        let waiting_urgent = st.waiters.keys().filter(|(c, _)| *c == 0).count();
        BudgetSnapshot {
            limit: binding.limit(),
            remaining: binding.remaining(sent),
            reserve: binding.reserve(st.cfg.reserve_fraction),
            reset_in: binding.window_end.map(|e| e.saturating_duration_since(now)),
            throttled_for: st.throttled_until.map(|t| t.saturating_duration_since(now)),
            outage_pause_for: st.paused_until.map(|t| t.saturating_duration_since(now)),
            consecutive_failures: st.failures,
            in_flight: st.in_flight,
            waiting_urgent,
            waiting_refresh: st.waiters.len() - waiting_urgent,
            binding_scope: if std::ptr::eq(binding, &st.org) { "organization" } else { "user" },
            scopes: std::iter::once(("organization", &st.org))
                .chain(st.user.as_ref().map(|u| ("user", u)))
                .map(|(scope, w)| (scope, w.limit(), w.remaining(sent)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
