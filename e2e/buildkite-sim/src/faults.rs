//! Fault injection: latency, injected 5xx, dropped connections and outage windows.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde::Serialize;

use crate::config::{EndpointFault, FaultConfig, OutageConfig, OutageMode};

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    Pass,
    Error(u16),
    Drop,
}

#[derive(Debug, Clone, Copy)]
pub struct FaultDecision {
    pub delay: Duration,
    pub action: FaultAction,
}

#[derive(Debug, Clone)]
struct ActiveOutage {
    until: Instant,
    mode: OutageMode,
    include_storage: bool,
}

/// Outage status for `/_sim/outage`.
#[derive(Debug, Clone, Serialize)]
pub struct OutageStatus {
    pub active: bool,
    pub remaining_secs: f64,
    pub mode: Option<OutageMode>,
    pub include_storage: bool,
}

pub struct Faults {
    cfg: Mutex<FaultConfig>,
    outage: Mutex<Option<ActiveOutage>>,
}

impl Faults {
    pub fn new(mut cfg: FaultConfig) -> Self {
        let outage = cfg.outage.take().map(|o| to_active(&o));
        Self { cfg: Mutex::new(cfg), outage: Mutex::new(outage) }
    }

    pub fn config(&self) -> FaultConfig {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, mut cfg: FaultConfig) {
        if let Some(o) = cfg.outage.take() {
            self.start_outage(&o);
        }
        *self.cfg.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
    }

    pub fn set_endpoint(&self, key: String, fault: Option<EndpointFault>) {
        let mut g = self.cfg.lock().unwrap_or_else(|e| e.into_inner());
        match fault {
            Some(f) => {
                g.endpoints.insert(key, f);
            }
            None => {
                g.endpoints.remove(&key);
            }
        }
    }

    pub fn start_outage(&self, o: &OutageConfig) {
        *self.outage.lock().unwrap_or_else(|e| e.into_inner()) = Some(to_active(o));
    }

    pub fn end_outage(&self) {
        *self.outage.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn outage_status(&self) -> OutageStatus {
        let g = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match g.as_ref() {
            Some(o) if o.until > now => OutageStatus {
                active: true,
                remaining_secs: (o.until - now).as_secs_f64(),
                mode: Some(o.mode),
                include_storage: o.include_storage,
            },
            _ => OutageStatus { active: false, remaining_secs: 0.0, mode: None, include_storage: false },
        }
    }

    /// Decides the fault for one request to endpoint `key`.
    pub fn decide(&self, key: &str, storage: bool) -> FaultDecision {
        {
            let g = self.outage.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(o) = g.as_ref()
                && o.until > Instant::now()
                && (!storage || o.include_storage)
            {
                return FaultDecision {
                    delay: Duration::ZERO,
                    action: match o.mode {
                        OutageMode::Unavailable => FaultAction::Error(503),
                        OutageMode::Drop => FaultAction::Drop,
                    },
                };
            }
        }
        let fault = {
            let g = self.cfg.lock().unwrap_or_else(|e| e.into_inner());
            g.endpoints.get(key).unwrap_or(&g.default).clone()
        };
        if fault == EndpointFault::default() {
            return FaultDecision { delay: Duration::ZERO, action: FaultAction::Pass };
        }
        let mut rng = rand::rng();
        let jitter = if fault.latency_jitter_ms > 0 { rng.random_range(0..=fault.latency_jitter_ms) } else { 0 };
        let delay = Duration::from_millis(fault.latency_ms.saturating_add(jitter));
        let action = if fault.drop_rate > 0.0 && rng.random_bool(fault.drop_rate.clamp(0.0, 1.0)) {
            FaultAction::Drop
        } else if fault.error_rate > 0.0 && rng.random_bool(fault.error_rate.clamp(0.0, 1.0)) {
            FaultAction::Error(fault.error_status)
        } else {
            FaultAction::Pass
        };
        FaultDecision { delay, action }
    }
}

fn to_active(o: &OutageConfig) -> ActiveOutage {
    ActiveOutage {
        until: Instant::now() + Duration::from_secs_f64(o.duration_secs.clamp(0.0, 1e9)),
        mode: o.mode,
        include_storage: o.include_storage,
    }
}
