//! `buildkite-agent` as a job of the simulator's process executor sees it: the `meta-data`
//! subcommands, talking to the simulator's Agent API with the job token, like the real CLI
//! (`clicommand/meta_data_*.go`, `api/meta_data.go`).
//!
//! - `meta-data set <key> [value]` (value from stdin when omitted; blank key or value refused
//!   before any request), `get <key> [--default X]` (404 with `--default`: prints X),
//!   `exists <key>` (exit 100 when absent), `keys` (one per line).
//! - `--job` (`$BUILDKITE_JOB_ID`), `--build` (`$BUILDKITE_METADATA_BUILD_ID`, get/exists/keys),
//!   `--agent-access-token` (`$BUILDKITE_AGENT_ACCESS_TOKEN`), `--endpoint`
//!   (`$BUILDKITE_AGENT_ENDPOINT`, default `https://agent.buildkite.com/v3`).
//! - Errors: `buildkite-agent: fatal: …` on stderr, exit 1 (`clicommand/errors.go`). 429, 5xx
//!   and connection errors are retried as the agent retries them: 10 attempts, 5 s apart
//!   (`retry.Config{Maximum: 10, Interval: 5 * time.Second}` in `meta_data_set.go`), so a
//!   job rides out a Buildkite outage of under 45 s. `BUILDKITE_SIM_AGENT_RETRY_INTERVAL_MS`
//!   shortens the interval (a simulator-only knob for tests of the failure itself).
//!
//! Anything else (e.g. `artifact upload`) exits 1 saying it is not simulated.

use std::io::Read as _;
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_ENDPOINT: &str = "https://agent.buildkite.com/v3";
const ATTEMPTS: u32 = 10;

/// Parsed arguments: positionals and `--flag value` / `--flag=value` options.
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, String)>,
}

const VALUE_FLAGS: &[&str] = &["job", "build", "default", "agent-access-token", "endpoint", "redacted-vars"];

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args { positional: Vec::new(), flags: Vec::new() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--").filter(|n| !n.is_empty()) else {
            out.positional.push(a.clone());
            continue;
        };
        if let Some((n, v)) = name.split_once('=') {
            out.flags.push((n.to_string(), v.to_string()));
        } else if VALUE_FLAGS.contains(&name) {
            let v = it.next().ok_or_else(|| format!("flag needs an argument: --{name}"))?;
            out.flags.push((name.to_string(), v.clone()));
        } else {
            // Boolean flags of the real CLI (`--debug`, `--no-color`, …) change nothing here.
            out.flags.push((name.to_string(), "true".into()));
        }
    }
    Ok(out)
}

impl Args {
    fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A flag, else its env var; empty counts as unset.
    fn setting(&self, name: &str, env: &str) -> Option<String> {
        self.flag(name).map(str::to_string).or_else(|| std::env::var(env).ok()).filter(|v| !v.is_empty())
    }
}

/// A failed command: message (printed as `buildkite-agent: fatal: …`, empty: silent) and exit.
struct Fail(String, u8);

fn fatal(msg: impl Into<String>) -> Fail {
    Fail(msg.into(), 1)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            if !msg.is_empty() {
                eprintln!("buildkite-agent: fatal: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

fn run(argv: &[String]) -> Result<(), Fail> {
    let (Some(cmd), Some(sub)) = (argv.first(), argv.get(1)) else {
        return Err(fatal("usage: buildkite-agent meta-data set|get|exists|keys … (simulator shim)"));
    };
    if cmd != "meta-data" {
        return Err(fatal(format!("`buildkite-agent {cmd}` is not simulated (only meta-data)")));
    }
    let full = format!("buildkite-agent meta-data {sub}");
    let args = parse(&argv[2..]).map_err(fatal)?;
    let missing = |label: &str| fatal(format!("Missing {label}. See: `{full} --help`"));
    let token = args.setting("agent-access-token", "BUILDKITE_AGENT_ACCESS_TOKEN");
    let endpoint = args.setting("endpoint", "BUILDKITE_AGENT_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
    let job = args.setting("job", "BUILDKITE_JOB_ID");
    let build = args.setting("build", "BUILDKITE_METADATA_BUILD_ID");
    let key = args.positional.first().cloned();
    let client = || -> Result<Client, Fail> {
        let token = token.clone().ok_or_else(|| missing("agent-access-token"))?;
        Ok(Client { endpoint: endpoint.trim_end_matches('/').to_string(), token })
    };
    // `--build` takes precedence over `--job` (get, exists, keys).
    let scope = || -> Result<(String, String), Fail> {
        match (&build, &job) {
            (Some(b), _) => Ok(("build".into(), b.clone())),
            (None, Some(j)) => Ok(("job".into(), j.clone())),
            (None, None) => Err(missing("job")),
        }
    };
    match sub.as_str() {
        "set" => {
            let key = key.ok_or_else(|| missing("meta-data key"))?;
            let job = job.ok_or_else(|| missing("job"))?;
            let value = match args.positional.get(1) {
                Some(v) => v.clone(),
                None => {
                    eprintln!("INFO   Reading meta-data value from STDIN");
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|e| fatal(format!("failed to read from STDIN: {e}")))?;
                    s
                }
            };
            if key.trim().is_empty() {
                return Err(fatal("key cannot be empty, or composed of only whitespace characters"));
            }
            if value.trim().is_empty() {
                return Err(fatal("value cannot be empty, or composed of only whitespace characters"));
            }
            let body = serde_json::json!({"key": key, "value": value});
            client()?
                .post(&format!("jobs/{}/data/set", path_escape(&job)), &body)
                .map_err(|e| fatal(format!("failed to set meta-data: {}", e.message)))?;
            Ok(())
        }
        "get" => {
            let key = key.ok_or_else(|| missing("meta-data key"))?;
            let (scope, id) = scope()?;
            let body = serde_json::json!({"key": key});
            match client()?.post(&format!("{scope}s/{}/data/get", path_escape(&id)), &body) {
                Ok(v) => {
                    println!("{}", v.get("value").and_then(|v| v.as_str()).unwrap_or_default());
                    Ok(())
                }
                Err(e) if e.status == Some(404) && args.flag("default").is_some() => {
                    let d = args.flag("default").unwrap_or_default();
                    eprintln!(
                        "WARN   No meta-data value exists with key {key:?}, returning the supplied default {d:?}"
                    );
                    println!("{d}");
                    Ok(())
                }
                Err(e) => Err(fatal(format!("failed to get meta-data: {}", e.message))),
            }
        }
        "exists" => {
            let key = key.ok_or_else(|| missing("meta-data key"))?;
            let (scope, id) = scope()?;
            let body = serde_json::json!({"key": key});
            let v = client()?
                .post(&format!("{scope}s/{}/data/exists", path_escape(&id)), &body)
                .map_err(|e| fatal(format!("failed to see if meta-data exists: {}", e.message)))?;
            if v.get("exists").and_then(serde_json::Value::as_bool) == Some(true) {
                Ok(())
            } else {
                Err(Fail(String::new(), 100))
            }
        }
        "keys" => {
            let (scope, id) = scope()?;
            let v = client()?
                .post(&format!("{scope}s/{}/data/keys", path_escape(&id)), &serde_json::Value::Null)
                .map_err(|e| fatal(format!("failed to find meta-data keys: {}", e.message)))?;
            for k in v.as_array().into_iter().flatten().filter_map(|k| k.as_str()) {
                println!("{k}");
            }
            Ok(())
        }
        other => Err(fatal(format!("`buildkite-agent meta-data {other}` is not simulated"))),
    }
}

/// `url.PathEscape` with dots escaped too (agent `railsPathEscape`).
fn path_escape(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

struct Client {
    endpoint: String,
    token: String,
}

/// An API error: `<METHOD> <url>: <status line>: <message>` (agent `api.ErrorResponse`).
struct ApiError {
    status: Option<u16>,
    message: String,
}

/// The agent's interval between tries (5 s), unless the simulator-only knob shortens it.
fn retry_interval() -> Duration {
    std::env::var("BUILDKITE_SIM_AGENT_RETRY_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(5), Duration::from_millis)
}

impl Client {
    /// POSTs `body` (JSON; `Null` sends no body), retrying what the agent retries.
    fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ApiError> {
        let url = format!("{}/{path}", self.endpoint);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ApiError { status: None, message: format!("starting the HTTP client: {e}") })?;
        rt.block_on(async {
            let http = reqwest::Client::new();
            let mut last = ApiError { status: None, message: String::new() };
            for attempt in 1..=ATTEMPTS {
                let mut req = http
                    .post(&url)
                    .header("Authorization", format!("Token {}", self.token))
                    .header("User-Agent", "buildkite-agent/3 (buildkite-sim shim)")
                    .timeout(Duration::from_secs(60));
                if !body.is_null() {
                    req = req.header("Content-Type", "application/json").body(body.to_string());
                }
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        if status.is_success() {
                            return serde_json::from_str(&text).map_err(|e| ApiError {
                                status: Some(status.as_u16()),
                                message: format!("POST {url}: decoding the response: {e}"),
                            });
                        }
                        let msg = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string));
                        let line = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or_default());
                        last = ApiError {
                            status: Some(status.as_u16()),
                            message: match msg {
                                Some(m) => format!("POST {url}: {line}: {m}"),
                                None => format!("POST {url}: {line}"),
                            },
                        };
                        if !(status.as_u16() == 429 || status.is_server_error()) {
                            return Err(last);
                        }
                    }
                    Err(e) => last = ApiError { status: None, message: format!("POST {url}: {e}") },
                }
                if attempt < ATTEMPTS {
                    eprintln!("WARN   {} (Attempt {attempt}/{ATTEMPTS})", last.message);
                    tokio::time::sleep(retry_interval()).await;
                }
            }
            Err(last)
        })
    }
}
