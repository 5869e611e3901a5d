//! `result.json`: what an evaluation hands back, in the exact shape the seeds' Python runner
//! writes (`json.dumps(dataclasses.asdict(FullResult), default=isoformat)`), parsed
//! tolerantly because older runners omit fields and Python writes `null` freely.

use std::collections::BTreeMap;

use jiff::civil::DateTime;
use serde::{Deserialize, Serialize};

use super::lenient;

pub use super::text::{OUTPUT_LIMIT, truncate_output, truncate_output_to};

/// Default cap on the size of a `result.json` we are willing to parse (profile traces are
/// base64 zips, so this is generous; status never holds more than a summary).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 32 * 1024 * 1024;

/// Exit codes of the evaluation harness, as in the contract.
pub mod exit_code {
    /// Everything ran.
    pub const OK: i64 = 0;
    /// CUDA failed.
    pub const CUDA_FAILURE: i64 = 110;
    /// The result pipe (`POPCORN_FD`) failed.
    pub const PIPE_FAILURE: i64 = 111;
    /// The kernel failed validation: the run itself succeeded.
    pub const VALIDATION_FAILURE: i64 = 112;
    /// The cases file was malformed.
    pub const BAD_TEST_SPEC: i64 = 113;
    /// The run hit its timeout and was killed.
    pub const TIMEOUT: i64 = 114;
}

/// Names of the runs in `FullResult.runs`.
pub mod run_name {
    /// The test run.
    pub const TEST: &str = "test";
    /// The benchmark run.
    pub const BENCHMARK: &str = "benchmark";
    /// The ranked run; the only one scored.
    pub const LEADERBOARD: &str = "leaderboard";
    /// Prefix of the profile runs (`profile.0`, `profile.1`, …).
    pub const PROFILE_PREFIX: &str = "profile.";
}

/// Whether a harness exit code means the run itself worked: 0, or 112 (the kernel failed
/// validation, which is a verdict, not a crash).
pub fn run_success(exit_code: i64) -> bool {
    exit_code == exit_code::OK || exit_code == exit_code::VALIDATION_FAILURE
}

/// Whether the harness reported `check: pass`, the contract's definition of `passed`.
pub fn passed(result: &BTreeMap<String, String>) -> bool {
    result.get("check").map(String::as_str) == Some("pass")
}

/// The whole outcome of one evaluation. `success: false` means the infrastructure failed;
/// a wrong kernel is `success: true` with a run whose `passed` is false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullResult {
    /// Did the runner itself work (build, decode, spawn)?
    #[serde(deserialize_with = "lenient::bool")]
    pub success: bool,
    /// Why not, when `success` is false.
    #[serde(default, deserialize_with = "lenient::string")]
    pub error: String,
    /// The machine it ran on.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub system: SystemInfo,
    /// `test`, `benchmark`, `leaderboard`, `profile.N` → outcome.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub runs: BTreeMap<String, EvalResult>,
}

impl FullResult {
    /// The `result.json` a runner writes when it could not evaluate at all (bad payload,
    /// missing tool), so the platform still gets a parseable answer.
    pub fn infrastructure_failure(error: impl Into<String>, system: SystemInfo) -> Self {
        Self { success: false, error: error.into(), system, runs: BTreeMap::new() }
    }

    /// The run named `name` (see [`run_name`]).
    pub fn run(&self, name: &str) -> Option<&EvalResult> {
        self.runs.get(name)
    }
}

/// One stage of an evaluation: optional compile step, the harness run, optional profile.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalResult {
    /// Naive ISO-8601 start time, as written (see [`parse_naive_datetime`]).
    #[serde(default, deserialize_with = "lenient::string")]
    pub start: String,
    /// Naive ISO-8601 end time, as written.
    #[serde(default, deserialize_with = "lenient::string")]
    pub end: String,
    /// nvcc (or the Python pre-run), when there was one.
    #[serde(default)]
    pub compilation: Option<CompileResult>,
    /// The harness run; `None` when compilation failed.
    #[serde(default)]
    pub run: Option<RunResult>,
    /// The profiler's output, in profile mode.
    #[serde(default)]
    pub profile: Option<ProfileResult>,
}

impl EvalResult {
    /// `start` as a civil date-time, when it parses.
    pub fn start_time(&self) -> Option<DateTime> {
        parse_naive_datetime(&self.start)
    }

    /// `end` as a civil date-time, when it parses.
    pub fn end_time(&self) -> Option<DateTime> {
        parse_naive_datetime(&self.end)
    }
}

/// Parses the runner's timestamps: Python's `isoformat()` (`2025-02-04T10:11:12.123456`),
/// `str()` (space instead of `T`), with or without fraction. A trailing offset or `Z` is
/// accepted and ignored: the written wall-clock time is kept. `None` when it is not a
/// date-time at all.
pub fn parse_naive_datetime(s: &str) -> Option<DateTime> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(dt) = s.parse::<DateTime>() {
        return Some(dt);
    }
    s.parse::<jiff::Timestamp>().ok().map(|ts| ts.to_zoned(jiff::tz::TimeZone::UTC).datetime())
}

/// Formats a civil date-time the way Python's `isoformat()` does (microseconds only when
/// non-zero), so our `result.json` reads like the seeds' one.
pub fn format_naive_datetime(dt: DateTime) -> String {
    let micros = dt.subsec_nanosecond() / 1000;
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if micros == 0 { base } else { format!("{base}.{micros:06}") }
}

/// The compile step (nvcc for `cu`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CompileResult {
    /// Was nvcc on the PATH?
    #[serde(default, deserialize_with = "lenient::bool")]
    pub nvcc_found: bool,
    /// `nvcc --version` output.
    #[serde(default, deserialize_with = "lenient::string")]
    pub nvcc_version: String,
    /// Did it compile?
    #[serde(default, deserialize_with = "lenient::bool")]
    pub success: bool,
    /// The command line.
    #[serde(default, deserialize_with = "lenient::string")]
    pub command: String,
    /// Compiler stdout (≤ 16 KiB).
    #[serde(default, deserialize_with = "lenient::string")]
    pub stdout: String,
    /// Compiler stderr (≤ 16 KiB).
    #[serde(default, deserialize_with = "lenient::string")]
    pub stderr: String,
    /// Compiler exit code.
    #[serde(default, deserialize_with = "lenient::int")]
    pub exit_code: i64,
}

/// One harness run (`<program> <mode> <casesfile>`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Exit code 0 or 112 (see [`run_success`]).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub success: bool,
    /// `result["check"] == "pass"` (see [`passed`]).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub passed: bool,
    /// The command line.
    #[serde(default, deserialize_with = "lenient::string")]
    pub command: String,
    /// Program stdout (≤ 16 KiB).
    #[serde(default, deserialize_with = "lenient::string")]
    pub stdout: String,
    /// Program stderr (≤ 16 KiB).
    #[serde(default, deserialize_with = "lenient::string")]
    pub stderr: String,
    /// Harness exit code (see [`exit_code`]).
    #[serde(default, deserialize_with = "lenient::int")]
    pub exit_code: i64,
    /// Wall seconds of the run (not the kernel's time).
    #[serde(default, deserialize_with = "lenient::float")]
    pub duration: f64,
    /// The `key: value` lines the harness wrote to `POPCORN_FD`.
    #[serde(default, deserialize_with = "lenient::string_map")]
    pub result: BTreeMap<String, String>,
}

/// Profiler output of a profile run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProfileResult {
    /// Which profiler (e.g. `rocPROF`, `nsight`).
    #[serde(default, deserialize_with = "lenient::string")]
    pub profiler: String,
    /// Base64 zip of the trace files (may be empty when uploaded elsewhere).
    #[serde(default, deserialize_with = "lenient::string")]
    pub trace: String,
    /// Where the trace can be downloaded, when it was uploaded.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub download_url: Option<String>,
}

/// The machine an evaluation ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    /// GPU model name.
    #[serde(default, deserialize_with = "lenient::string")]
    pub gpu: String,
    /// Number of visible GPUs.
    #[serde(default = "one", deserialize_with = "lenient::int")]
    pub device_count: i64,
    /// CPU model name.
    #[serde(default, deserialize_with = "lenient::string")]
    pub cpu: String,
    /// `CUDA` or `ROCm`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub runtime: String,
    /// Python's `platform.platform()` or equivalent.
    #[serde(default, deserialize_with = "lenient::string")]
    pub platform: String,
    /// Torch version, when importable.
    #[serde(default, deserialize_with = "lenient::string")]
    pub torch: String,
    /// Host (pod) name.
    #[serde(default, deserialize_with = "lenient::string")]
    pub hostname: String,
}

fn one() -> i64 {
    1
}

impl Default for SystemInfo {
    /// Python's defaults: empty strings and one device.
    fn default() -> Self {
        Self {
            gpu: String::new(),
            device_count: 1,
            cpu: String::new(),
            runtime: String::new(),
            platform: String::new(),
            torch: String::new(),
            hostname: String::new(),
        }
    }
}

/// Why a `result.json` could not be used; the controller puts this in the `ResultMalformed`
/// condition message, so each says what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// Zero bytes (or only whitespace).
    #[error("result.json is empty")]
    Empty,
    /// Larger than the limit; not read.
    #[error("result.json is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not JSON at all (syntax, truncation, encoding).
    #[error("result.json is not valid JSON: {0}")]
    Syntax(serde_json::Error),
    /// JSON, but not a result (wrong type at `path`, missing `success`).
    #[error("result.json has an unexpected shape at `{path}`: {source}")]
    Shape {
        /// Where (`.` for the root).
        path: String,
        /// The parser's message.
        source: serde_json::Error,
    },
}

/// Parses `result.json` with the default size limit.
pub fn parse_result_json(bytes: &[u8]) -> Result<FullResult, ResultError> {
    parse_result_json_limited(bytes, DEFAULT_MAX_RESULT_BYTES)
}

/// Parses `result.json`, refusing anything over `max_bytes` before reading it.
pub fn parse_result_json_limited(bytes: &[u8], max_bytes: usize) -> Result<FullResult, ResultError> {
    if bytes.len() > max_bytes {
        return Err(ResultError::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(ResultError::Empty),
        // serde would also accept a struct written as an array; a result is an object.
        Some(b'{') => {}
        Some(b'[') => {
            return Err(ResultError::Shape {
                path: ".".to_owned(),
                source: serde::de::Error::custom("expected a JSON object, got an array"),
            });
        }
        Some(_) => {}
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<FullResult, _> = serde_path_to_error::deserialize(&mut de);
    let result = match parsed {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => ResultError::Shape { path, source: inner },
                _ => ResultError::Syntax(inner),
            });
        }
    };
    de.end().map_err(ResultError::Syntax)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn full_json() -> Value {
        json!({
            "success": true,
            "error": "",
            "system": {
                "gpu": "NVIDIA H100 80GB HBM3", "device_count": 1,
                "cpu": "AMD EPYC 9254 24-Core Processor", "runtime": "CUDA",
                "platform": "Linux-5.15.0-164-generic-x86_64-with-glibc2.35",
                "torch": "2.6.0+cu124", "hostname": "gpu-a.example"
            },
            "runs": {
                "test": {
                    "start": "2025-02-04T10:11:12.123456",
                    "end": "2025-02-04T10:11:15",
                    "compilation": {
                        "nvcc_found": true, "nvcc_version": "Cuda compilation tools, release 12.4",
                        "success": true, "command": "nvcc -O3 eval.cu submission.cu -o eval.out",
                        "stdout": "", "stderr": "", "exit_code": 0
                    },
                    "run": {
                        "success": true, "passed": true, "command": "./eval.out test /tmp/x",
                        "stdout": "Running in mode test\n", "stderr": "", "exit_code": 0,
                        "duration": 3.18,
                        "result": {"check": "pass", "test-count": "1", "test.0.spec": "size: 128",
                                   "test.0.status": "pass"}
                    },
                    "profile": null
                }
            }
        })
    }

    #[test]
    fn parses_the_contract_shape_and_roundtrips() {
        let j = full_json();
        let r = parse_result_json(j.to_string().as_bytes()).unwrap();
        assert!(r.success);
        assert_eq!(r.system.gpu, "NVIDIA H100 80GB HBM3");
        assert_eq!(r.system.hostname, "gpu-a.example");
        let t = r.run("test").unwrap();
        assert_eq!(t.compilation.as_ref().unwrap().nvcc_version, "Cuda compilation tools, release 12.4");
        let run = t.run.as_ref().unwrap();
        assert!(run.success && run.passed);
        assert_eq!(run.duration, 3.18);
        assert_eq!(run.result["test-count"], "1");
        assert!(t.profile.is_none());
        // Serialising gives back the same JSON value (all fields present, nulls kept).
        assert_eq!(serde_json::to_value(&r).unwrap(), j);
    }

    #[test]
    fn serialised_shape_has_every_contract_field() {
        let mut r = FullResult::infrastructure_failure("boom", SystemInfo::default());
        r.runs.insert(
            "profile.0".into(),
            EvalResult {
                start: "2025-01-01T00:00:00".into(),
                end: "2025-01-01T00:00:01".into(),
                compilation: Some(CompileResult::default()),
                run: Some(RunResult::default()),
                profile: Some(ProfileResult::default()),
            },
        );
        let v = serde_json::to_value(&r).unwrap();
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), ["error", "runs", "success", "system"]);
        assert_eq!(keys(&v["system"]), ["cpu", "device_count", "gpu", "hostname", "platform", "runtime", "torch"]);
        let e = &v["runs"]["profile.0"];
        assert_eq!(keys(e), ["compilation", "end", "profile", "run", "start"]);
        assert_eq!(
            keys(&e["compilation"]),
            ["command", "exit_code", "nvcc_found", "nvcc_version", "stderr", "stdout", "success"]
        );
        assert_eq!(
            keys(&e["run"]),
            ["command", "duration", "exit_code", "passed", "result", "stderr", "stdout", "success"]
        );
        assert_eq!(keys(&e["profile"]), ["download_url", "profiler", "trace"]);
        assert_eq!(e["profile"]["download_url"], Value::Null);
        assert_eq!(v["system"]["device_count"], 1);
        assert_eq!(v["success"], false);
        assert_eq!(v["error"], "boom");
    }

    #[test]
    fn missing_optional_fields_and_nulls_default() {
        let r = parse_result_json(br#"{"success": true}"#).unwrap();
        assert!(r.success && r.error.is_empty() && r.runs.is_empty());
        assert_eq!(r.system, SystemInfo::default());
        let r = parse_result_json(br#"{"success": false, "error": null, "system": null, "runs": null}"#).unwrap();
        assert!(!r.success && r.error.is_empty() && r.runs.is_empty());
        let r = parse_result_json(
            br#"{"success": true, "runs": {"test": {"start": null, "run": {"result": null,
                "duration": null, "exit_code": null, "stdout": null}, "compilation": null}}}"#,
        )
        .unwrap();
        let t = r.run("test").unwrap();
        assert_eq!(t.start, "");
        assert!(t.compilation.is_none() && t.profile.is_none());
        let run = t.run.as_ref().unwrap();
        assert!(run.result.is_empty());
        assert_eq!((run.duration, run.exit_code), (0.0, 0));
        let r = parse_result_json(br#"{"success": true, "runs": {"test": {}}}"#).unwrap();
        assert_eq!(r.runs["test"], EvalResult::default());
    }

    #[test]
    fn extra_fields_are_ignored_at_every_level() {
        let r = parse_result_json(
            br#"{"success": true, "new": 1, "system": {"gpu": "x", "driver": "550"},
                "runs": {"test": {"what": [], "run": {"success": true, "passed": true, "rss": 5,
                "result": {"check": "pass"}}, "profile": {"profiler": "ncu", "size": 3}}}}"#,
        )
        .unwrap();
        assert_eq!(r.system.gpu, "x");
        assert_eq!(r.runs["test"].profile.as_ref().unwrap().profiler, "ncu");
    }

    #[test]
    fn seeds_artifact_test_shape_parses() {
        // The seeds' end-to-end test uploads this (SystemInfo fields it does not know).
        let r = parse_result_json(
            br#"{"success": true, "error": "", "runs": {},
                 "system": {"gpu_name": "test", "cuda_version": "12.4", "python_version": "N/A"}}"#,
        )
        .unwrap();
        assert!(r.success);
        assert_eq!(r.system, SystemInfo::default());
    }

    #[test]
    fn python_loose_types_are_accepted() {
        // Timeout path: duration is the int timeout; result values written as numbers.
        let r = parse_result_json(
            br#"{"success": 1, "system": {"device_count": 8.0},
                 "runs": {"test": {"run": {"success": false, "passed": false, "exit_code": 114,
                 "duration": 180, "result": {"test-count": 5, "check": null}}}}}"#,
        )
        .unwrap();
        assert!(r.success);
        assert_eq!(r.system.device_count, 8);
        let run = r.runs["test"].run.as_ref().unwrap();
        assert_eq!(run.duration, 180.0);
        assert_eq!(run.exit_code, exit_code::TIMEOUT);
        assert_eq!(run.result["test-count"], "5");
        assert_eq!(run.result["check"], "");
    }

    #[test]
    fn errors_are_distinct_and_say_where() {
        assert!(matches!(parse_result_json(b""), Err(ResultError::Empty)));
        assert!(matches!(parse_result_json(b" \n "), Err(ResultError::Empty)));
        assert!(matches!(parse_result_json(b"{\"success\": tru"), Err(ResultError::Syntax(_))));
        assert!(matches!(parse_result_json(b"<html>502</html>"), Err(ResultError::Syntax(_))));
        assert!(matches!(parse_result_json(b"{\"success\": true} x"), Err(ResultError::Syntax(_))));
        assert!(matches!(parse_result_json(b"\xff\xfe"), Err(ResultError::Syntax(_))));
        match parse_result_json(b"{}") {
            Err(ResultError::Shape { path, source }) => {
                assert_eq!(path, ".");
                assert!(source.to_string().contains("missing field `success`"));
            }
            other => panic!("{other:?}"),
        }
        match parse_result_json(b"[1]") {
            Err(ResultError::Shape { path, .. }) => assert_eq!(path, "."),
            other => panic!("{other:?}"),
        }
        match parse_result_json(br#"{"success": true, "runs": {"test": {"run": {"exit_code": "x"}}}}"#) {
            Err(e @ ResultError::Shape { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("`runs.test.run.exit_code`"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        match parse_result_json(br#"{"success": true, "runs": {"test": {"run": {"result": {"a": [1]}}}}}"#) {
            Err(ResultError::Shape { path, .. }) => assert_eq!(path, "runs.test.run.result.a"),
            other => panic!("{other:?}"),
        }
        match parse_result_json(br#"{"success": true, "runs": []}"#) {
            Err(ResultError::Shape { path, .. }) => assert_eq!(path, "runs"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn size_limit_is_a_parameter() {
        let j = br#"{"success": true}"#;
        assert!(parse_result_json_limited(j, j.len()).is_ok());
        match parse_result_json_limited(j, j.len() - 1) {
            Err(ResultError::TooLarge { size, limit }) => {
                assert_eq!((size, limit), (j.len(), j.len() - 1));
            }
            other => panic!("{other:?}"),
        }
        let msg = parse_result_json_limited(j, 3).unwrap_err().to_string();
        assert_eq!(msg, "result.json is 17 bytes, over the 3-byte limit");
    }

    #[test]
    fn run_success_and_passed_follow_the_contract() {
        assert!(run_success(0));
        assert!(run_success(112));
        for code in [1, 110, 111, 113, 114, -9, 255, -1] {
            assert!(!run_success(code), "{code}");
        }
        let mut m = BTreeMap::new();
        assert!(!passed(&m));
        m.insert("check".to_owned(), "fail".to_owned());
        assert!(!passed(&m));
        m.insert("check".to_owned(), "Pass".to_owned());
        assert!(!passed(&m));
        m.insert("check".to_owned(), "pass".to_owned());
        assert!(passed(&m));
    }

    #[test]
    fn datetimes_parse_in_every_python_spelling() {
        let want = DateTime::constant(2025, 2, 4, 10, 11, 12, 123_456_000);
        assert_eq!(parse_naive_datetime("2025-02-04T10:11:12.123456"), Some(want));
        assert_eq!(parse_naive_datetime("2025-02-04 10:11:12.123456"), Some(want));
        assert_eq!(parse_naive_datetime(" 2025-02-04T10:11:12.123456 "), Some(want));
        let whole = DateTime::constant(2025, 2, 4, 10, 11, 12, 0);
        assert_eq!(parse_naive_datetime("2025-02-04T10:11:12"), Some(whole));
        assert_eq!(parse_naive_datetime("2025-02-04T10:11:12+00:00"), Some(whole));
        assert_eq!(parse_naive_datetime("2025-02-04T10:11:12Z"), Some(whole));
        // The written wall-clock time is kept, whatever the suffix says.
        assert_eq!(
            parse_naive_datetime("2025-02-04T12:11:12+02:00[Europe/Paris]"),
            Some(DateTime::constant(2025, 2, 4, 12, 11, 12, 0))
        );
        assert_eq!(parse_naive_datetime(""), None);
        assert_eq!(parse_naive_datetime("yesterday"), None);
        assert_eq!(parse_naive_datetime("2025-13-01T00:00:00"), None);
        let e = EvalResult { start: "2025-02-04T10:11:12.123456".into(), end: "nope".into(), ..Default::default() };
        assert_eq!(e.start_time(), Some(want));
        assert_eq!(e.end_time(), None);
    }

    #[test]
    fn datetimes_format_like_python_isoformat() {
        assert_eq!(
            format_naive_datetime(DateTime::constant(2025, 2, 4, 10, 11, 12, 123_456_789)),
            "2025-02-04T10:11:12.123456"
        );
        assert_eq!(format_naive_datetime(DateTime::constant(2025, 2, 4, 1, 2, 3, 0)), "2025-02-04T01:02:03");
        assert_eq!(format_naive_datetime(DateTime::constant(2025, 2, 4, 1, 2, 3, 999)), "2025-02-04T01:02:03");
        let dt = DateTime::constant(2024, 12, 31, 23, 59, 59, 1000);
        assert_eq!(parse_naive_datetime(&format_naive_datetime(dt)), Some(dt));
    }
}
