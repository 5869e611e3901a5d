//! Webhook notification services: payload `{event, build, pipeline, sender}` (+ `job` for
//! job events), `X-Buildkite-Event`, and `X-Buildkite-Token` or `X-Buildkite-Signature`
//! (`timestamp=<unix>,signature=<hex HMAC-SHA256(token, "<timestamp>.<body>")>`).
//! Delivery is at most once by default (Buildkite documents no redelivery: "The last 20
//! webhook request and responses are saved, so you can debug and inspect your webhook", docs
//! "Webhooks"); retries with exponential backoff only when `max_attempts > 1`. Optional delay,
//! jitter (reordering) and duplicates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::{WebhookAuth, WebhookBodyShape, WebhookConfig};
use crate::render::Ctx;
use crate::sim::Sim;
use crate::state::Event;

/// Delivery counters of one webhook.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WebhookStats {
    /// Events that matched this webhook.
    pub events: u64,
    /// HTTP attempts (first tries, retries and duplicates).
    pub attempts: u64,
    /// Attempts answered 2xx.
    pub delivered: u64,
    /// Attempts that failed (connection error, timeout, non-2xx).
    pub failed_attempts: u64,
    /// Retried attempts.
    pub retries: u64,
    /// Extra (duplicate) deliveries scheduled.
    pub duplicates: u64,
    /// Deliveries abandoned after `max_attempts`.
    pub gave_up: u64,
    /// Successful deliveries per event name.
    pub delivered_by_event: BTreeMap<String, u64>,
}

/// A configured webhook with its counters.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookInfo {
    pub id: Uuid,
    pub config: WebhookConfig,
    pub stats: WebhookStats,
}

struct Entry {
    id: Uuid,
    cfg: WebhookConfig,
    stats: Arc<Mutex<WebhookStats>>,
}

pub struct Webhooks {
    entries: Mutex<Vec<Entry>>,
    client: reqwest::Client,
    /// Events produced by the state machine (whether or not a webhook wants them).
    pub events_seen: AtomicU64,
}

pub const ALL_EVENTS: &[&str] = &[
    "ping",
    "build.scheduled",
    "build.running",
    "build.failing",
    "build.finished",
    "build.skipped",
    "job.scheduled",
    "job.started",
    "job.finished",
    "job.activated",
];

impl Webhooks {
    pub fn new(configs: &[WebhookConfig]) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| anyhow::anyhow!("building the webhook HTTP client: {e}"))?;
        let hooks = Self { entries: Mutex::new(Vec::new()), client, events_seen: AtomicU64::new(0) };
        for c in configs {
            hooks.add(c.clone());
        }
        Ok(hooks)
    }

    pub fn add(&self, cfg: WebhookConfig) -> Uuid {
        let id = Uuid::new_v4();
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).push(Entry { id, cfg, stats: Arc::default() });
        id
    }

    pub fn remove(&self, id: Uuid) -> bool {
        let mut g = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let before = g.len();
        g.retain(|e| e.id != id);
        g.len() != before
    }

    pub fn update(&self, id: Uuid, cfg: WebhookConfig) -> bool {
        let mut g = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match g.iter_mut().find(|e| e.id == id) {
            Some(e) => {
                e.cfg = cfg;
                true
            }
            None => false,
        }
    }

    pub fn list(&self) -> Vec<WebhookInfo> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| WebhookInfo {
                id: e.id,
                config: e.cfg.clone(),
                stats: e.stats.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            })
            .collect()
    }

    /// Sum of the counters of all webhooks.
    pub fn totals(&self) -> WebhookStats {
        let mut t = WebhookStats::default();
        for w in self.list() {
            let s = w.stats;
            t.events += s.events;
            t.attempts += s.attempts;
            t.delivered += s.delivered;
            t.failed_attempts += s.failed_attempts;
            t.retries += s.retries;
            t.duplicates += s.duplicates;
            t.gave_up += s.gave_up;
            for (k, v) in s.delivered_by_event {
                *t.delivered_by_event.entry(k).or_default() += v;
            }
        }
        t
    }

    fn targets(&self, event: &str) -> Vec<(WebhookConfig, Arc<Mutex<WebhookStats>>)> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.cfg.events.is_empty() || e.cfg.events.iter().any(|x| x == event))
            .map(|e| (e.cfg.clone(), Arc::clone(&e.stats)))
            .collect()
    }
}

/// Computes the `X-Buildkite-Signature` value for `body` at `timestamp`.
pub fn signature_header(token: &str, timestamp: i64, body: &[u8]) -> String {
    format!("timestamp={timestamp},signature={}", hex::encode(sign(token, timestamp, body)))
}

fn sign(token: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(token.as_bytes()) {
        Ok(mut mac) => {
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            mac.finalize().into_bytes().to_vec()
        }
        // HMAC accepts keys of any length; unreachable in practice.
        Err(_) => Vec::new(),
    }
}

/// Verifies an `X-Buildkite-Signature` header (constant time), rejecting timestamps older
/// than `max_age_secs`. Handy for tests of webhook receivers.
pub fn verify_signature(token: &str, header: &str, body: &[u8], max_age_secs: i64) -> bool {
    let mut ts = None;
    let mut sig = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("timestamp", v)) => ts = v.trim().parse::<i64>().ok(),
            Some(("signature", v)) => sig = hex::decode(v.trim()).ok(),
            _ => {}
        }
    }
    let (Some(ts), Some(sig)) = (ts, sig) else {
        return false;
    };
    let now = jiff::Timestamp::now().as_second();
    if (now - ts).abs() > max_age_secs {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token.as_bytes()) else {
        return false;
    };
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Consumes state-machine events and fans them out to the webhooks.
pub async fn run_worker(sim: Arc<Sim>, mut rx: mpsc::UnboundedReceiver<Event>) {
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev { Some(ev) => ev, None => break },
            () = sim.shutdown.cancelled() => break,
        };
        sim.webhooks.events_seen.fetch_add(1, Ordering::Relaxed);
        for (cfg, stats) in sim.webhooks.targets(ev.name) {
            stats.lock().unwrap_or_else(|e| e.into_inner()).events += 1;
            let sim2 = Arc::clone(&sim);
            let ev = ev.clone();
            sim.tasks.spawn(async move {
                deliver(sim2, cfg, stats, Payload::Event(ev)).await;
            });
        }
    }
}

/// Sends a `ping` to one webhook (done when a webhook is added at run time).
pub fn ping(sim: &Arc<Sim>, id: Uuid) {
    let target = sim
        .webhooks
        .entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|e| e.id == id)
        .map(|e| (e.cfg.clone(), Arc::clone(&e.stats)));
    if let Some((cfg, stats)) = target
        && (cfg.events.is_empty() || cfg.events.iter().any(|e| e == "ping"))
    {
        stats.lock().unwrap_or_else(|e| e.into_inner()).events += 1;
        let sim2 = Arc::clone(sim);
        sim.tasks.spawn(async move {
            deliver(sim2, cfg, stats, Payload::Ping(id)).await;
        });
    }
}

enum Payload {
    Event(Event),
    Ping(Uuid),
}

fn render(sim: &Sim, payload: &Payload, cfg: &WebhookConfig) -> Option<(&'static str, Bytes)> {
    let inner = sim.lock();
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    let sender =
        inner.users.first().map(|(_, u)| json!({"id": u.id, "name": u.name})).unwrap_or(serde_json::Value::Null);
    let (name, body) = match payload {
        Payload::Ping(id) => (
            "ping",
            json!({
                "event": "ping",
                "service": {"id": id, "provider": "webhook", "settings": {"url": cfg.url}},
                "organization": ctx.organization(),
                "sender": sender,
            }),
        ),
        Payload::Event(ev) if cfg.body_shape == WebhookBodyShape::ServicesConsole => {
            let b = inner.builds.get(&ev.build)?;
            let mut body = json!({"event": ev.name, "build": ctx.console_build(b)});
            if let Some(j) = ev.job.and_then(|j| inner.jobs.get(&j))
                && let serde_json::Value::Object(m) = &mut body
            {
                m.insert("job".into(), ctx.console_job(j, b));
            }
            (ev.name, body)
        }
        Payload::Event(ev) => {
            let b = inner.builds.get(&ev.build)?;
            let p = inner.pipelines.get(&b.pipeline)?;
            let mut body = json!({
                "event": ev.name,
                "build": ctx.build(b, false, false),
                "pipeline": ctx.pipeline(p, false),
                "sender": sender,
            });
            if let Some(j) = ev.job.and_then(|j| inner.jobs.get(&j))
                && let serde_json::Value::Object(m) = &mut body
            {
                m.insert("job".into(), ctx.job(j, b, true));
            }
            (ev.name, body)
        }
    };
    serde_json::to_vec(&body).ok().map(|v| (name, Bytes::from(v)))
}

async fn deliver(sim: Arc<Sim>, cfg: WebhookConfig, stats: Arc<Mutex<WebhookStats>>, payload: Payload) {
    let d = cfg.delivery.clone();
    let (jitter, dup) = {
        let mut rng = rand::rng();
        let jitter = if d.jitter_ms > 0 { rng.random_range(0..=d.jitter_ms) } else { 0 };
        let dup = d.duplicate_probability > 0.0 && rng.random_bool(d.duplicate_probability.clamp(0.0, 1.0));
        (jitter, dup)
    };
    let wait = Duration::from_millis(d.delay_ms.saturating_add(jitter));
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = sim.shutdown.cancelled() => return,
    }
    // Rendered now, not at event time: like Buildkite, the payload may show a later state.
    let Some((event, body)) = render(&sim, &payload, &cfg) else {
        return;
    };
    if dup {
        stats.lock().unwrap_or_else(|e| e.into_inner()).duplicates += 1;
        let sim2 = Arc::clone(&sim);
        let (cfg2, stats2, body2) = (cfg.clone(), Arc::clone(&stats), body.clone());
        let extra = {
            let mut rng = rand::rng();
            rng.random_range(0..=d.jitter_ms.max(20))
        };
        sim.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(extra)) => {}
                () = sim2.shutdown.cancelled() => return,
            }
            send_with_retries(&sim2, &cfg2, &stats2, event, body2).await;
        });
    }
    send_with_retries(&sim, &cfg, &stats, event, body).await;
}

async fn send_with_retries(sim: &Sim, cfg: &WebhookConfig, stats: &Mutex<WebhookStats>, event: &str, body: Bytes) {
    let d = &cfg.delivery;
    for attempt in 0..d.max_attempts.max(1) {
        if attempt > 0 {
            let backoff = d.backoff_ms.saturating_mul(1u64 << (attempt - 1).min(16));
            stats.lock().unwrap_or_else(|e| e.into_inner()).retries += 1;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                () = sim.shutdown.cancelled() => return,
            }
        }
        stats.lock().unwrap_or_else(|e| e.into_inner()).attempts += 1;
        let mut req = sim
            .webhooks
            .client
            .post(&cfg.url)
            .timeout(Duration::from_millis(d.timeout_ms.max(1)))
            .header("Content-Type", "application/json")
            .header("User-Agent", "Buildkite-Request")
            .header("X-Buildkite-Event", event);
        req = match cfg.auth {
            WebhookAuth::Token => req.header("X-Buildkite-Token", &cfg.token),
            WebhookAuth::Signature => {
                let ts = jiff::Timestamp::now().as_second();
                req.header("X-Buildkite-Signature", signature_header(&cfg.token, ts, &body))
            }
        };
        let ok = tokio::select! {
            r = req.body(body.clone()).send() => matches!(r, Ok(resp) if resp.status().is_success()),
            () = sim.shutdown.cancelled() => return,
        };
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            s.delivered += 1;
            *s.delivered_by_event.entry(event.to_string()).or_default() += 1;
            return;
        }
        s.failed_attempts += 1;
    }
    stats.lock().unwrap_or_else(|e| e.into_inner()).gave_up += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_roundtrip() {
        let now = jiff::Timestamp::now().as_second();
        let h = signature_header("secret", now, b"{\"a\":1}");
        assert!(verify_signature("secret", &h, b"{\"a\":1}", 300));
        assert!(!verify_signature("other", &h, b"{\"a\":1}", 300));
        assert!(!verify_signature("secret", &h, b"{\"a\":2}", 300));
        let old = signature_header("secret", now - 1000, b"x");
        assert!(!verify_signature("secret", &old, b"x", 300));
    }
}
