//! Pure helpers for the wire format: `Link` headers, error messages of answers, 429 bodies,
//! `Retry-After`, URL origins, redaction.

use std::time::Duration;

use http::HeaderMap;
use reqwest::Url;
use serde_json::Value;

use super::config::Secret;

/// The `rel="next"` target of an RFC 8288 `Link` header, e.g.
/// `<https://api…/builds?page=2>; rel="next", <https://api…/builds?page=5>; rel="last"`.
pub fn link_next(value: &str) -> Option<String> {
    link_rel(value, "next")
}

/// The target of relation `rel` in a `Link` header.
pub fn link_rel(value: &str, rel: &str) -> Option<String> {
    let mut rest = value;
    loop {
        let start = rest.find('<')?;
        let end = start + rest[start..].find('>')?;
        let target = rest[start + 1..end].trim();
        let after = &rest[end + 1..];
        // Parameters run until the next link (a comma outside quotes followed by `<`).
        let params_end = next_link_start(after);
        // Without the comma that separates this link from the next.
        let params = after[..params_end].trim_end().trim_end_matches(',');
        let matches = params.split(';').any(|p| {
            let Some((k, v)) = p.split_once('=') else { return false };
            k.trim().eq_ignore_ascii_case("rel")
                && v.trim().trim_matches('"').split_ascii_whitespace().any(|r| r.eq_ignore_ascii_case(rel))
        });
        if matches && !target.is_empty() {
            return Some(target.to_string());
        }
        rest = &after[params_end..];
    }
}

fn next_link_start(s: &str) -> usize {
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => return i,
            _ => {}
        }
    }
    s.len()
}

/// Whether `url` has the same scheme, host and port as `base` (so the API token may be sent).
pub fn same_origin(url: &Url, base: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
}

/// Maximum length of a message taken from an answer.
const MAX_MESSAGE: usize = 500;

/// A readable message from an error answer: `message` (and `errors`) of a JSON body, else
/// the start of the text.
pub fn answer_message(body: &[u8]) -> String {
    let msg = match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let mut m = v.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_default();
            if let Some(errors) = v.get("errors").filter(|e| !e.is_null()) {
                let errors = errors.to_string();
                m = if m.is_empty() { errors } else { format!("{m}: {errors}") };
            }
            if m.is_empty() { v.to_string() } else { m }
        }
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    truncate(&msg, MAX_MESSAGE)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The `reset` (seconds) of a 429 body `{message, scope, limit, current, reset}`, and its
/// scope.
pub fn throttle_body(body: &[u8]) -> (Option<Duration>, Option<String>) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let reset =
                v.get("reset").and_then(|r| r.as_u64().or_else(|| r.as_str().and_then(|s| s.trim().parse().ok())));
            let scope = v.get("scope").and_then(Value::as_str).map(str::to_string);
            (reset.map(Duration::from_secs), scope)
        }
        Err(_) => (None, None),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// `Buildkite-Agent-Metrics-Poll-Duration` (seconds).
pub fn poll_duration(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("buildkite-agent-metrics-poll-duration")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Tolerate "10s" or fractional seconds.
    let v = v.trim_end_matches('s');
    v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0).map(Duration::from_secs_f64)
}

/// Replaces every occurrence of the secrets in `text` by `[redacted]`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<Secret>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        Redactor { secrets: secrets.into_iter().filter(|s| s.expose().len() >= 4).collect() }
    }

    pub fn clean(&self, text: impl Into<String>) -> String {
        let mut text = text.into();
        for s in &self.secrets {
            if text.contains(s.expose()) {
                text = text.replace(s.expose(), "[redacted]");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header() {
        let h = r#"<https://api.buildkite.com/v2/organizations/o/builds?page=2&per_page=100>; rel="next", <https://api.buildkite.com/v2/organizations/o/builds?page=9&per_page=100>; rel="last""#;
        assert_eq!(
            link_next(h).as_deref(),
            Some("https://api.buildkite.com/v2/organizations/o/builds?page=2&per_page=100")
        );
        assert_eq!(
            link_rel(h, "last").as_deref(),
            Some("https://api.buildkite.com/v2/organizations/o/builds?page=9&per_page=100")
        );
        // Last page: prev/first only.
        let h = r#"<https://x/b?page=1>; rel="first", <https://x/b?page=2>; rel="prev""#;
        assert_eq!(link_next(h), None);
        // Empty header (everything fits in one page).
        assert_eq!(link_next(""), None);
        // Unquoted rel, several relations, extra parameters, odd spacing.
        assert_eq!(link_next("<https://x/a?page=3>;rel=next").as_deref(), Some("https://x/a?page=3"));
        assert_eq!(
            link_next(r#"<https://x/a?page=3>; title="a, <b>"; rel="prev next""#).as_deref(),
            Some("https://x/a?page=3")
        );
        assert_eq!(link_next("garbage"), None);
        assert_eq!(link_next("<https://x/a"), None);
    }

    #[test]
    fn origins() {
        let base = Url::parse("https://api.buildkite.com/v2").unwrap();
        assert!(same_origin(&Url::parse("https://api.buildkite.com:443/v2/x?page=2").unwrap(), &base));
        assert!(!same_origin(&Url::parse("http://api.buildkite.com/v2").unwrap(), &base));
        assert!(!same_origin(&Url::parse("https://evil.example/v2").unwrap(), &base));
        assert!(!same_origin(&Url::parse("https://api.buildkite.com:8443/v2").unwrap(), &base));
    }

    #[test]
    fn messages() {
        assert_eq!(answer_message(br#"{"message":"No build found"}"#), "No build found");
        assert_eq!(
            answer_message(br#"{"message":"Validation Failed","errors":[{"field":"commit","code":"missing_field"}]}"#),
            r#"Validation Failed: [{"code":"missing_field","field":"commit"}]"#
        );
        assert_eq!(answer_message(b"  <html>oops</html>\n"), "<html>oops</html>");
        assert!(answer_message(&[b'x'; 2000]).chars().count() <= 501);
    }

    #[test]
    fn throttle_bodies_and_headers() {
        let (reset, scope) =
            throttle_body(br#"{"message":"slow down","scope":"rest","limit":200,"current":201,"reset":17}"#);
        assert_eq!(reset, Some(Duration::from_secs(17)));
        assert_eq!(scope.as_deref(), Some("rest"));
        assert_eq!(throttle_body(b"nope"), (None, None));
        let mut h = HeaderMap::new();
        h.insert("Retry-After", "3".parse().unwrap());
        h.insert("Buildkite-Agent-Metrics-Poll-Duration", "15".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        assert_eq!(poll_duration(&h), Some(Duration::from_secs(15)));
        h.insert("Buildkite-Agent-Metrics-Poll-Duration", "2.5".parse().unwrap());
        assert_eq!(poll_duration(&h), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn redaction() {
        let r = Redactor::new([Secret::new("bkua_canary_1234")]);
        assert_eq!(r.clean("token bkua_canary_1234 echoed"), "token [redacted] echoed");
    }
}
