//! [`Permit`]: the right to send one request, and what its answer teaches the budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{RateLimitHeaders, Scope, Shared, ThrottleScope};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PermitState {
    Granted,
    Sent,
    Done,
}

/// The right to send one request. Report the answer's headers with [`Permit::complete`];
/// a permit dropped before [`Permit::mark_sent`] is refunded, one dropped after it counts
/// as sent.
#[derive(Debug)]
pub struct Permit {
    pub(super) shared: Arc<Shared>,
    pub(super) seq: u64,
    pub(super) in_flight_at_send: u64,
    pub(super) state: PermitState,
}

impl Permit {
    /// Whether a permit taken a while ago may still be used as it is: not when a 429 or an
    /// outage pause came in since, when its window has closed, or when a lower limit learned
    /// since leaves the window over-committed. An unusable permit is dropped (handed back)
    /// and the request waits for a new one, so a reservation never lets a request past a
    /// 429 that arrived while it was held.
    pub fn usable(&self) -> bool {
        if self.state != PermitState::Granted {
            return false;
        }
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.roll(now);
        if st.throttled_until.is_some_and(|t| now < t) || st.paused_until.is_some_and(|t| now < t) {
            return false;
        }
        let sent = st.sent_total;
        st.scopes().all(|s| self.seq > s.window_start_seq && s.used(sent) <= u64::from(s.limit()))
    }

    /// The request is going out now.
    pub fn mark_sent(&mut self) {
        if self.state == PermitState::Granted {
            self.state = PermitState::Sent;
        }
    }

    /// The attempt got no answer (timeout, refused or dropped connection): counts towards
    /// the outage pause, then the permit is released like an unanswered one.
    pub fn failed(self) {
        {
            let mut st = self.shared.lock();
            st.record_failure(Instant::now());
        }
        drop(self);
    }

    /// Reports an answer 5xx: its headers count like any answer, and it counts towards the
    /// outage pause.
    pub fn complete_server_error(self, headers: &RateLimitHeaders) {
        self.finish(headers, None, true);
    }

    /// Reports the answer: its rate-limit headers and, for a 429, the announced reset.
    pub fn complete(self, headers: &RateLimitHeaders, throttled: Option<(ThrottleScope, Duration)>) {
        self.finish(headers, throttled, false);
    }

    fn finish(mut self, headers: &RateLimitHeaders, throttled: Option<(ThrottleScope, Duration)>, server_error: bool) {
        let shared = Arc::clone(&self.shared);
        let earlier = {
            let mut st = shared.lock();
            let now = Instant::now();
            // Before waiters are released below: a 5xx extends an outage, any other answer
            // ends it.
            if server_error {
                st.record_failure(now);
            } else {
                st.failures = 0;
                st.paused_until = None;
            }
            let before = st.earliest_change();
            let cfg = st.cfg.clone();
            st.calibrated = true;
            let sent = st.sent_total;
            st.org.observe(&headers.org, self.seq, self.in_flight_at_send, sent, now, &cfg);
            // The user scope is tracked from the first answer that reports it completely.
            let user_known = headers.user.limit.is_some() && headers.user.remaining.is_some();
            if user_known || (st.user.is_some() && !headers.user.is_empty()) {
                let (seq, in_flight_at_send) = (self.seq, self.in_flight_at_send);
                let sent = st.sent_total;
                let user = st.user.get_or_insert_with(|| {
                    // We do not know when the user window opened: this request, those in
                    // flight when it was sent and all sent since may be in it.
                    let mut u = Scope::new(None);
                    let possibly = in_flight_at_send + 1 + sent.saturating_sub(seq);
                    u.open(None, seq - 1, possibly, sent);
                    u
                });
                user.observe(&headers.user, seq, in_flight_at_send, sent, now, &cfg);
            }
            if let Some((scope, reset)) = throttled {
                let until = now + reset + cfg.reset_margin;
                st.throttled_until = Some(st.throttled_until.map_or(until, |t| t.max(until)));
                let sent = st.sent_total;
                match (scope, st.user.as_mut()) {
                    (ThrottleScope::User, Some(u)) => u.throttle(self.seq, until, sent),
                    _ => st.org.throttle(self.seq, until, sent),
                }
            }
            st.in_flight = st.in_flight.saturating_sub(1);
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

impl Drop for Permit {
    fn drop(&mut self) {
        if self.state == PermitState::Done {
            return;
        }
        let shared = Arc::clone(&self.shared);
        {
            let mut st = shared.lock();
            // No answer: a sent request stays counted, an unsent one is refunded.
            st.refund(self);
            // An unanswered request still ends the cold start: the server is reachable or
            // not, and waiting for an answer that never comes would stall everything.
            st.calibrated = true;
            st.drain(&shared, Instant::now());
        }
    }
}
