//! Handing the result back: `result.json` written atomically, the compact summary set as
//! build meta-data `benchkite.result`, and `result.json` uploaded as an artifact.
//!
//! Meta-data goes, in order of preference, to the Buildkite simulator's file
//! (`BUILDKITE_SIM_META_DATA_FILE`, one JSON line `{"key": …, "value": …}` appended) or to
//! `buildkite-agent meta-data set benchkite.result` (value on stdin) when the job runs
//! under an agent (`BUILDKITE_AGENT_ACCESS_TOKEN` set). The artifact is uploaded with
//! `buildkite-agent artifact upload` unless the step's `artifact_paths`
//! (`BUILDKITE_ARTIFACT_PATHS`) already cover the file, in which case the agent uploads it
//! after the command and a second copy would only duplicate it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{self, Ending, Spec};
use crate::contract::{FullResult, META_DATA_KEY};
use crate::signing::{self, SIG_META_DATA_KEY};

/// Env var naming the simulator's meta-data file.
pub const SIM_META_DATA_FILE_ENV: &str = "BUILDKITE_SIM_META_DATA_FILE";
/// Env var holding the agent's job token; its presence means "running under an agent".
pub const AGENT_TOKEN_ENV: &str = "BUILDKITE_AGENT_ACCESS_TOKEN";
/// Env var listing the step's artifact paths (`;`-separated globs).
pub const ARTIFACT_PATHS_ENV: &str = "BUILDKITE_ARTIFACT_PATHS";
/// How long one `buildkite-agent` call may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The same once the build was canceled.
const AGENT_TIMEOUT_CANCELED: Duration = Duration::from_secs(5);

/// Writes `result.json` (pretty JSON) via a temporary file and a rename, so a reader never
/// sees half a file. Returns the exact bytes written (what the signature covers).
pub(crate) fn write_result(path: &Path, result: &FullResult) -> Result<Vec<u8>, String> {
    let mut json = serde_json::to_vec_pretty(result).map_err(|e| format!("serialising the result failed: {e}"))?;
    json.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "result.json".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {} failed: {e}", path.display())
    })?;
    Ok(json)
}

/// The attempt key and run id the result is signed with, read once at start (before any
/// submitted code runs) and kept in memory only.
struct Signer {
    key: signing::Key,
    run_id: String,
}

static SIGNER: std::sync::OnceLock<Option<Signer>> = std::sync::OnceLock::new();

/// Reads the queue's result key (`$BENCHKITE_RESULT_KEY_FILE`, default
/// `/var/run/benchkite/result-key/key`) and the attempt's run id (`KERNELBOT_RUN_ID`), and
/// derives the attempt key. Call once at start; returns the line to log. Without a key the
/// result goes unsigned and the controller decides (`--unsigned-results`).
pub(crate) fn load_signer() -> String {
    let (signer, note) = signer_from_env();
    let _ = SIGNER.set(signer);
    note
}

fn signer_from_env() -> (Option<Signer>, String) {
    let named = std::env::var_os(signing::RESULT_KEY_FILE_ENV).filter(|p| !p.is_empty());
    let path = named
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(signing::RESULT_KEY_DIR).join(signing::RESULT_KEY_FILE_NAME));
    if named.is_none() && !path.exists() {
        return (None, format!("no result key at {}: the result is unsigned", path.display()));
    }
    let key = match signing::Key::read_file(&path) {
        Ok(k) => k,
        Err(e) => return (None, format!("warning: the result key is unusable ({e}): the result is unsigned")),
    };
    let run_id = std::env::var(signing::RUN_ID_ENV).unwrap_or_default();
    if run_id.is_empty() {
        return (None, format!("warning: {} is not set: the result is unsigned", signing::RUN_ID_ENV));
    }
    let note = format!("the result will be signed for run {run_id}");
    (Some(Signer { key: key.attempt_key(&run_id), run_id }), note)
}

/// The signatures (the `benchkite.result.sig` meta-data value) of the summary meta-data
/// value and of `result.json`'s exact bytes, when a key was loaded at start.
pub(crate) fn sign_result(meta_data: &str, result_json: Option<&[u8]>) -> Option<String> {
    let s = SIGNER.get()?.as_ref()?;
    Some(signing::Signatures::new(&s.key, &s.run_id, meta_data, result_json).to_value())
}

/// How the result is reported beyond the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportMode {
    /// Simulator file when set, else buildkite-agent when running under an agent.
    Auto,
    /// Only write result.json.
    Never,
}

/// When to upload result.json ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadMode {
    /// Unless the step's artifact_paths already cover it.
    Auto,
    /// Always (under an agent).
    Always,
    /// Never.
    Never,
}

/// What reporting did, for the job log and the exit status.
#[derive(Debug, Default)]
pub(crate) struct Reported {
    pub notes: Vec<String>,
    /// Failures that lose the result (the artifact upload we were responsible for).
    pub fatal: Vec<String>,
}

/// Reports the summary (and its signatures, `sig`, set first) and uploads the artifact, as
/// the environment allows.
pub(crate) fn report(
    output: &Path,
    summary_json: &str,
    sig: Option<&str>,
    mode: ReportMode,
    upload: UploadMode,
) -> Reported {
    let mut r = Reported::default();
    if mode == ReportMode::Never {
        return r;
    }
    if let Some(file) = std::env::var_os(SIM_META_DATA_FILE_ENV).filter(|f| !f.is_empty()) {
        if let Some(sig) = sig
            && let Err(e) = append_sim_meta_data(Path::new(&file), SIG_META_DATA_KEY, sig)
        {
            r.notes.push(format!("warning: {e}"));
        }
        match append_sim_meta_data(Path::new(&file), META_DATA_KEY, summary_json) {
            Ok(()) => r.notes.push(format!("meta-data {META_DATA_KEY} written to the simulator file")),
            Err(e) => r.notes.push(format!("warning: {e}")),
        }
        // The simulator collects artifacts by artifact_paths from the job directory.
        return r;
    }
    if std::env::var_os(AGENT_TOKEN_ENV).is_none_or(|t| t.is_empty()) {
        return r;
    }
    let Some(agent) = agent_binary() else {
        r.notes.push(format!("warning: {AGENT_TOKEN_ENV} is set but buildkite-agent is not on PATH; not reporting"));
        return r;
    };
    if let Some(sig) = sig {
        match agent_call(&agent, &["meta-data", "set", SIG_META_DATA_KEY], None, Some(sig.as_bytes())) {
            Ok(()) => r.notes.push(format!("meta-data {SIG_META_DATA_KEY} set")),
            // Without it the controller refuses the result (unless it accepts unsigned ones).
            Err(e) => r.notes.push(format!("warning: setting meta-data {SIG_META_DATA_KEY} failed: {e}")),
        }
    }
    match agent_call(&agent, &["meta-data", "set", META_DATA_KEY], None, Some(summary_json.as_bytes())) {
        Ok(()) => r.notes.push(format!("meta-data {META_DATA_KEY} set")),
        // The controller falls back to result.json: a warning, not a lost result.
        Err(e) => r.notes.push(format!("warning: setting meta-data {META_DATA_KEY} failed: {e}")),
    }
    let covered = artifact_paths_cover(output);
    let do_upload = match upload {
        UploadMode::Always => true,
        UploadMode::Never => false,
        UploadMode::Auto => !covered,
    };
    if do_upload {
        let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match agent_call(&agent, &["artifact", "upload", &name], Some(dir), None) {
            Ok(()) => r.notes.push(format!("artifact {name} uploaded")),
            Err(e) => r.fatal.push(format!("uploading {name} failed: {e}")),
        }
    } else if covered {
        r.notes.push(format!("{} is in the step's artifact_paths; the agent uploads it", output.display()));
    }
    r
}

/// buildkite-agent as found when the runner started, before any submitted code ran (a
/// sandboxed program must not get to plant one on PATH or in the work directory).
static AGENT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Resolves buildkite-agent to an absolute path once; later calls reuse it.
pub(crate) fn resolve_agent() {
    AGENT.get_or_init(find_agent_binary);
}

fn agent_binary() -> Option<PathBuf> {
    AGENT.get_or_init(find_agent_binary).clone()
}

fn find_agent_binary() -> Option<PathBuf> {
    if let Some(p) = super::sandbox::resolve("buildkite-agent") {
        return Some(p);
    }
    let dir = std::env::var_os("BUILDKITE_BIN_PATH")?;
    let p = Path::new(&dir).join("buildkite-agent");
    process::is_executable(&p).then_some(p)
}

fn agent_call(agent: &Path, args: &[&str], cwd: Option<&Path>, stdin: Option<&[u8]>) -> Result<(), String> {
    let mut spec = Spec::new(agent).args(args.iter().copied());
    spec.cwd = cwd.map(Path::to_owned);
    spec.stdin = stdin.map(<[u8]>::to_vec);
    // After a cancel the agent's grace period (10 s by default) is all that is left.
    spec.timeout = Some(if process::stop_signal().is_some() { AGENT_TIMEOUT_CANCELED } else { AGENT_TIMEOUT });
    spec.cancellable = false;
    let out = process::run(&spec).map_err(|e| e.to_string())?;
    match out.ending {
        Ending::Exited(0) => Ok(()),
        Ending::TimedOut => Err(format!("buildkite-agent {} timed out", args.join(" "))),
        other => {
            let err = String::from_utf8_lossy(&out.stderr.bytes);
            let tail: String = err.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
            Err(format!("buildkite-agent {} exited with {}: {tail}", args.join(" "), other.python_returncode()))
        }
    }
}

/// Appends `{"key": …, "value": …}` as one line to the simulator's meta-data file.
pub(crate) fn append_sim_meta_data(file: &Path, key: &str, value: &str) -> Result<(), String> {
    let line = serde_json::json!({ "key": key, "value": value }).to_string();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| format!("opening the meta-data file {} failed: {e}", file.display()))?;
    f.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("writing the meta-data file {} failed: {e}", file.display()))
}

/// Whether `BUILDKITE_ARTIFACT_PATHS` has a pattern matching `output` (relative to the
/// working directory, where the agent resolves artifact paths).
fn artifact_paths_cover(output: &Path) -> bool {
    let Some(paths) = std::env::var_os(ARTIFACT_PATHS_ENV) else {
        return false;
    };
    let paths = paths.to_string_lossy();
    let rel = match std::env::current_dir() {
        Ok(cwd) if output.is_absolute() => match output.strip_prefix(&cwd) {
            Ok(r) => r.to_path_buf(),
            Err(_) => return false,
        },
        _ => output.to_path_buf(),
    };
    let rel = rel.to_string_lossy();
    let rel = rel.strip_prefix("./").unwrap_or(&rel);
    patterns_match(&paths, rel)
}

/// `;`-separated glob patterns (`*`, `?`, `**`) against a relative path.
pub(crate) fn patterns_match(patterns: &str, path: &str) -> bool {
    patterns.split(';').map(str::trim).filter(|p| !p.is_empty()).any(|p| {
        let p = p.strip_prefix("./").unwrap_or(p);
        glob_match(p.as_bytes(), path.as_bytes())
    })
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            // `**/` also matches zero directories.
            let rest = &p[2..];
            let rest_nosep = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=s.len()).any(|i| glob_match(rest, &s[i..]) || glob_match(rest_nosep, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            for i in 0..=s.len() {
                if glob_match(rest, &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        Some(b'?') => s.first().is_some_and(|c| *c != b'/') && glob_match(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob_match(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_globs() {
        assert!(patterns_match("result.json", "result.json"));
        assert!(patterns_match("logs/*;result.json", "result.json"));
        assert!(patterns_match("*.json", "result.json"));
        assert!(patterns_match("**/*.json", "result.json"));
        assert!(patterns_match("**/*.json", "a/b/result.json"));
        assert!(patterns_match("./result.json", "result.json"));
        assert!(patterns_match("resul?.json", "result.json"));
        assert!(!patterns_match("*.json", "out/result.json"));
        assert!(!patterns_match("results.json", "result.json"));
        assert!(!patterns_match("", "result.json"));
        assert!(!patterns_match("logs/**", "result.json"));
    }

    #[test]
    fn sim_meta_data_line_is_json() {
        let f = std::env::temp_dir().join(format!("bk-md-{}.txt", std::process::id()));
        append_sim_meta_data(&f, "benchkite.result", "{\"v\":1,\n\"x\":\"=\"}").unwrap();
        append_sim_meta_data(&f, "k", "v").unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["key"], "benchkite.result");
        assert_eq!(v["value"], "{\"v\":1,\n\"x\":\"=\"}");
        std::fs::remove_file(&f).unwrap();
    }

    #[test]
    fn result_file_is_replaced_atomically() {
        let dir = std::env::temp_dir().join(format!("bk-res-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("result.json");
        std::fs::write(&path, "old").unwrap();
        let r = FullResult::infrastructure_failure("x", crate::contract::SystemInfo::default());
        write_result(&path, &r).unwrap();
        let parsed = crate::contract::parse_result_json(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(parsed, r);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(write_result(&dir.join("missing/result.json"), &r).unwrap_err().contains("missing/result.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
