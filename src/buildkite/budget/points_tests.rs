//! Deterministic tests of the GraphQL points budget (tokio's paused clock).

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

const S: fn(u64) -> Duration = Duration::from_secs;

fn cfg(limit: u64, share: f64, reserve: f64) -> PointsConfig {
    PointsConfig { assumed_limit: limit, share, window: S(300), reserve_fraction: reserve, reset_margin: S(1) }
}

/// A budget with share 1.0 (our limit is the server's) for round numbers.
fn budget(limit: u64, reserve: f64) -> PointsBudget {
    PointsBudget::new(cfg(limit, 1.0, reserve))
}

fn h(limit: u32, remaining: u32, reset: u64) -> ScopeHeaders {
    ScopeHeaders { limit: Some(limit), remaining: Some(remaining), reset: Some(S(reset)) }
}

fn sent(b: &PointsBudget, p: Priority, cost: u64) -> PointsPermit {
    let mut permit = b.try_acquire(p, cost).expect("budget left");
    permit.mark_sent();
    permit
}

/// Acquires and answers one request.
async fn one(b: &PointsBudget, p: Priority, cost: u64, headers: ScopeHeaders, actual: Option<u64>) {
    let mut permit = b.acquire(p, cost).await.expect("fits");
    permit.mark_sent();
    permit.complete(&headers, actual, None);
}

fn remaining(b: &PointsBudget) -> u64 {
    b.snapshot().remaining
}

#[test]
fn defaults_follow_the_docs() {
    let c = PointsConfig::default();
    assert_eq!((c.assumed_limit, c.share, c.window, c.reserve_fraction), (20_000, 0.9, S(300), 0.10));
}

#[tokio::test(start_paused = true)]
async fn cold_start_sends_one_request_until_the_first_answer() {
    let b = budget(1000, 0.0);
    let t0 = Instant::now();
    let first = b.acquire(Priority::Refresh, 10).await.unwrap();
    assert!(b.try_acquire(Priority::Submit, 1).is_none(), "second request must wait for the first answer");
    assert_eq!(b.would_wait(Priority::Submit, 1), Some(Duration::ZERO), "only an answer is awaited");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(Priority::Submit, 5).await.map(|p| p.cost()) })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    // Others spent 90 before us.
    first.complete(&h(1000, 900, 200), Some(10), None);
    assert_eq!(waiter.await.unwrap(), Ok(5), "released by the answer");
    assert_eq!(Instant::now(), t0);
    assert_eq!(remaining(&b), 900, "the waiter's unsent permit was refunded");
    let (a, c) = (b.try_acquire(Priority::Refresh, 10), b.try_acquire(Priority::Refresh, 10));
    assert!(a.is_some() && c.is_some(), "several in flight once calibrated");
}

#[tokio::test(start_paused = true)]
async fn out_of_order_answers_keep_the_lowest_remaining() {
    let b = budget(1000, 0.0);
    one(&b, Priority::Refresh, 10, h(1000, 890, 300), Some(10)).await; // others spent 100
    assert_eq!(remaining(&b), 890);
    let (p1, p2, p3) =
        (sent(&b, Priority::Refresh, 10), sent(&b, Priority::Refresh, 10), sent(&b, Priority::Refresh, 10));
    assert_eq!(remaining(&b), 860);
    // The server handled p1, then p3; p2 is still on its way. p3's answer comes first.
    p3.complete(&h(1000, 870, 299), Some(10), None);
    assert_eq!(remaining(&b), 850, "p1 and p2 may not be in that figure");
    p1.complete(&h(1000, 880, 299), Some(10), None);
    assert_eq!(remaining(&b), 860, "a late, higher remaining does not raise the estimate");
    p2.complete(&h(1000, 860, 298), Some(10), None);
    assert_eq!(remaining(&b), 860);
}

#[tokio::test(start_paused = true)]
async fn our_share_of_the_server_limit_is_respected() {
    let b = PointsBudget::new(cfg(20_000, 0.9, 0.0));
    let s = b.snapshot();
    assert_eq!((s.limit, s.server_limit, s.remaining), (18_000, 20_000, 18_000), "assumed until told");
    one(&b, Priority::Submit, 100, h(50_000, 49_900, 300), Some(100)).await;
    let s = b.snapshot();
    assert_eq!((s.limit, s.server_limit, s.remaining), (45_000, 50_000, 44_900));
    // Others spent 19,800 more: the server's 30,000 left minus their 5,000 share.
    one(&b, Priority::Submit, 100, h(50_000, 30_000, 290), Some(100)).await;
    assert_eq!(remaining(&b), 25_000);
    assert!(b.try_acquire(Priority::Submit, 25_001).is_none());
    assert!(b.try_acquire(Priority::Submit, 25_000).is_some());
}

#[tokio::test(start_paused = true)]
async fn refresh_leaves_the_reserve_to_submit_and_cancel() {
    let b = budget(100, 0.1); // reserve 10
    one(&b, Priority::Refresh, 10, h(100, 90, 300), Some(10)).await;
    assert_eq!((b.max_cost(Priority::Refresh), b.max_cost(Priority::Submit)), (90, 100));
    assert!(b.try_acquire(Priority::Refresh, 81).is_none(), "would eat into the reserve");
    assert!(b.would_wait(Priority::Refresh, 81).is_some());
    let _r = b.try_acquire(Priority::Refresh, 80).unwrap();
    assert_eq!(remaining(&b), 10);
    assert!(b.try_acquire(Priority::Refresh, 1).is_none());
    assert_eq!(b.would_wait(Priority::Submit, 10), None);
    let _s = b.try_acquire(Priority::Submit, 6).unwrap();
    let _c = b.try_acquire(Priority::Cancel, 4).unwrap();
    assert!(b.try_acquire(Priority::Cancel, 1).is_none());
}

#[tokio::test(start_paused = true)]
async fn urgent_waiters_first_then_first_come_first_served() {
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, 100, h(100, 0, 10), Some(100)).await; // spent, resets in 11 s
    let t0 = Instant::now();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let queue = [(Priority::Refresh, 30), (Priority::Refresh, 30), (Priority::Submit, 50), (Priority::Cancel, 50)];
    for (i, (p, cost)) in queue.into_iter().enumerate() {
        let (b, order) = (b.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let mut permit = b.acquire(p, cost).await.unwrap();
            order.lock().unwrap().push((i, Instant::now().duration_since(t0)));
            permit.mark_sent();
            drop(permit); // no answer: stays counted
        }));
        tokio::task::yield_now().await;
    }
    let s = b.snapshot();
    assert_eq!((s.waiting_urgent, s.waiting_refresh), (2, 2));
    for t in tasks {
        t.await.unwrap();
    }
    // The urgent pair fills the next window, the refreshes go in the one after.
    assert_eq!(*order.lock().unwrap(), vec![(2, S(11)), (3, S(11)), (0, S(312)), (1, S(312))]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_does_not_fit_is_not_overtaken() {
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, 10, h(100, 90, 300), Some(10)).await;
    let big = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(Priority::Submit, 95).await.map(|p| p.cost()) })
    };
    tokio::task::yield_now().await;
    assert!(b.try_acquire(Priority::Submit, 10).is_none(), "fits, but a bigger one waits ahead");
    assert!(b.would_wait(Priority::Submit, 10).is_some());
    assert_eq!(big.await.unwrap(), Ok(95), "released when the window rolls");
}

#[tokio::test(start_paused = true)]
async fn after_a_429_nothing_is_sent_until_the_reset() {
    let b = budget(1000, 0.1);
    one(&b, Priority::Submit, 10, h(1000, 990, 8), Some(10)).await;
    let mut p = b.acquire(Priority::Refresh, 50).await.unwrap();
    p.mark_sent();
    // Others spent most of the window meanwhile: 30 left, too few for 50.
    p.complete(&h(1000, 30, 7), None, Some(S(7)));
    let s = b.snapshot();
    assert_eq!((s.throttled_for, s.remaining), (Some(S(8)), 0));
    assert_eq!((s.requested_total, s.spent_total, s.in_flight_points), (60, 10, 0), "a 429 is not charged");
    assert!(b.try_acquire(Priority::Cancel, 1).is_none(), "not even urgent requests");
    assert_eq!(b.would_wait(Priority::Cancel, 1), Some(S(8)));
    let t0 = Instant::now();
    let p = b.acquire(Priority::Cancel, 1).await.unwrap();
    assert_eq!(t0.elapsed(), S(8));
    let s = b.snapshot();
    assert_eq!((s.throttled_for, s.remaining, s.reset_in), (None, 999, Some(S(301))), "a fresh window");
    drop(p);
}

/// A 429 for a request sent before the window rolled does not describe the new window, but
/// its hold still applies to everything, held permits included, and it is not charged.
#[tokio::test(start_paused = true)]
async fn a_429_from_before_the_window_rolled_still_holds_everything() {
    let b = budget(1000, 0.0);
    one(&b, Priority::Submit, 10, h(1000, 990, 10), Some(10)).await;
    let old = sent(&b, Priority::Submit, 10);
    tokio::time::advance(S(11)).await;
    let held = b.try_acquire(Priority::Submit, 10).expect("a new window");
    assert!(held.usable());
    old.complete(&h(1000, 0, 3), None, Some(S(3)));
    assert!(!held.usable(), "held across a 429");
    assert!(b.try_acquire(Priority::Submit, 1).is_none());
    assert_eq!(b.would_wait(Priority::Submit, 1), Some(S(4)));
    let s = b.snapshot();
    assert_eq!((s.remaining, s.throttled_for), (990, Some(S(4))), "the refused request is not charged");
    drop(held);
    let t0 = Instant::now();
    drop(b.acquire(Priority::Submit, 1).await.unwrap());
    assert_eq!(t0.elapsed(), S(4));
}

#[tokio::test(start_paused = true)]
async fn the_window_rolls_to_the_full_limit_keeping_requests_in_flight() {
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, 60, h(100, 40, 30), Some(60)).await;
    assert_eq!(b.snapshot().reset_in, Some(S(31)), "RateLimit-Reset + margin");
    let held = sent(&b, Priority::Submit, 30);
    assert!(b.try_acquire(Priority::Submit, 20).is_none(), "10 left");
    assert_eq!(b.would_wait(Priority::Submit, 20), Some(S(31)));
    let t0 = Instant::now();
    let _p = b.acquire(Priority::Submit, 20).await.unwrap();
    assert_eq!(t0.elapsed(), S(31));
    let s = b.snapshot();
    assert_eq!((s.remaining, s.reset_in), (50, Some(S(301))), "the request in flight may land in the new window");
    // Its answer describes the old window: neither its count nor its reset apply.
    held.complete(&h(100, 10, 0), Some(30), None);
    let s = b.snapshot();
    assert_eq!((s.remaining, s.reset_in), (50, Some(S(301))));
}

#[tokio::test(start_paused = true)]
async fn a_new_window_opens_with_the_next_request() {
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, 100, h(100, 0, 10), Some(100)).await;
    tokio::time::sleep(S(500)).await;
    let s = b.snapshot();
    assert_eq!((s.remaining, s.reset_in), (100, None), "nothing in flight: no window open");
    let _p = sent(&b, Priority::Submit, 1);
    assert_eq!(b.snapshot().reset_in, Some(S(301)));
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_count_their_requested_cost_then_the_actual() {
    let b = budget(1000, 0.0);
    one(&b, Priority::Refresh, 100, h(1000, 900, 300), Some(100)).await;
    let p = sent(&b, Priority::Refresh, 200);
    let s = b.snapshot();
    assert_eq!((s.in_flight, s.in_flight_points, s.remaining), (1, 200, 700));
    p.complete(&h(1000, 850, 299), Some(50), None);
    let s = b.snapshot();
    assert_eq!((s.in_flight, s.in_flight_points, s.remaining), (0, 0, 850));
    assert_eq!((s.spent_total, s.requested_total), (150, 300));
    // An answer without headers: counted locally at its actual cost.
    sent(&b, Priority::Refresh, 100).complete(&ScopeHeaders::default(), Some(40), None);
    assert_eq!(remaining(&b), 810);
    // Without the actual cost either: at its requested cost.
    sent(&b, Priority::Refresh, 100).complete(&ScopeHeaders::default(), None, None);
    assert_eq!(remaining(&b), 710);
}

#[tokio::test(start_paused = true)]
async fn unsent_permits_are_refunded_sent_ones_stay_counted() {
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, 10, h(100, 90, 300), Some(10)).await;
    let p = b.try_acquire(Priority::Submit, 30).unwrap();
    assert_eq!(p.cost(), 30);
    assert_eq!(remaining(&b), 60);
    drop(p);
    assert_eq!(remaining(&b), 90, "never sent: refunded");
    drop(sent(&b, Priority::Submit, 30));
    assert_eq!(remaining(&b), 60, "sent without an answer: counted");
    b.try_acquire(Priority::Submit, 20).unwrap().failed();
    let s = b.snapshot();
    assert_eq!((s.remaining, s.in_flight, s.requested_total), (40, 0, 60));
}

#[tokio::test(start_paused = true)]
async fn a_held_permit_is_unusable_after_a_429_its_window_or_an_over_commitment() {
    let b = budget(1000, 0.0);
    one(&b, Priority::Submit, 10, h(1000, 990, 6), Some(10)).await;
    let held = b.try_acquire(Priority::Submit, 10).unwrap();
    assert!(held.usable(), "a fresh permit is usable");
    sent(&b, Priority::Submit, 10).complete(&h(1000, 5, 5), None, Some(S(5)));
    assert!(!held.usable(), "held across a 429");
    drop(held);
    tokio::time::advance(S(7)).await;
    assert!(b.try_acquire(Priority::Submit, 10).unwrap().usable(), "fresh again after the reset");

    // Held into the next window.
    let b = budget(1000, 0.0);
    one(&b, Priority::Submit, 10, h(1000, 990, 60), Some(10)).await;
    let held = b.try_acquire(Priority::Submit, 10).unwrap();
    tokio::time::advance(S(62)).await;
    assert!(!held.usable(), "held into the next window");
    drop(held);

    // Others spent the window while it was held.
    let b = budget(1000, 0.0);
    one(&b, Priority::Submit, 10, h(1000, 990, 300), Some(10)).await;
    let held = b.try_acquire(Priority::Submit, 500).unwrap();
    sent(&b, Priority::Submit, 10).complete(&h(1000, 300, 290), Some(10), None);
    assert!(!held.usable(), "over-committed");
    drop(held);
    assert_eq!(remaining(&b), 300);
}

#[tokio::test(start_paused = true)]
async fn a_cost_above_the_limit_is_refused_at_once() {
    let b = PointsBudget::new(cfg(1000, 0.5, 0.1)); // limit 500, reserve 50
    let t0 = Instant::now();
    assert_eq!(b.acquire(Priority::Submit, 501).await.unwrap_err(), TooCostly { cost: 501, max: 500 });
    assert_eq!(b.acquire(Priority::Refresh, 451).await.unwrap_err(), TooCostly { cost: 451, max: 450 });
    assert!(b.try_acquire(Priority::Submit, 501).is_none());
    assert_eq!(b.would_wait(Priority::Submit, 501), Some(Duration::MAX));
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // A waiter learns it when a lower limit arrives while it waits.
    let first = b.acquire(Priority::Submit, 500).await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(Priority::Submit, 400).await.map(|p| p.cost()) })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "cold start");
    first.complete(&h(600, 100, 300), Some(500), None);
    let r = tokio::time::timeout(S(1000), waiter).await.expect("the waiter must not hang").unwrap();
    assert_eq!(r, Err(TooCostly { cost: 400, max: 300 }));
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(b.snapshot().waiting_urgent, 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiters_leave_the_queue_and_release_those_behind() {
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, 10, h(100, 90, 300), Some(10)).await;
    assert!(tokio::time::timeout(S(5), b.acquire(Priority::Submit, 95)).await.is_err());
    let s = b.snapshot();
    assert_eq!((s.waiting_urgent, s.waiting_refresh), (0, 0));
    // A big waiter holds back a small one; when it gives up, the small one goes at once.
    let spawn = |cost| {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(Priority::Submit, cost).await.map(|p| p.cost()) })
    };
    let big = spawn(95);
    tokio::task::yield_now().await;
    let small = spawn(20);
    tokio::task::yield_now().await;
    assert!(!small.is_finished());
    let t0 = Instant::now();
    big.abort();
    assert!(big.await.unwrap_err().is_cancelled());
    assert_eq!(small.await.unwrap(), Ok(20));
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // A permit granted to a waiter that gave up before taking it is refunded.
    let held = b.try_acquire(Priority::Submit, 90).unwrap(); // all that is left
    let w = spawn(50);
    tokio::task::yield_now().await;
    assert_eq!(b.snapshot().waiting_urgent, 1);
    drop(held); // refunded: the waiter is granted its permit, but its task does not run
    assert_eq!(b.snapshot().in_flight, 1);
    w.abort();
    assert!(w.await.unwrap_err().is_cancelled());
    let s = b.snapshot();
    assert_eq!((s.in_flight, s.in_flight_points, s.waiting_urgent, s.remaining), (0, 0, 0, 90));
}

#[tokio::test(start_paused = true)]
async fn would_wait_estimates() {
    let b = budget(100, 0.0);
    assert_eq!(b.would_wait(Priority::Refresh, 100), None, "a fresh budget");
    one(&b, Priority::Submit, 80, h(100, 20, 60), Some(80)).await;
    assert_eq!(b.would_wait(Priority::Submit, 20), None);
    assert_eq!(b.would_wait(Priority::Submit, 21), Some(S(61)), "until the window end");
    assert_eq!(remaining(&b), 20, "would_wait takes nothing");
    tokio::time::advance(S(20)).await;
    assert_eq!(b.would_wait(Priority::Submit, 21), Some(S(41)));
    assert_eq!(b.would_wait(Priority::Submit, 101), Some(Duration::MAX));
}

/// Many callers, a server that enforces the points per window (refusing with a 429 what
/// its requested cost does not fit, charging the actual cost) and others spending a little:
/// with answers out of order, the budget never gets a 429.
#[tokio::test(start_paused = true)]
async fn hammering_never_gets_a_429() {
    const LIMIT: u64 = 3000;
    struct Server {
        window_end: Option<Instant>,
        used: u64,
        windows: u64,
        refused: u64,
    }
    impl Server {
        fn roll(&mut self, now: Instant) {
            if self.window_end.is_none_or(|e| now >= e) {
                self.window_end = Some(now + S(300));
                self.used = 0;
                self.windows += 1;
            }
        }
        fn headers(&self, now: Instant) -> ScopeHeaders {
            let left = self.window_end.map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
            let reset = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            h(LIMIT as u32, (LIMIT - self.used) as u32, reset)
        }
    }
    let server = Arc::new(Mutex::new(Server { window_end: None, used: 0, windows: 0, refused: 0 }));
    let b = PointsBudget::new(cfg(20_000, 0.9, 0.1));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Someone else: 150 points every 30 s (half of each window, but never more between two
    // of our answers than the 10 % we leave).
    let others = {
        let (server, done) = (Arc::clone(&server), Arc::clone(&done));
        tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < 150 {
                tokio::time::sleep(S(30)).await;
                let mut s = server.lock().unwrap();
                s.roll(Instant::now());
                s.used = (s.used + 150).min(LIMIT);
            }
        })
    };
    for i in 0..30u64 {
        let (b, server, done) = (b.clone(), Arc::clone(&server), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let p = if i % 3 == 0 { Priority::Submit } else { Priority::Refresh };
            for j in 0..5u64 {
                let cost = 50 + (i * 37 + j * 53) % 350;
                let mut permit = b.acquire(p, cost).await.unwrap();
                permit.mark_sent();
                tokio::time::sleep(Duration::from_millis(5 + (i * 37) % 90)).await;
                let (headers, throttled) = {
                    let mut s = server.lock().unwrap();
                    let now = Instant::now();
                    s.roll(now);
                    if cost > LIMIT - s.used {
                        s.refused += 1;
                        let h = s.headers(now);
                        (h, h.reset)
                    } else {
                        s.used += cost * (1 + (i + j) % 4) / 4;
                        (s.headers(now), None)
                    }
                };
                tokio::time::sleep(Duration::from_millis((i * 13) % 40)).await;
                let actual = throttled.is_none().then_some(cost * (1 + (i + j) % 4) / 4);
                permit.complete(&headers, actual, throttled);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    others.await.unwrap();
    let s = server.lock().unwrap();
    assert_eq!(done.load(Ordering::Relaxed), 150);
    assert_eq!(s.refused, 0, "the budget sent a request the server refused");
    assert!(s.windows >= 5, "the work needs several windows, saw {}", s.windows);
}

#[tokio::test(start_paused = true)]
async fn follows_a_server_that_rolled_over_earlier_and_ignores_its_old_window() {
    let b = budget(1000, 0.0);
    one(&b, Priority::Submit, 100, h(1000, 500, 100), Some(100)).await; // others spent 400
    tokio::time::sleep(S(50)).await;
    // The server rolled over (someone else opened a new window, ending in 300 s); of two
    // requests, the later one was handled in the old window and answers last.
    let (early, late) = (sent(&b, Priority::Submit, 10), sent(&b, Priority::Submit, 10));
    early.complete(&h(1000, 980, 300), Some(10), None);
    let s = b.snapshot();
    assert_eq!((s.remaining, s.reset_in), (970, Some(S(301))), "a new window: `late` may be in it");
    late.complete(&h(1000, 390, 49), Some(10), None);
    let s = b.snapshot();
    assert_eq!((s.remaining, s.reset_in), (980, Some(S(301))), "an answer from the old window");
}
