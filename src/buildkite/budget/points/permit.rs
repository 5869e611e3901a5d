//! [`PointsPermit`]: the right to send one GraphQL request, and what its answer teaches the
//! points budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ScopeHeaders, Shared};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PermitState {
    Granted,
    Sent,
    Done,
}

/// The right to send one GraphQL request of a given requested cost. Report the answer with
/// [`PointsPermit::complete`]; dropped before [`PointsPermit::mark_sent`] it is refunded,
/// after it it counts at its requested cost.
#[derive(Debug)]
pub struct PointsPermit {
    pub(super) shared: Arc<Shared>,
    pub(super) seq: u64,
    pub(super) cost: u64,
    pub(super) state: PermitState,
}

impl PointsPermit {
    /// The requested cost it was granted for.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// Whether a permit taken a while ago may still be used as it is: not when a 429 came in
    /// since, when its window has closed, or when what was learned since (a lower limit,
    /// others' spending) leaves the window over-committed. An unusable permit is dropped
    /// (refunded) and the request waits for a new one.
    pub fn usable(&self) -> bool {
        if self.state != PermitState::Granted {
            return false;
        }
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.roll(now);
        !st.throttled(now) && self.seq > st.w.start_seq && st.available() >= 0
    }

    /// The request is going out now.
    pub fn mark_sent(&mut self) {
        if self.state == PermitState::Granted {
            self.state = PermitState::Sent;
        }
    }

    /// No answer (timeout, dropped connection): the requested cost stays counted.
    pub fn failed(mut self) {
        self.mark_sent();
        drop(self);
    }

    /// Reports the answer: its `RateLimit-*` headers, the actual complexity if known (the
    /// query stats), and for a 429 the announced wait (the body's "try again in N seconds",
    /// else `RateLimit-Reset`).
    pub fn complete(mut self, headers: &ScopeHeaders, actual: Option<u64>, throttled: Option<Duration>) {
        let shared = Arc::clone(&self.shared);
        let earlier = {
            let mut st = shared.lock();
            let now = Instant::now();
            // An answer after the window end belongs to the next window, if any.
            st.roll(now);
            let before = st.earliest_change();
            st.calibrated = true;
            if let Some(a) = actual.filter(|_| throttled.is_none()) {
                st.spent_total = st.spent_total.saturating_add(a);
            }
            st.observe(&self, headers, actual, throttled);
            // Its cost was settled by `observe`: only leave the in-flight set.
            st.requested_total = st.requested_total.saturating_add(self.cost);
            st.in_flight = st.in_flight.saturating_sub(1);
            st.in_flight_points = st.in_flight_points.saturating_sub(self.cost);
            self.state = PermitState::Done;
            st.drain(&shared, now);
            match (before, st.earliest_change()) {
                (Some(b), Some(a)) => a < b,
                (None, Some(_)) => true,
                _ => false,
            }
        };
        // Waiters sleep until the next deadline: wake them when it moved closer.
        if earlier {
            shared.changed.notify_waiters();
        }
    }
}

impl Drop for PointsPermit {
    fn drop(&mut self) {
        if self.state == PermitState::Done {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        if self.state == PermitState::Sent {
            // An unanswered request still ends the cold start: waiting for an answer that
            // never comes would stall everything.
            st.calibrated = true;
        }
        st.release(self);
        st.drain(&shared, Instant::now());
    }
}
