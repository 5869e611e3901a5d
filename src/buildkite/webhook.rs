//! Verification and decoding of Buildkite webhook deliveries.
//!
//! A delivery authenticates with one of:
//! * `X-Buildkite-Signature: timestamp=<unix seconds>,signature=<hex>` where the signature is
//!   HMAC-SHA256(key = webhook token, message = `"<timestamp>.<raw body>"`); checked in
//!   constant time, and the timestamp must be within `max_skew` of `now` (both ways);
//! * `X-Buildkite-Token: <token>`, compared in constant time.
//!
//! When both headers are present the signature is checked (and the token ignored). Errors
//! say what was wrong, never the secret nor what the sender presented.

use std::time::Duration;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::config::Secret;
use super::types::{Build, Job};

/// Default tolerance for signature timestamps (Buildkite suggests 5 minutes).
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

const TOKEN_HEADER: &str = "x-buildkite-token";
const SIGNATURE_HEADER: &str = "x-buildkite-signature";
const EVENT_HEADER: &str = "x-buildkite-event";

/// How a delivery proved it comes from Buildkite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAuth {
    Token,
    Signature,
}

/// A verified delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// `ping`, `build.scheduled`, `build.running`, `build.finished`, `job.finished`, …
    pub event: String,
    /// The build (with `meta_data`; it may show a later state than the event says).
    pub build: Option<Build>,
    /// The job, for `job.*` events.
    pub job: Option<Job>,
    pub auth: WebhookAuth,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("no X-Buildkite-Signature or X-Buildkite-Token header")]
    MissingAuthentication,
    #[error("header {0} is not valid text")]
    HeaderNotText(&'static str),
    #[error("X-Buildkite-Token does not match the configured webhook token")]
    TokenMismatch,
    #[error("X-Buildkite-Signature is malformed: {0}")]
    MalformedSignature(&'static str),
    #[error("X-Buildkite-Signature: the signature is not valid hex")]
    SignatureNotHex,
    #[error("X-Buildkite-Signature does not match the body and timestamp")]
    SignatureMismatch,
    #[error("X-Buildkite-Signature timestamp is {age_secs} s old (at most {max_skew_secs} s allowed)")]
    StaleTimestamp { age_secs: i64, max_skew_secs: u64 },
    #[error("X-Buildkite-Signature timestamp is {ahead_secs} s in the future (at most {max_skew_secs} s allowed)")]
    FutureTimestamp { ahead_secs: i64, max_skew_secs: u64 },
    #[error("no event name (X-Buildkite-Event header or `event` in the body)")]
    MissingEvent,
    #[error("the body is not a valid webhook payload: {0}")]
    InvalidBody(String),
}

impl WebhookError {
    /// Authentication failures (answer 401) versus malformed deliveries (answer 400).
    pub fn is_unauthorized(&self) -> bool {
        // A bad event header on an authenticated delivery is malformed input, not a forgery.
        !matches!(
            self,
            WebhookError::MissingEvent | WebhookError::InvalidBody(_) | WebhookError::HeaderNotText(EVENT_HEADER)
        )
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, WebhookError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.trim())).map_err(|_| WebhookError::HeaderNotText(name)),
    }
}

/// Checks `timestamp=…,signature=…` against `body`.
fn verify_signature(
    value: &str,
    body: &[u8],
    secret: &Secret,
    now: Timestamp,
    max_skew: Duration,
) -> Result<(), WebhookError> {
    let mut timestamp = None;
    let mut signature = None;
    for part in value.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(WebhookError::MalformedSignature("expected key=value pairs"));
        };
        match k.trim() {
            "timestamp" => timestamp = Some(v.trim()),
            "signature" => signature = Some(v.trim()),
            _ => {}
        }
    }
    let ts_text = timestamp.ok_or(WebhookError::MalformedSignature("no timestamp"))?;
    let sig_hex = signature.ok_or(WebhookError::MalformedSignature("no signature"))?;
    let ts: i64 = ts_text.parse().map_err(|_| WebhookError::MalformedSignature("timestamp is not a whole number"))?;
    let sig = hex::decode(sig_hex).map_err(|_| WebhookError::SignatureNotHex)?;
    if sig.len() != 32 {
        return Err(WebhookError::MalformedSignature("signature is not 32 bytes"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| WebhookError::MalformedSignature("unusable key"))?;
    mac.update(ts_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(&sig).map_err(|_| WebhookError::SignatureMismatch)?;

    let max_skew_secs = max_skew.as_secs();
    let skew = i64::try_from(max_skew_secs).unwrap_or(i64::MAX);
    let age = now.as_second().saturating_sub(ts);
    if age > skew {
        return Err(WebhookError::StaleTimestamp { age_secs: age, max_skew_secs });
    }
    if -age > skew {
        return Err(WebhookError::FutureTimestamp { ahead_secs: -age, max_skew_secs });
    }
    Ok(())
}

/// Verifies a delivery and decodes it. `secret` is the webhook token; `now` the current time
/// (injectable for tests); `max_skew` the tolerance for signature timestamps (see
/// [`DEFAULT_MAX_SKEW`]).
pub fn parse_webhook(
    headers: &HeaderMap,
    body: &[u8],
    secret: &Secret,
    now: Timestamp,
    max_skew: Duration,
) -> Result<WebhookEvent, WebhookError> {
    let auth = if let Some(sig) = header(headers, SIGNATURE_HEADER)? {
        verify_signature(sig, body, secret, now, max_skew)?;
        WebhookAuth::Signature
    } else if let Some(token) = header(headers, TOKEN_HEADER)? {
        if !bool::from(token.as_bytes().ct_eq(secret.expose().as_bytes())) {
            return Err(WebhookError::TokenMismatch);
        }
        WebhookAuth::Token
    } else {
        return Err(WebhookError::MissingAuthentication);
    };

    let v: Value = serde_json::from_slice(body).map_err(|e| WebhookError::InvalidBody(e.to_string()))?;
    if !v.is_object() {
        return Err(WebhookError::InvalidBody("not a JSON object".into()));
    }
    let event = match header(headers, EVENT_HEADER)? {
        Some(e) if !e.is_empty() => e.to_string(),
        _ => v
            .get("event")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .ok_or(WebhookError::MissingEvent)?
            .to_string(),
    };
    let mut build = match v.get("build") {
        None | Some(Value::Null) => None,
        Some(b) => Some(Build::deserialize(b).map_err(|e| WebhookError::InvalidBody(format!("build: {e}")))?),
    };
    // The body names the pipeline beside the build (docs "Webhooks": `build`, `pipeline`,
    // `sender`); a build object without its own keeps that one.
    if let Some(b) = build.as_mut()
        && b.pipeline_slug().is_none()
        && let Some(p) = v.get("pipeline").filter(|p| p.is_object())
    {
        b.pipeline = super::types::PipelineRef::deserialize(p).ok();
    }
    let job = match v.get("job") {
        None | Some(Value::Null) => None,
        Some(j) => Some(Job::deserialize(j).map_err(|e| WebhookError::InvalidBody(format!("job: {e}")))?),
    };
    Ok(WebhookEvent { event, build, job, auth })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    /// The shape of the only real webhook body in public code (go-buildkite
    /// `builds_test.go`, "taken from buildkite services console"): timestamps like
    /// `2018-03-25 03:58:14 UTC`, no `meta_data`, the pipeline beside the build.
    #[test]
    fn console_shaped_bodies_parse() {
        let body = br#"{"event":"build.finished","build":{"id":"b-9","number":12,"state":"passed",
            "branch":"benchkite/prod/u-1","created_at":"2018-03-25 03:58:14 UTC",
            "started_at":"2018-03-25 03:58:20 UTC","finished_at":"2018-03-25 04:01:02 UTC"},
            "pipeline":{"id":"p-1","slug":"prod-nvidia-h100","name":"prod nvidia-h100"},
            "sender":{"id":"s","name":"Someone"}}"#;
        let h = headers(&[("X-Buildkite-Token", SECRET), ("X-Buildkite-Event", "build.finished")]);
        let ev = parse_webhook(&h, body, &secret(), Timestamp::now(), DEFAULT_MAX_SKEW).unwrap();
        let b = ev.build.unwrap();
        assert!(b.meta_data.is_empty());
        assert_eq!(b.created_at, Some("2018-03-25T03:58:14Z".parse().unwrap()));
        assert_eq!(b.finished_at, Some("2018-03-25T04:01:02Z".parse().unwrap()));
        assert_eq!(b.pipeline_slug(), Some("prod-nvidia-h100"), "taken from the body's pipeline");
        assert_eq!(b.branch.as_deref(), Some("benchkite/prod/u-1"));
    }
    use crate::buildkite::types::BuildState;

    const SECRET: &str = "whsec_canary_0123456789";
    const BODY: &str = r#"{"event":"build.finished","build":{"id":"b-1","number":7,"state":"passed","meta_data":{"benchkite.job":"ns/kj"}}}"#;
    /// Computed with Python: hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    const SIG_1700000000: &str = "5fbe9e3a103328d7bbfc0ac3398418425bab26f3b746c427e31093aa3616ab99";

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn secret() -> Secret {
        Secret::new(SECRET)
    }

    #[test]
    fn a_bad_event_header_on_an_authenticated_delivery_is_malformed_not_forged() {
        // Found by fuzzing (e2e/fuzz/regressions/webhook/event-header-not-text).
        let mut h = headers(&[("X-Buildkite-Token", SECRET)]);
        h.insert("x-buildkite-event", http::HeaderValue::from_bytes(&[0xdb]).unwrap());
        let err = parse_webhook(&h, b"{}", &secret(), ts(1_700_000_000), DEFAULT_MAX_SKEW).unwrap_err();
        assert!(matches!(err, WebhookError::HeaderNotText(EVENT_HEADER)), "{err:?}");
        assert!(!err.is_unauthorized(), "answered 400, not 401");
        let mut bad_sig = headers(&[]);
        bad_sig.insert("x-buildkite-signature", http::HeaderValue::from_bytes(&[0xdb]).unwrap());
        let err = parse_webhook(&bad_sig, b"{}", &secret(), ts(1_700_000_000), DEFAULT_MAX_SKEW).unwrap_err();
        assert!(err.is_unauthorized(), "a broken signature header stays 401: {err:?}");
    }

    fn sig_header(t: i64, sig: &str) -> String {
        format!("timestamp={t},signature={sig}")
    }

    #[test]
    fn valid_signature_from_fixed_vector() {
        let h = headers(&[("X-Buildkite-Signature", &sig_header(1_700_000_000, SIG_1700000000))]);
        let ev = parse_webhook(&h, BODY.as_bytes(), &secret(), ts(1_700_000_100), DEFAULT_MAX_SKEW).unwrap();
        assert_eq!(ev.event, "build.finished");
        assert_eq!(ev.auth, WebhookAuth::Signature);
        let b = ev.build.unwrap();
        assert_eq!(b.number, 7);
        assert_eq!(b.state, BuildState::Passed);
        assert_eq!(b.meta_data["benchkite.job"], "ns/kj");
    }

    /// Signatures computed by Python's hmac module at test time, for several bodies.
    #[test]
    fn valid_signatures_from_python() {
        let bodies = [
            BODY.to_string(),
            r#"{"event":"ping"}"#.to_string(),
            format!(r#"{{"event":"job.finished","job":{{"id":"j","exit_status":-1}},"pad":"{}"}}"#, "é".repeat(300)),
        ];
        let script = r#"
import hmac, hashlib, sys, json
req = json.load(sys.stdin)
for b in req["bodies"]:
    print(hmac.new(req["key"].encode(), (req["ts"] + "." + b).encode(), hashlib.sha256).hexdigest())
"#;
        let input = serde_json::json!({"key": SECRET, "ts": "1712345678", "bodies": bodies}).to_string();
        let mut child =
            match Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn() {
                Ok(c) => c,
                Err(e) => panic!("python3 is needed for this test: {e}"),
            };
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let sigs: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
        assert_eq!(sigs.len(), bodies.len());
        for (body, sig) in bodies.iter().zip(&sigs) {
            let h = headers(&[("x-buildkite-signature", &format!("timestamp=1712345678, signature={sig}"))]);
            let ev = parse_webhook(&h, body.as_bytes(), &secret(), ts(1_712_345_600), DEFAULT_MAX_SKEW)
                .unwrap_or_else(|e| panic!("{e} for {body}"));
            assert!(!ev.event.is_empty());
        }
        // The job event decodes its job.
        let h = headers(&[("x-buildkite-signature", &sig_header(1_712_345_678, &sigs[2]))]);
        let ev = parse_webhook(&h, bodies[2].as_bytes(), &secret(), ts(1_712_345_678), DEFAULT_MAX_SKEW).unwrap();
        assert_eq!(ev.job.unwrap().exit_status, Some(-1));
    }

    #[test]
    fn rejects_bad_signatures() {
        let now = ts(1_700_000_000);
        let check = |h: HeaderMap, body: &str| parse_webhook(&h, body.as_bytes(), &secret(), now, DEFAULT_MAX_SKEW);
        // Tampered body.
        let h = headers(&[("X-Buildkite-Signature", &sig_header(1_700_000_000, SIG_1700000000))]);
        assert_eq!(check(h, &BODY.replace("passed", "failed")), Err(WebhookError::SignatureMismatch));
        // Other timestamp than the signed one.
        let h = headers(&[("X-Buildkite-Signature", &sig_header(1_700_000_001, SIG_1700000000))]);
        assert_eq!(check(h, BODY), Err(WebhookError::SignatureMismatch));
        // Wrong key.
        let h = headers(&[("X-Buildkite-Signature", &sig_header(1_700_000_000, SIG_1700000000))]);
        assert_eq!(
            parse_webhook(&h, BODY.as_bytes(), &Secret::new("other"), now, DEFAULT_MAX_SKEW),
            Err(WebhookError::SignatureMismatch)
        );
        // Bad hex, short signature, missing parts.
        let h = headers(&[("X-Buildkite-Signature", &sig_header(1_700_000_000, "zz"))]);
        assert_eq!(check(h, BODY), Err(WebhookError::SignatureNotHex));
        let h = headers(&[("X-Buildkite-Signature", &sig_header(1_700_000_000, "abcd"))]);
        assert!(matches!(check(h, BODY), Err(WebhookError::MalformedSignature(_))));
        let h = headers(&[("X-Buildkite-Signature", &format!("signature={SIG_1700000000}"))]);
        assert_eq!(check(h, BODY), Err(WebhookError::MalformedSignature("no timestamp")));
        let h = headers(&[("X-Buildkite-Signature", "timestamp=1700000000")]);
        assert_eq!(check(h, BODY), Err(WebhookError::MalformedSignature("no signature")));
        let h = headers(&[("X-Buildkite-Signature", "garbage")]);
        assert!(matches!(check(h, BODY), Err(WebhookError::MalformedSignature(_))));
        let h = headers(&[("X-Buildkite-Signature", &sig_header(0, SIG_1700000000).replace('0', "x"))]);
        assert!(check(h, BODY).is_err());
        // No authentication at all.
        assert_eq!(check(HeaderMap::new(), BODY), Err(WebhookError::MissingAuthentication));
    }

    #[test]
    fn timestamp_window() {
        let h = || headers(&[("X-Buildkite-Signature", &sig_header(1_700_000_000, SIG_1700000000))]);
        let at = |now: i64| parse_webhook(&h(), BODY.as_bytes(), &secret(), ts(now), DEFAULT_MAX_SKEW);
        assert!(at(1_700_000_300).is_ok());
        assert_eq!(at(1_700_000_301), Err(WebhookError::StaleTimestamp { age_secs: 301, max_skew_secs: 300 }));
        assert!(at(1_699_999_700).is_ok());
        assert_eq!(at(1_699_999_699), Err(WebhookError::FutureTimestamp { ahead_secs: 301, max_skew_secs: 300 }));
        // A tighter window.
        let r = parse_webhook(&h(), BODY.as_bytes(), &secret(), ts(1_700_000_011), Duration::from_secs(10));
        assert!(matches!(r, Err(WebhookError::StaleTimestamp { age_secs: 11, .. })));
    }

    #[test]
    fn plain_token() {
        let now = ts(1_700_000_000);
        let h = headers(&[("X-Buildkite-Token", SECRET), ("X-Buildkite-Event", "build.running")]);
        let ev = parse_webhook(&h, BODY.as_bytes(), &secret(), now, DEFAULT_MAX_SKEW).unwrap();
        assert_eq!(ev.event, "build.running", "the header names the event");
        assert_eq!(ev.auth, WebhookAuth::Token);
        for wrong in ["whsec_canary_012345678", "whsec_canary_01234567890", "", "x"] {
            let h = headers(&[("X-Buildkite-Token", wrong)]);
            assert_eq!(
                parse_webhook(&h, BODY.as_bytes(), &secret(), now, DEFAULT_MAX_SKEW),
                Err(WebhookError::TokenMismatch)
            );
        }
        // With both headers the signature decides.
        let h = headers(&[("X-Buildkite-Token", SECRET), ("X-Buildkite-Signature", &sig_header(1, SIG_1700000000))]);
        assert_eq!(
            parse_webhook(&h, BODY.as_bytes(), &secret(), now, DEFAULT_MAX_SKEW),
            Err(WebhookError::SignatureMismatch)
        );
    }

    #[test]
    fn body_problems() {
        let now = ts(1_700_000_000);
        let h = headers(&[("X-Buildkite-Token", SECRET)]);
        assert!(matches!(
            parse_webhook(&h, b"{not json", &secret(), now, DEFAULT_MAX_SKEW),
            Err(WebhookError::InvalidBody(_))
        ));
        assert_eq!(parse_webhook(&h, b"{}", &secret(), now, DEFAULT_MAX_SKEW), Err(WebhookError::MissingEvent));
        let e = parse_webhook(&h, br#"{"event":"x","build":"nope"}"#, &secret(), now, DEFAULT_MAX_SKEW).unwrap_err();
        assert!(matches!(e, WebhookError::InvalidBody(_)));
        assert!(!e.is_unauthorized());
        assert!(WebhookError::TokenMismatch.is_unauthorized());
    }

    #[test]
    fn errors_never_show_the_secret() {
        let now = ts(1_700_000_000);
        let attempts = [
            headers(&[("X-Buildkite-Token", "whsec_canary_01234567")]),
            headers(&[("X-Buildkite-Signature", &sig_header(1_600_000_000, SIG_1700000000))]),
            headers(&[("X-Buildkite-Signature", "timestamp=1,signature=zz")]),
        ];
        for h in attempts {
            let e = parse_webhook(&h, BODY.as_bytes(), &secret(), now, DEFAULT_MAX_SKEW).unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(!text.contains("whsec_canary"), "{text}");
        }
    }
}
