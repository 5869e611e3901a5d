//! Deterministic tests of the budget (tokio's paused clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

use super::*;

fn budget(limit: u32, reserve: f64) -> Budget {
    Budget::new(BudgetConfig {
        limit,
        window: Duration::from_secs(60),
        reserve_fraction: reserve,
        reset_margin: Duration::from_secs(1),
    })
}

fn org(limit: u32, remaining: u32, reset: u64) -> RateLimitHeaders {
    RateLimitHeaders {
        org: ScopeHeaders { limit: Some(limit), remaining: Some(remaining), reset: Some(Duration::from_secs(reset)) },
        user: ScopeHeaders::default(),
    }
}

/// Acquires and answers one request with the given headers.
async fn one(b: &Budget, p: Priority, h: RateLimitHeaders) {
    let mut permit = b.acquire(p).await;
    permit.mark_sent();
    permit.complete(&h, None);
}

#[test]
fn parses_headers() {
    let mut h = HeaderMap::new();
    h.insert("RateLimit-Limit", "200".parse().unwrap());
    h.insert("RateLimit-Remaining", "17".parse().unwrap());
    h.insert("RateLimit-Reset", " 42 ".parse().unwrap());
    h.insert("RateLimit-User-Limit", "50".parse().unwrap());
    h.insert("RateLimit-User-Remaining", "nope".parse().unwrap());
    let r = RateLimitHeaders::parse(&h);
    assert_eq!(r.org, ScopeHeaders { limit: Some(200), remaining: Some(17), reset: Some(Duration::from_secs(42)) });
    assert_eq!(r.user, ScopeHeaders { limit: Some(50), remaining: None, reset: None });
    assert_eq!(RateLimitHeaders::parse(&HeaderMap::new()), RateLimitHeaders::default());
}

#[test]
fn reserve_rounding() {
    let s = Scope::new(Some(180));
    assert_eq!(s.reserve(0.10), 18);
    assert_eq!(Scope::new(Some(3)).reserve(0.10), 1, "a positive fraction keeps at least one");
    assert_eq!(Scope::new(Some(1)).reserve(0.10), 0, "never the whole window");
    assert_eq!(Scope::new(Some(180)).reserve(0.0), 0);
}

#[tokio::test(start_paused = true)]
async fn cold_start_sends_one_request_until_the_first_answer() {
    let b = budget(180, 0.1);
    let first = b.acquire(Priority::Refresh).await;
    assert!(b.try_acquire(Priority::Submit).is_none(), "second request must wait for the first answer");
    assert!(b.would_wait(Priority::Submit).is_some());
    first.complete(&org(200, 150, 30), None);
    // The server reports 50 used; our cap is 180, the estimate is 50 + 0 in flight.
    let snap = b.snapshot();
    assert_eq!(snap.limit, 180);
    assert_eq!(snap.remaining, 130);
    assert!(b.try_acquire(Priority::Submit).is_some());
}

#[tokio::test(start_paused = true)]
async fn never_more_than_the_limit_per_window() {
    let b = budget(10, 0.0);
    one(&b, Priority::Refresh, RateLimitHeaders::default()).await;
    for _ in 0..9 {
        let mut p = b.try_acquire(Priority::Refresh).expect("budget left");
        p.mark_sent();
        drop(p); // no answer: stays counted
    }
    assert_eq!(b.snapshot().remaining, 0);
    assert!(b.try_acquire(Priority::Submit).is_none());
    let wait = b.would_wait(Priority::Submit).expect("must wait");
    assert!(wait <= Duration::from_secs(61) && wait >= Duration::from_secs(60), "{wait:?}");
    let t0 = Instant::now();
    let p = b.acquire(Priority::Submit).await;
    assert!(t0.elapsed() >= Duration::from_secs(60), "released at the window end, after {:?}", t0.elapsed());
    drop(p);
}

#[tokio::test(start_paused = true)]
async fn unsent_permits_are_refunded() {
    let b = budget(5, 0.0);
    one(&b, Priority::Refresh, RateLimitHeaders::default()).await;
    assert_eq!(b.snapshot().remaining, 4);
    let p = b.try_acquire(Priority::Refresh).unwrap();
    assert_eq!(b.snapshot().remaining, 3);
    drop(p);
    assert_eq!(b.snapshot().remaining, 4);
}

#[tokio::test(start_paused = true)]
async fn server_limit_wins_when_lower_and_server_count_when_higher() {
    let b = budget(180, 0.0);
    one(&b, Priority::Refresh, org(60, 59, 60)).await;
    assert_eq!(b.snapshot().limit, 60);
    assert_eq!(b.snapshot().remaining, 59);
    // Someone else spent 40 more of the window.
    one(&b, Priority::Refresh, org(60, 19, 59)).await;
    assert_eq!(b.snapshot().remaining, 19);
    // A higher server limit does not raise ours.
    one(&b, Priority::Refresh, org(500, 480, 58)).await;
    assert_eq!(b.snapshot().limit, 180);
}

#[tokio::test(start_paused = true)]
async fn concurrent_answers_do_not_lower_the_estimate_below_truth() {
    let b = budget(100, 0.0);
    one(&b, Priority::Refresh, org(100, 99, 60)).await; // 1 used
    // Three requests in flight; the server answers the LAST one first, having counted only
    // itself (the others are still on the way).
    let mut p1 = b.try_acquire(Priority::Refresh).unwrap();
    let mut p2 = b.try_acquire(Priority::Refresh).unwrap();
    let mut p3 = b.try_acquire(Priority::Refresh).unwrap();
    for p in [&mut p1, &mut p2, &mut p3] {
        p.mark_sent();
    }
    p3.complete(&org(100, 98, 60), None); // server: 2 used
    // p1 and p2 may still be counted: estimate must be 4, not 2.
    assert_eq!(b.snapshot().remaining, 96);
    p1.complete(&org(100, 97, 60), None);
    p2.complete(&org(100, 96, 60), None);
    assert_eq!(b.snapshot().remaining, 96);
}

#[tokio::test(start_paused = true)]
async fn reset_header_moves_the_window_end() {
    let b = budget(3, 0.0);
    one(&b, Priority::Refresh, org(3, 2, 5)).await;
    one(&b, Priority::Refresh, org(3, 1, 5)).await;
    one(&b, Priority::Refresh, org(3, 0, 5)).await;
    let wait = b.would_wait(Priority::Submit).unwrap();
    assert_eq!(wait, Duration::from_secs(6), "reset 5 s + 1 s margin");
    let t0 = Instant::now();
    drop(b.acquire(Priority::Submit).await);
    assert_eq!(t0.elapsed(), Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn after_429_nothing_is_sent_until_the_reset() {
    let b = budget(180, 0.1);
    let mut p = b.acquire(Priority::Refresh).await;
    p.mark_sent();
    p.complete(&org(200, 0, 7), Some((ThrottleScope::Organization, Duration::from_secs(7))));
    let snap = b.snapshot();
    assert_eq!(snap.throttled_for, Some(Duration::from_secs(8)));
    assert_eq!(snap.remaining, 0);
    assert!(b.try_acquire(Priority::Cancel).is_none(), "not even urgent requests");
    let t0 = Instant::now();
    let p = b.acquire(Priority::Cancel).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(8));
    drop(p);
    assert_eq!(b.snapshot().throttled_for, None);
}

#[tokio::test(start_paused = true)]
async fn refresh_leaves_the_reserve_to_submit_and_cancel() {
    let b = budget(10, 0.2); // reserve 2
    one(&b, Priority::Refresh, RateLimitHeaders::default()).await;
    let mut held = Vec::new();
    while let Some(p) = b.try_acquire(Priority::Refresh) {
        held.push(p);
    }
    // 1 + 7 refreshes: 2 left, reserved.
    assert_eq!(held.len(), 7);
    assert_eq!(b.snapshot().remaining, 2);
    assert!(b.would_wait(Priority::Refresh).is_some());
    assert!(b.would_wait(Priority::Submit).is_none());
    held.push(b.try_acquire(Priority::Submit).unwrap());
    held.push(b.try_acquire(Priority::Cancel).unwrap());
    assert!(b.try_acquire(Priority::Cancel).is_none());
}

#[tokio::test(start_paused = true)]
async fn urgent_waiters_are_released_first() {
    let b = budget(2, 0.0);
    one(&b, Priority::Refresh, RateLimitHeaders::default()).await;
    one(&b, Priority::Refresh, RateLimitHeaders::default()).await;
    // Window spent. Queue two refreshes, then two submits.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, p) in [Priority::Refresh, Priority::Refresh, Priority::Submit, Priority::Cancel].into_iter().enumerate() {
        let (b, order) = (b.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let mut permit = b.acquire(p).await;
            order.lock().unwrap().push((i, p, Instant::now()));
            permit.mark_sent();
            drop(permit);
        }));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let snap = b.snapshot();
    assert_eq!((snap.waiting_urgent, snap.waiting_refresh), (2, 2));
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let prios: Vec<Priority> = order.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(prios, vec![Priority::Submit, Priority::Cancel, Priority::Refresh, Priority::Refresh]);
    // Two per window: the urgent pair in the first new window, the refreshes in the next.
    assert_eq!(order[0].2, order[1].2);
    assert!(order[2].2 >= order[1].2 + Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_late_refresh_does_not_overtake_queued_ones() {
    let b = budget(1, 0.0);
    one(&b, Priority::Refresh, RateLimitHeaders::default()).await;
    let b2 = b.clone();
    let waiter = tokio::spawn(async move { drop(b2.acquire(Priority::Refresh).await) });
    tokio::task::yield_now().await;
    assert!(b.try_acquire(Priority::Refresh).is_none());
    assert!(b.would_wait(Priority::Refresh).is_some());
    waiter.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiters_leave_the_queue() {
    let b = budget(1, 0.0);
    one(&b, Priority::Refresh, RateLimitHeaders::default()).await;
    let r = tokio::time::timeout(Duration::from_secs(5), b.acquire(Priority::Submit)).await;
    assert!(r.is_err());
    let s = b.snapshot();
    assert_eq!((s.waiting_urgent, s.waiting_refresh), (0, 0));
    // And the budget still works afterwards.
    let t0 = Instant::now();
    drop(b.acquire(Priority::Submit).await);
    assert!(t0.elapsed() >= Duration::from_secs(50));
}

#[tokio::test(start_paused = true)]
async fn user_scope_is_honoured() {
    let b = budget(180, 0.0);
    let h = RateLimitHeaders {
        org: ScopeHeaders { limit: Some(200), remaining: Some(199), reset: Some(Duration::from_secs(60)) },
        user: ScopeHeaders { limit: Some(3), remaining: Some(2), reset: Some(Duration::from_secs(60)) },
    };
    one(&b, Priority::Refresh, h).await;
    let snap = b.snapshot();
    assert_eq!((snap.binding_scope, snap.limit, snap.remaining), ("user", 3, 2));
    let _a = b.try_acquire(Priority::Submit).unwrap();
    let _b = b.try_acquire(Priority::Submit).unwrap();
    assert!(b.try_acquire(Priority::Submit).is_none());
}

/// Many callers, a server that enforces the limit per window: the budget never lets more
/// than the limit through in any server window, with answers arriving out of order.
#[tokio::test(start_paused = true)]
async fn hammering_stays_within_every_server_window() {
    const LIMIT: u64 = 12;
    struct Server {
        window_start: Instant,
        count: u64,
        max: u64,
        windows: u64,
    }
    let server = Arc::new(Mutex::new(Server { window_start: Instant::now(), count: 0, max: 0, windows: 0 }));
    let b = budget(LIMIT as u32, 0.1);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let (b, server, done) = (b.clone(), Arc::clone(&server), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let p = if i % 3 == 0 { Priority::Submit } else { Priority::Refresh };
            for _ in 0..2 {
                let mut permit = b.acquire(p).await;
                permit.mark_sent();
                // Network latency varies per request: answers come back out of order.
                tokio::time::sleep(Duration::from_millis(5 + (i * 37) % 90)).await;
                let headers = {
                    let mut s = server.lock().unwrap();
                    let now = Instant::now();
                    if now.duration_since(s.window_start) >= Duration::from_secs(60) || s.count == 0 {
                        s.window_start = now;
                        s.count = 0;
                        s.windows += 1;
                    }
                    s.count += 1;
                    s.max = s.max.max(s.count);
                    let left = Duration::from_secs(60).saturating_sub(now.duration_since(s.window_start));
                    org(
                        LIMIT as u32,
                        LIMIT.saturating_sub(s.count) as u32,
                        left.as_secs() + u64::from(left.subsec_nanos() > 0),
                    )
                };
                tokio::time::sleep(Duration::from_millis((i * 13) % 40)).await;
                permit.complete(&headers, None);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = server.lock().unwrap();
    assert_eq!(done.load(Ordering::Relaxed), 80);
    assert!(s.max <= LIMIT, "server saw {} requests in one window (limit {LIMIT})", s.max);
    assert!(s.windows >= 7, "80 requests need at least 7 windows of 12, saw {}", s.windows);
}

#[tokio::test(start_paused = true)]
async fn answers_from_an_earlier_window_are_ignored() {
    let b = budget(5, 0.0);
    one(&b, Priority::Refresh, org(5, 4, 60)).await;
    let mut late = b.try_acquire(Priority::Refresh).unwrap();
    late.mark_sent();
    tokio::time::sleep(Duration::from_secs(62)).await;
    // New window: the request still in flight may land in it.
    assert_eq!(b.snapshot().remaining, 4);
    // Its answer describes the old window (full, reset in 1 s): neither its count nor its
    // reset apply to the new one.
    late.complete(&org(5, 0, 1), None);
    let snap = b.snapshot();
    assert_eq!(snap.remaining, 4);
    assert!(snap.reset_in.unwrap() > Duration::from_secs(50), "{snap:?}");
}

#[tokio::test(start_paused = true)]
async fn follows_a_server_that_rolled_over_earlier() {
    let b = budget(10, 0.0);
    one(&b, Priority::Refresh, org(10, 9, 60)).await;
    one(&b, Priority::Refresh, org(10, 8, 60)).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    // The server started a new window (someone else's request opened it): 1 used, 60 s left.
    one(&b, Priority::Refresh, org(10, 9, 60)).await;
    let snap = b.snapshot();
    assert_eq!(snap.remaining, 9);
    assert_eq!(snap.reset_in, Some(Duration::from_secs(61)));
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_with_a_lower_count_does_not_lower_the_estimate() {
    let b = budget(100, 0.0);
    one(&b, Priority::Refresh, org(100, 95, 60)).await; // others used 4 before us
    assert_eq!(b.snapshot().remaining, 95);
    let mut p1 = b.try_acquire(Priority::Refresh).unwrap();
    let mut p2 = b.try_acquire(Priority::Refresh).unwrap();
    p1.mark_sent();
    p2.mark_sent();
    p2.complete(&org(100, 93, 60), None); // handled second: 7 used
    assert_eq!(b.snapshot().remaining, 92, "p1 is unconfirmed");
    p1.complete(&org(100, 94, 60), None); // handled first: 6 used
    assert_eq!(b.snapshot().remaining, 93);
}

#[tokio::test(start_paused = true)]
async fn answers_without_headers_keep_counting_locally() {
    let b = budget(3, 0.0);
    for _ in 0..3 {
        one(&b, Priority::Submit, RateLimitHeaders::default()).await;
    }
    assert_eq!(b.snapshot().remaining, 0);
    assert_eq!(b.would_wait(Priority::Submit), Some(Duration::from_secs(61)));
}

#[test]
fn outage_pause_grows_and_is_capped() {
    assert_eq!(outage_pause(0), None);
    assert_eq!(outage_pause(1), None, "one failure is not an outage");
    assert_eq!(outage_pause(2), Some(Duration::from_secs(1)));
    assert_eq!(outage_pause(3), Some(Duration::from_secs(2)));
    assert_eq!(outage_pause(6), Some(Duration::from_secs(16)));
    assert_eq!(outage_pause(7), Some(Duration::from_secs(30)));
    assert_eq!(outage_pause(100), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn an_outage_pauses_everything_then_one_probe_and_an_answer_resets_it() {
    let b = budget(180, 0.1);
    one(&b, Priority::Refresh, org(200, 199, 60)).await;
    // Two attempts without an answer: an outage.
    for _ in 0..2 {
        let mut p = b.acquire(Priority::Submit).await;
        p.mark_sent();
        p.failed();
    }
    let snap = b.snapshot();
    assert_eq!(snap.consecutive_failures, 2);
    assert_eq!(snap.outage_pause_for, Some(Duration::from_secs(1)));
    assert!(b.try_acquire(Priority::Cancel).is_none(), "nothing is sent during the pause");
    // A 5xx answer extends it.
    let t0 = Instant::now();
    let mut p = b.acquire(Priority::Submit).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    p.mark_sent();
    // While the probe is out, nothing else goes, and a waiter stays waiting when the probe
    // fails too.
    assert!(b.try_acquire(Priority::Submit).is_none(), "one probe at a time");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(Priority::Submit).await })
    };
    tokio::task::yield_now().await;
    p.complete_server_error(&org(200, 197, 59));
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "a failed probe releases nobody");
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(b.snapshot().consecutive_failures, 3);
    assert_eq!(b.snapshot().outage_pause_for, Some(Duration::from_secs(2)));
    let t1 = Instant::now();
    let mut p = b.acquire(Priority::Refresh).await;
    assert_eq!(t1.elapsed(), Duration::from_secs(2));
    p.mark_sent();
    // An answer: back to normal at once.
    p.complete(&org(200, 196, 57), None);
    let snap = b.snapshot();
    assert_eq!((snap.consecutive_failures, snap.outage_pause_for), (0, None));
    let a = b.try_acquire(Priority::Refresh);
    let c = b.try_acquire(Priority::Refresh);
    assert!(a.is_some() && c.is_some(), "several in flight again");
}

#[tokio::test(start_paused = true)]
async fn a_held_permit_is_unusable_after_a_429_its_window_or_a_lower_limit() {
    // A 429 answered while the permit was held.
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, org(100, 99, 60)).await;
    let held = b.try_acquire(Priority::Submit).expect("budget left");
    assert!(held.usable(), "a fresh permit is usable");
    let mut other = b.try_acquire(Priority::Submit).expect("budget left");
    other.mark_sent();
    other.complete(&org(100, 0, 7), Some((ThrottleScope::Organization, Duration::from_secs(7))));
    assert!(!held.usable(), "held across a 429");
    drop(held);
    tokio::time::advance(Duration::from_secs(9)).await;

    // Its window closed while it was held.
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, org(100, 99, 60)).await;
    let held = b.try_acquire(Priority::Submit).expect("budget left");
    tokio::time::advance(Duration::from_secs(62)).await;
    assert!(!held.usable(), "held into the next window");
    drop(held);

    // A lower limit learned while it was held leaves the window over-committed.
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, org(100, 99, 60)).await;
    let held: Vec<Permit> = (0..5).map(|_| b.try_acquire(Priority::Submit).expect("budget left")).collect();
    let mut p = b.try_acquire(Priority::Submit).expect("budget left");
    p.mark_sent();
    p.complete(&org(5, 0, 50), None);
    assert!(held.iter().all(|h| !h.usable()), "over the new limit");
    // Handed back, a sent one stays counted and nothing more fits in this window.
    drop(held);
    assert!(b.try_acquire(Priority::Submit).is_none());

    // An outage pause.
    let b = budget(100, 0.0);
    one(&b, Priority::Submit, org(100, 99, 60)).await;
    let held = b.try_acquire(Priority::Submit).expect("budget left");
    for _ in 0..OUTAGE_AFTER {
        let mut p = b.acquire(Priority::Refresh).await;
        p.mark_sent();
        p.failed();
    }
    assert!(!held.usable(), "held into an outage pause");
}
