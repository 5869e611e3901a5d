//! The GraphQL points budget: one per organization, shared by every caller of a client.
//!
//! Buildkite's GraphQL API has a budget of its own, per organization and without a per-user
//! limit: complexity points per window (documented as 20,000 per 5 minutes). A query is
//! refused with `429` when its *requested* complexity exceeds what is left of the window;
//! otherwise the window is charged its *actual* complexity. Every answer carries
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`. The budget makes sure the
//! client never sends a request it knows would be refused:
//!
//! * **Our share.** The effective limit is `floor(server limit × share)` (default 90 % of
//!   the server's `RateLimit-Limit`, of `assumed_limit` until an answer tells it), leaving
//!   room for humans and other tools.
//! * **The server's view.** `RateLimit-Remaining` is authoritative as of its answer. Within
//!   a window it only decreases, so the lowest value seen is kept (answers arrive out of
//!   order). The estimate subtracts from it the requested cost of every request not known
//!   to be part of that figure (in flight, or answered without the header: conservative),
//!   and the gap between the server's limit and ours, so our share is respected whatever
//!   the others spend. Our own spending (requested cost while in flight, actual cost once
//!   reported) bounds the estimate too, which is all there is before the first answer.
//! * **Cold start.** Until the first answer arrives only one request is in flight: a
//!   restarted operator learns how much of the current window is already spent first.
//! * **Windows.** `RateLimit-Reset` moves the window end (a reset far beyond it means the
//!   server rolled over earlier than we assumed: a new window is opened; one far before it
//!   is an answer from an earlier server window and is ignored). At the end the window
//!   resets to the full effective limit, only requests still in flight counting in the new
//!   one. Without requests in flight, a new window opens with the next request. Answers to
//!   requests sent before a window opened may describe the previous one: their counts are
//!   ignored and their cost stays counted.
//! * **429.** Nothing is sent until the announced reset (the body's "try again in N
//!   seconds", parsed by the caller) plus the margin; the window counts as spent until then.
//!   A refused request is not charged.
//! * **Priorities.** [`Priority::Submit`] and [`Priority::Cancel`] may spend the whole
//!   window; [`Priority::Refresh`] leaves a reserve (`reserve_fraction` of the limit) for
//!   them. Waiters are released urgent class first, then first come, first served: a
//!   waiter that does not fit holds back those behind it (no starvation of big requests).
//! * **Too costly.** A request whose cost alone exceeds the effective limit (minus the
//!   reserve for Refresh) can never be sent: [`PointsBudget::acquire`] answers
//!   [`TooCostly`] at once instead of waiting forever, also for a waiter when a lower limit
//!   is learned while it waits. The caller splits the batch or uses REST.
//! * **Permits.** [`PointsPermit::complete`] reports the answer; a permit dropped before
//!   [`PointsPermit::mark_sent`] is refunded, one dropped after it (or passed to
//!   [`PointsPermit::failed`]) stays counted at its requested cost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::{Priority, ScopeHeaders};

mod permit;

use permit::PermitState;
pub use permit::PointsPermit;

/// Settings of a [`PointsBudget`].
#[derive(Debug, Clone)]
pub struct PointsConfig {
    /// Limit assumed until an answer's `RateLimit-Limit` says otherwise (docs: 20,000 per
    /// 5 min).
    pub assumed_limit: u64,
    /// Share of the server's limit we allow ourselves (default 0.9: room for humans and tools).
    pub share: f64,
    /// Window length assumed until `RateLimit-Reset` says otherwise (300 s): a reset longer
    /// than it lengthens it.
    pub window: Duration,
    /// Share of our limit only Submit/Cancel may spend (default 0.10).
    pub reserve_fraction: f64,
    /// Added to every reset.
    pub reset_margin: Duration,
}

impl Default for PointsConfig {
    fn default() -> Self {
        PointsConfig {
            assumed_limit: 20_000,
            share: 0.9,
            window: Duration::from_secs(300),
            reserve_fraction: 0.10,
            reset_margin: Duration::from_secs(1),
        }
    }
}

/// A request whose cost can never fit in a window: send it another way or split it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a GraphQL request of {cost} points can never be sent: at most {max} fit in a window")]
pub struct TooCostly {
    /// Requested cost.
    pub cost: u64,
    /// The most a request of its priority may cost under the current limit.
    pub max: u64,
}

/// State of the points budget, for metrics and status.
#[derive(Debug, Clone, PartialEq)]
pub struct PointsSnapshot {
    /// Effective limit of a window: `floor(server limit × share)`.
    pub limit: u64,
    /// The server's `RateLimit-Limit` (or the assumed one until an answer tells it).
    pub server_limit: u64,
    /// Points that may still be spent in this window (estimate; the reserve included).
    pub remaining: u64,
    /// Points of the limit reserved for Submit and Cancel.
    pub reserve: u64,
    /// Time until the current window ends, if one is open.
    pub reset_in: Option<Duration>,
    /// Set after a 429: time until requests may be sent again.
    pub throttled_for: Option<Duration>,
    /// Requested points of the requests granted and not answered yet.
    pub in_flight_points: u64,
    /// Requests granted and not answered yet.
    pub in_flight: u64,
    /// Actual points reported by answers, in total.
    pub spent_total: u64,
    /// Requested points of all requests sent, in total (429s included).
    pub requested_total: u64,
    /// Callers waiting, urgent class (Submit, Cancel).
    pub waiting_urgent: usize,
    /// Callers waiting, Refresh.
    pub waiting_refresh: usize,
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 4).min(i64::MAX / 4)
}

/// Replaces `old` by `new` in a running total.
fn swap(total: &mut u64, old: u64, new: u64) {
    *total = total.saturating_sub(old).saturating_add(new);
}

/// Our estimate of the server's current window.
#[derive(Debug)]
struct Window {
    /// End of the window, if one is open.
    end: Option<Instant>,
    /// Whether `end` comes from a server `RateLimit-Reset` (rather than our assumption).
    confirmed: bool,
    /// Requests granted when the window opened: answers to requests numbered at or below
    /// it may describe an earlier window.
    start_seq: u64,
    /// Lowest `RateLimit-Remaining` reported in this window.
    server_min: Option<u64>,
    /// Our points in this window: requested while in flight, actual once reported.
    local_used: u64,
    /// Our points that may be in the window but not in `server_min`.
    unconfirmed: u64,
}

impl Window {
    /// A window in which our `in_flight_points` may land.
    fn open(end: Option<Instant>, confirmed: bool, start_seq: u64, in_flight_points: u64) -> Self {
        Window {
            end,
            confirmed,
            start_seq,
            server_min: None,
            local_used: in_flight_points,
            unconfirmed: in_flight_points,
        }
    }
}

/// How an answer relates to the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// It describes the current window.
    Current,
    /// Sent before the window opened: it may or may not be counted in it.
    MaybeEarlier,
    /// Its reset shows it was handled in an earlier server window.
    Earlier,
}

type Reply = Result<PointsPermit, TooCostly>;

#[derive(Debug)]
struct Waiter {
    cost: u64,
    tx: oneshot::Sender<Reply>,
}

#[derive(Debug)]
struct State {
    cfg: PointsConfig,
    /// The server's latest `RateLimit-Limit`.
    server_limit: Option<u64>,
    /// Window length: the configured one, or the longest reset seen if longer.
    window_len: Duration,
    w: Window,
    /// Requests granted so far (sequence numbers are 1, 2, …).
    seq: u64,
    in_flight: u64,
    in_flight_points: u64,
    /// Whether any answer was seen yet (cold start: one request at a time until then).
    calibrated: bool,
    throttled_until: Option<Instant>,
    spent_total: u64,
    requested_total: u64,
    /// Waiters by (class, arrival).
    waiters: BTreeMap<(u8, u64), Waiter>,
    next_waiter: u64,
}

impl State {
    fn server_limit(&self) -> u64 {
        self.server_limit.unwrap_or(self.cfg.assumed_limit)
    }

    fn limit(&self) -> u64 {
        let share = self.cfg.share.clamp(0.0, 1.0);
        // `as` saturates (NaN gives 0); the share never exceeds the server's limit.
        ((self.server_limit() as f64 * share).floor() as u64).min(self.server_limit())
    }

    fn reserve(&self) -> u64 {
        let limit = self.limit();
        let r = (limit as f64 * self.cfg.reserve_fraction.clamp(0.0, 1.0)).ceil();
        (r as u64).min(limit)
    }

    /// The most a request of `class` may cost under the current limit.
    fn max_cost(&self, class: u8) -> u64 {
        if class == 0 { self.limit() } else { self.limit().saturating_sub(self.reserve()) }
    }

    /// Points left in the window (negative when over-committed).
    fn available(&self) -> i64 {
        let limit = int(self.limit());
        let local = limit - int(self.w.local_used);
        match self.w.server_min {
            None => local,
            Some(min) => {
                let others_share = int(self.server_limit()).saturating_sub(limit).max(0);
                local.min(int(min) - int(self.w.unconfirmed) - others_share)
            }
        }
    }

    fn throttled(&self, now: Instant) -> bool {
        self.throttled_until.is_some_and(|t| now < t)
    }

    fn roll(&mut self, now: Instant) {
        if self.throttled_until.is_some_and(|t| now >= t) {
            self.throttled_until = None;
        }
        if self.w.end.is_some_and(|end| now >= end) {
            let end = (self.in_flight > 0).then(|| now + self.window_len + self.cfg.reset_margin);
            self.w = Window::open(end, false, self.seq, self.in_flight_points);
        }
    }

    /// Whether a request of `class` costing `cost` may be sent now (ignoring the queue).
    fn can_take(&self, class: u8, cost: u64, now: Instant) -> bool {
        if self.throttled(now) || (!self.calibrated && self.in_flight > 0) {
            return false;
        }
        let need = if class == 0 { cost } else { cost.saturating_add(self.reserve()) };
        self.available() >= int(need)
    }

    fn queued_ahead(&self, class: u8) -> bool {
        self.waiters.keys().any(|(c, _)| *c <= class)
    }

    /// The next moment the budget changes by itself (a window ends, a throttle expires).
    fn earliest_change(&self) -> Option<Instant> {
        match (self.throttled_until, self.w.end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When waiting callers should look again, without news from answers.
    fn next_deadline(&self, now: Instant) -> Instant {
        self.earliest_change().filter(|t| *t > now).unwrap_or_else(|| now + self.window_len.min(Duration::from_secs(1)))
    }

    fn grant(&mut self, shared: &Arc<Shared>, now: Instant, cost: u64) -> PointsPermit {
        self.seq += 1;
        if self.w.end.is_none() {
            self.w.end = Some(now + self.window_len + self.cfg.reset_margin);
            self.w.confirmed = false;
        }
        self.w.local_used = self.w.local_used.saturating_add(cost);
        self.w.unconfirmed = self.w.unconfirmed.saturating_add(cost);
        self.in_flight += 1;
        self.in_flight_points = self.in_flight_points.saturating_add(cost);
        PointsPermit { shared: Arc::clone(shared), seq: self.seq, cost, state: PermitState::Granted }
    }

    /// Ends a permit's life in flight. An unsent one is refunded (every window since its
    /// grant counted it as in flight); a sent one stays counted.
    fn release(&mut self, permit: &mut PointsPermit) {
        match permit.state {
            PermitState::Done => return,
            PermitState::Granted => {
                self.w.local_used = self.w.local_used.saturating_sub(permit.cost);
                self.w.unconfirmed = self.w.unconfirmed.saturating_sub(permit.cost);
            }
            PermitState::Sent => self.requested_total = self.requested_total.saturating_add(permit.cost),
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight_points = self.in_flight_points.saturating_sub(permit.cost);
        permit.state = PermitState::Done;
    }

    /// Where an answer to request `seq` with reset `reset` belongs; follows the reset.
    fn place(&mut self, seq: u64, reset: Option<Duration>, now: Instant) -> Fit {
        if seq <= self.w.start_seq {
            return Fit::MaybeEarlier;
        }
        let Some(reset) = reset else { return Fit::Current };
        self.window_len = self.window_len.max(reset);
        let end = now + reset + self.cfg.reset_margin;
        let half = self.window_len / 2;
        match self.w.end {
            Some(ours) if self.w.confirmed && end > ours + half => {
                // The server rolled over earlier than we assumed. Of our requests, those in
                // flight (this one included) may be in its new window.
                self.w = Window::open(Some(end), true, seq - 1, self.in_flight_points);
            }
            Some(ours) if self.w.confirmed && end + half < ours => return Fit::Earlier,
            _ => {
                self.w.end = Some(end);
                self.w.confirmed = true;
            }
        }
        Fit::Current
    }

    /// Takes in the answer to `permit` (still in flight).
    fn observe(&mut self, permit: &PointsPermit, h: &ScopeHeaders, actual: Option<u64>, throttled: Option<Duration>) {
        let now = Instant::now();
        if let Some(l) = h.limit {
            self.server_limit = Some(u64::from(l));
        }
        // A refused request is not charged.
        let charged = if throttled.is_some() { 0 } else { actual.unwrap_or(permit.cost) };
        let fit = self.place(permit.seq, h.reset.or(throttled), now);
        match fit {
            Fit::Current => {
                if let Some(rem) = h.remaining {
                    // Its charge is in the lowest count from now on.
                    let rem = u64::from(rem);
                    self.w.server_min = Some(self.w.server_min.map_or(rem, |m| m.min(rem)));
                    self.w.unconfirmed = self.w.unconfirmed.saturating_sub(permit.cost);
                } else {
                    swap(&mut self.w.unconfirmed, permit.cost, charged);
                }
                swap(&mut self.w.local_used, permit.cost, charged);
            }
            Fit::MaybeEarlier => {
                swap(&mut self.w.unconfirmed, permit.cost, charged);
                swap(&mut self.w.local_used, permit.cost, charged);
            }
            Fit::Earlier => {
                swap(&mut self.w.unconfirmed, permit.cost, 0);
                swap(&mut self.w.local_used, permit.cost, 0);
            }
        }
        if let Some(wait) = throttled {
            let until = now + wait + self.cfg.reset_margin;
            self.throttled_until = Some(self.throttled_until.map_or(until, |t| t.max(until)));
            if fit == Fit::Current {
                // The window is spent until its reset.
                self.w.server_min = Some(0);
                self.w.end = Some(self.w.end.map_or(until, |e| e.max(until)));
                self.w.confirmed = true;
            }
        }
    }

    /// Releases waiters in order while the budget allows.
    fn drain(&mut self, shared: &Arc<Shared>, now: Instant) {
        self.roll(now);
        while let Some((&key, waiter)) = self.waiters.first_key_value() {
            let (class, cost) = (key.0, waiter.cost);
            let max = self.max_cost(class);
            let reply = if cost > max {
                // A lower limit was learned while it waited: it will never fit.
                Err(TooCostly { cost, max })
            } else if self.can_take(class, cost, now) {
                Ok(self.grant(shared, now, cost))
            } else {
                break;
            };
            let Some(waiter) = self.waiters.remove(&key) else { break };
            if let Err(Ok(mut p)) = waiter.tx.send(reply) {
                // The waiter gave up in the meantime.
                self.release(&mut p);
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

/// The shared points budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PointsBudget {
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
                // Those it held back may fit.
                st.drain(self.shared, Instant::now());
            }
        }
    }
}

impl PointsBudget {
    pub fn new(cfg: PointsConfig) -> Self {
        let window_len = cfg.window;
        PointsBudget {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    cfg,
                    server_limit: None,
                    window_len,
                    w: Window::open(None, false, 0, 0),
                    seq: 0,
                    in_flight: 0,
                    in_flight_points: 0,
                    calibrated: false,
                    throttled_until: None,
                    spent_total: 0,
                    requested_total: 0,
                    waiters: BTreeMap::new(),
                    next_waiter: 0,
                }),
                changed: Notify::new(),
            }),
        }
    }

    /// Waits until a request of `priority` estimated to cost `cost` points (its REQUESTED
    /// complexity, computed by the caller) may be sent. [`TooCostly`] at once (or as soon as
    /// a lower limit is learned while waiting) when it can never fit in a window.
    /// Cancellation safe: a caller that gives up leaves the queue.
    pub async fn acquire(&self, priority: Priority, cost: u64) -> Result<PointsPermit, TooCostly> {
        let class = priority.class();
        let (mut rx, key) = {
            let mut st = self.shared.lock();
            let now = Instant::now();
            st.roll(now);
            let max = st.max_cost(class);
            if cost > max {
                return Err(TooCostly { cost, max });
            }
            if !st.queued_ahead(class) && st.can_take(class, cost, now) {
                return Ok(st.grant(&self.shared, now, cost));
            }
            let (tx, rx) = oneshot::channel();
            let key = (class, st.next_waiter);
            st.next_waiter += 1;
            st.waiters.insert(key, Waiter { cost, tx });
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
                    Ok(reply) => {
                        guard.armed = false;
                        return reply;
                    }
                    Err(_) => {
                        // The sender is only dropped after a send or by the guard;
                        // re-register to be safe.
                        let (tx, new_rx) = oneshot::channel();
                        self.shared.lock().waiters.insert(key, Waiter { cost, tx });
                        rx = new_rx;
                    }
                },
                () = &mut notified => self.shared.lock().drain(&self.shared, Instant::now()),
                () = tokio::time::sleep_until(deadline) => self.shared.lock().drain(&self.shared, Instant::now()),
            }
        }
    }

    /// Takes a permit if one is available right now, without waiting (`None` also for a
    /// request that can never fit: see [`PointsBudget::max_cost`]).
    pub fn try_acquire(&self, priority: Priority, cost: u64) -> Option<PointsPermit> {
        let class = priority.class();
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.roll(now);
        (!st.queued_ahead(class) && st.can_take(class, cost, now)).then(|| st.grant(&self.shared, now, cost))
    }

    /// `None` when the request could be sent right now; otherwise an estimate of the wait:
    /// `Duration::ZERO` when the window has room for it and everything queued ahead and only
    /// answers to requests in flight are awaited (cold start), `Duration::MAX` when it can
    /// never fit, else the time until the next window end or the end of a 429's hold (the
    /// next moment the budget grows by itself). Takes nothing.
    pub fn would_wait(&self, priority: Priority, cost: u64) -> Option<Duration> {
        let class = priority.class();
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.roll(now);
        if cost > st.max_cost(class) {
            return Some(Duration::MAX);
        }
        if !st.queued_ahead(class) && st.can_take(class, cost, now) {
            return None;
        }
        let ahead: u64 = st.waiters.iter().filter(|((c, _), _)| *c <= class).map(|(_, w)| w.cost).sum();
        let need = ahead.saturating_add(cost).saturating_add(if class == 0 { 0 } else { st.reserve() });
        if !st.throttled(now) && st.available() >= int(need) {
            return Some(Duration::ZERO);
        }
        Some(st.next_deadline(now).saturating_duration_since(now))
    }

    /// The most a request of `priority` may cost under the current limit.
    pub fn max_cost(&self, priority: Priority) -> u64 {
        self.shared.lock().max_cost(priority.class())
    }

    pub fn snapshot(&self) -> PointsSnapshot {
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.roll(now);
        let waiting_urgent = st.waiters.keys().filter(|(c, _)| *c == 0).count();
        PointsSnapshot {
            limit: st.limit(),
            server_limit: st.server_limit(),
            remaining: u64::try_from(st.available()).unwrap_or(0),
            reserve: st.reserve(),
            reset_in: st.w.end.map(|e| e.saturating_duration_since(now)),
            throttled_for: st.throttled_until.map(|t| t.saturating_duration_since(now)),
            in_flight_points: st.in_flight_points,
            in_flight: st.in_flight,
            spent_total: st.spent_total,
            requested_total: st.requested_total,
            waiting_urgent,
            waiting_refresh: st.waiters.len() - waiting_urgent,
        }
    }
}

#[cfg(test)]
#[path = "points_tests.rs"]
mod tests;
