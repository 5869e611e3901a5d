//! `benchkite run`: the job side of a KernelJob. Decodes the payload (`KERNELBOT_PAYLOAD`, or
//! the split `BENCHKITE_PAYLOAD_*` form for payloads over one env string), writes the
//! submission into a fresh directory, compiles it (`cu`) or runs its main file (`py`)
//! through the harness protocol, and hands back `result.json` (plus the compact summary as
//! build meta-data) exactly as kernelbot's own runner (`run_config` in
//! `src/libkernelbot/run_eval.py`) would, at a fraction of its cost.
//!
//! See `shared/reference/kernel-evaluation.md` for the contract and [`crate::contract`] for
//! the formats. Exit status: 0 when the evaluation ran (whatever the kernel's verdict), 1
//! when the infrastructure failed (bad payload, missing tool, result not handed back),
//! 128+N when the runner was stopped by signal N (the build was canceled).

pub mod agent_start;
mod cases;
mod certify;
mod compile;
mod evaluate;
mod fingerprint;
mod process;
mod profile;
mod report;
mod sandbox;
mod sysinfo;
mod workdir;

use std::io::Read as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use certify::{CanarySchedule, CanaryState, CertifyArgs, EXIT_CANNOT_CERTIFY, EXIT_NOT_CERTIFIED, main as certify};
pub use compile::{CUDA_FLAGS, OUTPUT_BINARY};
pub use profile::Profiler;
pub use report::{ReportMode, SIM_META_DATA_FILE_ENV, UploadMode};
pub use sandbox::SandboxMode;

use crate::contract::{self, FullResult, PAYLOAD_ENV, PayloadError, PayloadLimits, RankingBy, SystemInfo};
use evaluate::evaluate;
use sysinfo::Probe;

/// Exit status when the evaluation ran.
pub const EXIT_OK: i32 = 0;
/// Exit status when the infrastructure failed (the result says why, when it could be written).
pub const EXIT_INFRA: i32 = 1;

/// Env vars the evaluated programs do not get, beside every payload variable (see
/// [`hidden_env`]): the agent's job token (with it, a submission could set its own meta-data
/// or artifacts) and the runner's own settings.
/// `BUILDKITE_AGENT_TOKEN` is the agent's registration token: the agent hands its own
/// environment to every job (`agent/job_runner.go`: `append(os.Environ(), env...)`).
/// (A sandboxed program gets an explicit environment instead, see `sandbox::PASSED_ENV`.)
const HIDDEN_FROM_HARNESS: &[&str] =
    &[report::AGENT_TOKEN_ENV, "BUILDKITE_AGENT_TOKEN", report::SIM_META_DATA_FILE_ENV, "BENCHKITE_TIMING"];

/// Everything the evaluated programs must not see: [`HIDDEN_FROM_HARNESS`] and every payload
/// variable present in this process's environment (`KERNELBOT_PAYLOAD`, the split
/// `BENCHKITE_PAYLOAD_*`): the payload carries the secret seed of a `private` run.
/// kernelbot's runner hands its whole environment on; benchkite deliberately does not.
fn hidden_env() -> Vec<String> {
    let mut names: Vec<String> = HIDDEN_FROM_HARNESS.iter().map(|s| (*s).to_owned()).collect();
    names.push(PAYLOAD_ENV.to_owned());
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && contract::is_payload_env(k)
            && k != PAYLOAD_ENV
        {
            names.push(k.to_owned());
        }
    }
    names
}

/// Largest payload file read (the decoder's own limits apply after).
const MAX_PAYLOAD_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// The file kernelbot's compile step runs (`run_pytorch_script`: `["python3",
/// "submission.py"]`, whatever `main` is).
const PRERUN_FILE: &str = "submission.py";
/// What in the compile step's stdout makes kernelbot record it as a compilation: the
/// define torch's `cpp_extension` passes to every build (printed by `load_inline(verbose=True)`).
const TORCH_EXTENSION_MARKER: &str = "-DTORCH_EXTENSION_NAME";
/// How long the system probe may hold up the first timed stage or the result.
const PROBE_WAIT: Duration = Duration::from_secs(15);

/// `benchkite run`: evaluate the payload and write `result.json`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Read the payload from this file (`-` for stdin) instead of KERNELBOT_PAYLOAD.
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Where to write result.json (the agent uploads it from the job directory).
    #[arg(long, short = 'o', env = "BENCHKITE_RESULT_FILE", default_value = "result.json", value_name = "PATH")]
    pub output: PathBuf,
    /// Directory to evaluate in (created; must be empty). Default: a fresh directory
    /// under $TMPDIR, removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Keep the fresh working directory afterwards (for debugging).
    #[arg(long)]
    pub keep_workdir: bool,
    /// Python interpreter for `py` submissions.
    #[arg(long, env = "BENCHKITE_PYTHON", default_value = "python3", value_name = "PROGRAM")]
    pub python: String,
    /// nvcc for `cu` submissions. Default: PATH, then $CUDA_HOME/bin, /usr/local/cuda/bin.
    #[arg(long, env = "BENCHKITE_NVCC", value_name = "PATH")]
    pub nvcc: Option<PathBuf>,
    /// Seconds nvcc may take, and the compile step of a Python submission (kernelbot's
    /// `python3 submission.py` before each stage; its `Timeout.COMPILE`).
    #[arg(long, env = "BENCHKITE_COMPILE_TIMEOUT", default_value_t = 120, value_name = "SECONDS")]
    pub compile_timeout: u64,
    /// Profiler for profile mode. Default, as kernelbot: ncu on CUDA, rocprofv3 on ROCm,
    /// and a failure on any other runtime. `nsys` only when asked for.
    #[arg(long, value_enum, env = "BENCHKITE_PROFILER")]
    pub profiler: Option<Profiler>,
    /// Report the summary as build meta-data (`auto`: simulator file, else buildkite-agent
    /// when BUILDKITE_AGENT_ACCESS_TOKEN is set) or not at all.
    #[arg(long, value_enum, env = "BENCHKITE_REPORT", default_value_t = ReportMode::Auto)]
    pub report: ReportMode,
    /// Upload result.json with `buildkite-agent artifact upload` (`auto`: unless the step's
    /// artifact_paths already cover it).
    #[arg(long, value_enum, env = "BENCHKITE_UPLOAD", default_value_t = UploadMode::Auto)]
    pub upload: UploadMode,
    /// Do not query nvidia-smi / rocm-smi.
    #[arg(long)]
    pub no_gpu_probe: bool,
    /// Do not kill processes that escape the harness's process group (by default the
    /// runner is a child subreaper and kills them after each run).
    #[arg(long)]
    pub no_sweep: bool,
    /// Run the evaluated programs (compile step, nvcc, harness, profiler) as the sandbox
    /// user: `auto` when the runner can (root with CAP_SETUID, CAP_SETGID, CAP_CHOWN,
    /// CAP_DAC_OVERRIDE, CAP_KILL; the interpreter reachable by that user), `required` (else
    /// an infrastructure failure; agent pods set this), `off`.
    #[arg(long, value_enum, env = "BENCHKITE_SANDBOX", default_value_t = SandboxMode::Auto)]
    pub sandbox: SandboxMode,
    /// The sandbox user's uid. Must be exclusive to this runner: after every run, every
    /// process of this uid in the PID namespace is killed.
    #[arg(long, env = "BENCHKITE_SANDBOX_UID", default_value_t = sandbox::DEFAULT_UID, value_name = "UID")]
    pub sandbox_uid: u32,
    /// The sandbox user's gid (its only group).
    #[arg(long, env = "BENCHKITE_SANDBOX_GID", default_value_t = sandbox::DEFAULT_GID, value_name = "GID")]
    pub sandbox_gid: u32,
    /// How many consecutive uids/gids from --sandbox-uid/--sandbox-gid concurrent runners on
    /// one host share (each run locks one); 1 in an agent pod.
    #[arg(long, env = "BENCHKITE_SANDBOX_UIDS", default_value_t = 1, value_name = "N")]
    pub sandbox_uids: u32,
    /// Where the sandbox's run directories go (`<DIR>/benchkite-sandbox/`). Default: $TMPDIR.
    #[arg(long, env = "BENCHKITE_SANDBOX_DIR", value_name = "DIR")]
    pub sandbox_dir: Option<PathBuf>,
    /// RLIMIT_NPROC of the sandbox user: its processes and threads.
    #[arg(long, env = "BENCHKITE_SANDBOX_NPROC", default_value_t = 4096, value_name = "N")]
    pub sandbox_nproc: u64,
    /// RLIMIT_NOFILE of the sandboxed programs.
    #[arg(long, env = "BENCHKITE_SANDBOX_NOFILE", default_value_t = 65536, value_name = "N")]
    pub sandbox_nofile: u64,
    /// RLIMIT_FSIZE of the sandboxed programs, MiB: the largest file they may write.
    #[arg(long, env = "BENCHKITE_SANDBOX_FILE_SIZE_MIB", default_value_t = 8192, value_name = "MIB")]
    pub sandbox_file_size_mib: u64,
    /// Scratch disk limit, MiB (work directory, HOME, TMPDIR of the sandbox): a run that goes
    /// over is killed and fails. Keep the pod's emptyDir sizeLimit above it.
    #[arg(long, env = "BENCHKITE_SANDBOX_DISK_MIB", default_value_t = 16384, value_name = "MIB")]
    pub sandbox_disk_mib: u64,
    /// More env var names handed to the sandboxed programs (comma-separated), beside the
    /// built-in list (PATH, locale, CUDA/ROCm device and toolkit settings).
    #[arg(long, env = "BENCHKITE_SANDBOX_ENV", value_delimiter = ',', value_name = "NAMES")]
    pub sandbox_env: Vec<String>,
}

impl RunArgs {
    fn sandbox_settings(&self) -> sandbox::Settings {
        sandbox::Settings {
            mode: self.sandbox,
            uid: self.sandbox_uid,
            gid: self.sandbox_gid,
            uids: self.sandbox_uids,
            dir: self.sandbox_dir.clone().unwrap_or_else(std::env::temp_dir),
            nproc: self.sandbox_nproc,
            nofile: self.sandbox_nofile,
            file_size: self.sandbox_file_size_mib.saturating_mul(1024 * 1024),
            disk: self.sandbox_disk_mib.saturating_mul(1024 * 1024),
            extra_env: self
                .sandbox_env
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .chain(job_env_names(&std::env::var(JOB_ENV_NAMES_ENV).unwrap_or_default()))
                .collect(),
        }
    }
}

/// Build env var naming the variables the KernelJob set itself (`spec.env`, admitted by the
/// controller's env policy), comma-separated: they reach the sandboxed harness as they would
/// under kernelbot's runner (the sandbox's own deny list still applies).
pub const JOB_ENV_NAMES_ENV: &str = "BENCHKITE_JOB_ENV";

/// The exact names in a [`JOB_ENV_NAMES_ENV`] value (never a `PREFIX*` pattern: a job names
/// variables, it does not open families of them), less any a KernelJob may never set (the
/// CRD refuses them; a build made some other way may still carry them).
fn job_env_names(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| crate::api::jobenv::valid_name(n) && crate::api::jobenv::denied(n).is_none())
        .map(str::to_owned)
        .collect()
}

impl Default for RunArgs {
    fn default() -> Self {
        Self {
            payload_file: None,
            output: PathBuf::from("result.json"),
            workdir: None,
            keep_workdir: false,
            python: "python3".into(),
            nvcc: None,
            compile_timeout: 120,
            profiler: None,
            report: ReportMode::Auto,
            upload: UploadMode::Auto,
            no_gpu_probe: false,
            no_sweep: false,
            sandbox: SandboxMode::Auto,
            sandbox_uid: sandbox::DEFAULT_UID,
            sandbox_gid: sandbox::DEFAULT_GID,
            sandbox_uids: 1,
            sandbox_dir: None,
            sandbox_nproc: 4096,
            sandbox_nofile: 65536,
            sandbox_file_size_mib: 8192,
            sandbox_disk_mib: 16384,
            sandbox_env: Vec::new(),
        }
    }
}

/// Runs the evaluation and hands the result back; returns the process exit status.
///
/// Installs process-wide SIGTERM/SIGINT/SIGHUP handlers and makes the process a child
/// subreaper: call it from `main` only.
pub fn main(args: RunArgs) -> i32 {
    let t0 = Instant::now();
    // Before anything else: no other user may read our /proc entries or ptrace us, and the
    // tools run after the submission are found now, while PATH holds only what we trust.
    if let Err(e) = sandbox::harden_self() {
        log(&format!("warning: {e}"));
    }
    report::resolve_agent();
    // The result key, before any submitted code runs (kept in memory only).
    log(&report::load_signer());
    if let Err(e) = process::install_stop_handlers() {
        log(&format!("warning: cannot handle SIGTERM ({e}); a canceled build may leave no result.json"));
    }
    if !args.no_sweep {
        process::enable_sweep();
    }
    let mut probe = Probe::start(args.python.clone(), !args.no_gpu_probe);
    let mut timing = Timing { start: t0, first_spawn: None, last_end: None };
    let mut harness_sha256 = String::new();
    let (mut result, ranking_by) = evaluate(&args, &mut probe, &mut timing, &mut harness_sha256);
    result.system = probe.get(PROBE_WAIT).clone();
    let fingerprint = gather_fingerprint(&args, &mut probe, harness_sha256);
    // The drift canary, when this slot's is due: after the evaluation and its fingerprint
    // (the temperature after the run is the submission's, not the canary's).
    let canary = if result.success { certify::canary(&args, &mut probe) } else { None };
    finish(&args, &result, &ranking_by, &timing, fingerprint, canary)
}

/// The environment fingerprint, once the last timed stage ended: the probe's GPU part
/// (taken before the first one), the temperature now, the harness hash and what the
/// environment says of the pod. Goes in the signed summary only: result.json stays
/// kernelbot's format.
fn gather_fingerprint(args: &RunArgs, probe: &mut Probe, harness_sha256: String) -> Option<contract::Fingerprint> {
    let device = fingerprint::Device::from_env();
    let before = probe.fingerprint(PROBE_WAIT).clone();
    let mut fp = before.fingerprint;
    if !args.no_gpu_probe {
        fp.temperature_after_c = fingerprint::temperature_after(before.tool, &device);
    }
    fp.harness_sha256 = harness_sha256;
    fingerprint::from_env(&mut fp, |k| std::env::var(k).ok(), &device);
    if fp.certification_epoch.is_empty() {
        fp.certification_epoch = certify::epoch().unwrap_or_default();
    }
    fp.bound();
    (!fp.is_empty()).then_some(fp)
}

struct Timing {
    start: Instant,
    first_spawn: Option<Instant>,
    last_end: Option<Instant>,
}

/// A line in the job log; a closed stderr (agent gone) is not worth a panic.
fn log(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "benchkite run: {msg}");
}

/// Writes result.json, reports it, and picks the exit status.
fn finish(
    args: &RunArgs,
    result: &FullResult,
    ranking_by: &RankingBy,
    timing: &Timing,
    fingerprint: Option<contract::Fingerprint>,
    canary: Option<contract::CanarySummary>,
) -> i32 {
    let mut summary = contract::summarize(result, ranking_by);
    let device_count = result.system.device_count;
    if let Some(fp) = fingerprint {
        summary
            .system
            .get_or_insert_with(|| contract::SystemSummary { device_count, ..Default::default() })
            .fingerprint = Some(fp);
    }
    if let Some(c) = canary {
        summary.system.get_or_insert_with(|| contract::SystemSummary { device_count, ..Default::default() }).canary =
            Some(c);
    }
    let mut code = if result.success { EXIT_OK } else { EXIT_INFRA };
    if !result.success {
        log(&format!("infrastructure failure: {}", result.error));
    }
    let written = report::write_result(&args.output, result);
    if let Err(e) = &written {
        // The summary may still reach the platform as meta-data; the artifact cannot.
        log(e);
        code = EXIT_INFRA;
    }
    let value = summary.to_meta_data_value();
    let upload = if written.is_ok() { args.upload } else { UploadMode::Never };
    let sig = report::sign_result(&value, written.as_deref().ok());
    let reported = report::report(&args.output, &value, sig.as_deref(), args.report, upload);
    for n in &reported.notes {
        log(n);
    }
    for f in &reported.fatal {
        log(f);
        code = EXIT_INFRA;
    }
    log(&format!(
        "done: success={} passed={} score={}",
        summary.success,
        summary.passed.map_or("-".to_owned(), |p| p.to_string()),
        summary.score.map_or("-".to_owned(), |s| format!("{s:.9}"))
    ));
    if std::env::var_os("BENCHKITE_TIMING").is_some() {
        let now = Instant::now();
        let since_epoch = |i: Instant| {
            let back = now.saturating_duration_since(i);
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.saturating_sub(back).as_nanos())
                .unwrap_or(0)
        };
        let first = timing.first_spawn.map_or(0, since_epoch);
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "benchkite-timing: main_start_unix_ns={} first_spawn_unix_ns={first} main_to_first_spawn_us={} \
             last_run_end_to_exit_us={} main_to_exit_us={} self_cpu_us={}",
            since_epoch(timing.start),
            timing.first_spawn.map_or(0, |f| f.saturating_duration_since(timing.start).as_micros()),
            timing.last_end.map_or(0, |e| now.saturating_duration_since(e).as_micros()),
            now.saturating_duration_since(timing.start).as_micros(),
            self_cpu_us(),
        );
    }
    if let Some(sig) = process::stop_signal() {
        return 128 + sig;
    }
    code
}

/// CPU time (user + system) of the runner itself, children excluded.
#[allow(clippy::useless_conversion)] // time_t and suseconds_t are not i64 on every target
fn self_cpu_us() -> i64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| i64::from(t.tv_sec) * 1_000_000 + i64::from(t.tv_usec);
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn infra(error: impl Into<String>) -> FullResult {
    FullResult::infrastructure_failure(error, SystemInfo::default())
}

fn read_payload(args: &RunArgs) -> Result<String, String> {
    let Some(path) = &args.payload_file else {
        // A value that is not UTF-8 cannot be base64: lossy text fails the decoder (or the
        // split form's checksum) with a message that says so.
        return contract::payload_from_env(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())).map_err(
            |e| match e {
                PayloadError::NotSet => format!("{e} (or pass --payload-file)"),
                e => e.to_string(),
            },
        );
    };
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().lock().take(MAX_PAYLOAD_FILE_BYTES + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_PAYLOAD_FILE_BYTES + 1).read_to_end(&mut bytes))
    };
    read.map_err(|e| format!("reading the payload file {} failed: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PAYLOAD_FILE_BYTES {
        return Err(format!("payload file {} is over {MAX_PAYLOAD_FILE_BYTES} bytes", path.display()));
    }
    String::from_utf8(bytes).map_err(|_| format!("payload file {} is not valid UTF-8", path.display()))
}

/// What the runner takes: what kernelbot's `run_config` takes (empty files, any timeout, no
/// size limit of its own: the platform applies its limit before the build exists), bounded
/// only by the decoder's cap on the decompressed JSON.
fn runner_limits() -> PayloadLimits {
    PayloadLimits { max_source_bytes: usize::MAX, allow_empty_files: true, ..PayloadLimits::default() }
}

#[cfg(test)]
mod job_env_tests {
    use super::job_env_names;

    #[test]
    fn only_exact_identifiers_are_taken() {
        assert_eq!(job_env_names("TASK, MY_FLAG,,"), ["TASK", "MY_FLAG"]);
        assert!(job_env_names("").is_empty());
        assert!(job_env_names("LD_*,A=B,PATH X").is_empty(), "patterns and junk are not names");
        assert!(job_env_names("PATH,LD_PRELOAD,BASH_ENV,CUDA_VISIBLE_DEVICES").is_empty(), "denied names");
    }
}
