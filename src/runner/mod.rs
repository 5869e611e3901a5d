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

mod cases;
mod compile;
mod process;
mod profile;
mod report;
mod sysinfo;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use compile::{CUDA_FLAGS, OUTPUT_BINARY};
pub use profile::Profiler;
pub use report::{ReportMode, SIM_META_DATA_FILE_ENV, UploadMode};

use crate::contract::{
    self, CompileResult, EvalConfig, EvalResult, FullResult, Lang, Mode, PAYLOAD_ENV, PayloadError, PayloadLimits,
    ProfileResult, RankingBy, RunResult, SystemInfo, exit_code, run_name,
};
use process::{Ending, Spec};
use sysinfo::Probe;

/// Exit status when the evaluation ran.
pub const EXIT_OK: i32 = 0;
/// Exit status when the infrastructure failed (the result says why, when it could be written).
pub const EXIT_INFRA: i32 = 1;

/// Env vars the evaluated programs do not get, beside every payload variable (see
/// [`hidden_env`]): the agent's job token (with it, a submission could set its own meta-data
/// or artifacts) and the runner's own settings.
const HIDDEN_FROM_HARNESS: &[&str] = &[report::AGENT_TOKEN_ENV, report::SIM_META_DATA_FILE_ENV, "BENCHKITE_TIMING"];

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
        }
    }
}

/// Runs the evaluation and hands the result back; returns the process exit status.
///
/// Installs process-wide SIGTERM/SIGINT/SIGHUP handlers and makes the process a child
/// subreaper: call it from `main` only.
pub fn main(args: RunArgs) -> i32 {
    let t0 = Instant::now();
    if let Err(e) = process::install_stop_handlers() {
        log(&format!("warning: cannot handle SIGTERM ({e}); a canceled build may leave no result.json"));
    }
    if !args.no_sweep {
        process::enable_sweep();
    }
    let mut probe = Probe::start(args.python.clone(), !args.no_gpu_probe);
    let mut timing = Timing { start: t0, first_spawn: None, last_end: None };
    let (mut result, ranking_by) = evaluate(&args, &mut probe, &mut timing);
    result.system = probe.get(PROBE_WAIT).clone();
    finish(&args, &result, &ranking_by, &timing)
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
fn finish(args: &RunArgs, result: &FullResult, ranking_by: &RankingBy, timing: &Timing) -> i32 {
    let summary = contract::summarize(result, ranking_by);
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
    let reported = report::report(&args.output, &value, args.report, upload);
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

/// Decodes the payload and runs it; never panics on bad input.
fn evaluate(args: &RunArgs, probe: &mut Probe, timing: &mut Timing) -> (FullResult, RankingBy) {
    let payload = match read_payload(args) {
        Ok(p) => p,
        Err(e) => return (infra(e), RankingBy::default()),
    };
    let config = match contract::decode_runnable_payload(&payload, &runner_limits()) {
        Ok(c) => c,
        Err(e) => return (infra(e.to_string()), RankingBy::default()),
    };
    let ranking_by = config.ranking_by.clone();
    let dir = match WorkDir::create(args.workdir.as_deref(), args.keep_workdir) {
        Ok(d) => d,
        Err(e) => return (infra(e), ranking_by),
    };
    let mut ev = Evaluator {
        args,
        config: &config,
        dir: &dir,
        probe,
        timing,
        hidden: hidden_env(),
        runs: BTreeMap::new(),
        error: None,
    };
    ev.run();
    let Evaluator { runs, error, .. } = ev;
    let result = match error {
        None => FullResult { success: true, error: String::new(), system: SystemInfo::default(), runs },
        Some(e) => FullResult { success: false, error: e, system: SystemInfo::default(), runs },
    };
    drop(dir);
    (result, ranking_by)
}

/// The evaluation's directory: `work/` holds the sources (the harness's cwd), the cases
/// files sit beside it.
struct WorkDir {
    root: PathBuf,
    work: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn create(explicit: Option<&Path>, keep: bool) -> Result<WorkDir, String> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        let (root, remove) = match explicit {
            Some(dir) => {
                builder.recursive(true);
                builder
                    .create(dir)
                    .map_err(|e| format!("creating the working directory {} failed: {e}", dir.display()))?;
                let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
                if !empty {
                    return Err(format!("working directory {} is not empty", dir.display()));
                }
                (dir.to_owned(), false)
            }
            None => {
                let base = std::env::temp_dir();
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let mut attempt = 0u32;
                loop {
                    let p = base.join(format!("benchkite-run-{}-{nanos:x}-{attempt}", std::process::id()));
                    match builder.create(&p) {
                        Ok(()) => break (p, !keep),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                        Err(e) => {
                            return Err(format!("creating a working directory in {} failed: {e}", base.display()));
                        }
                    }
                }
            }
        };
        let work = root.join("work");
        std::fs::create_dir(&work).map_err(|e| format!("creating {} failed: {e}", work.display()))?;
        Ok(WorkDir { root, work, remove })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

struct Evaluator<'a> {
    args: &'a RunArgs,
    config: &'a EvalConfig,
    dir: &'a WorkDir,
    probe: &'a mut Probe,
    timing: &'a mut Timing,
    /// Env vars removed from every program the evaluation runs.
    hidden: Vec<String>,
    runs: BTreeMap<String, EvalResult>,
    /// Set when the infrastructure failed; stops the evaluation.
    error: Option<String>,
}

/// What a stage runs and under which limit.
struct Stage {
    /// Key in `runs`.
    name: String,
    /// The mode argument given to the harness.
    harness_mode: &'static str,
    /// The cases file, as kernelbot writes it for this run.
    cases: String,
    /// Seconds, as sent (fractions allowed; zero or less times out at once, as
    /// `subprocess.run` does).
    timeout_secs: f64,
    timeout_field: &'static str,
}

fn now_naive() -> String {
    contract::format_naive_datetime(jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).datetime())
}

impl<'a> Evaluator<'a> {
    fn run(&mut self) {
        if let Err(e) = self.write_files() {
            self.error = Some(e);
            return;
        }
        let (program, compilation) = match self.config.lang {
            Lang::Py => {
                let main = self.config.main.clone().unwrap_or_default();
                (vec![self.args.python.clone(), main], None)
            }
            Lang::Cu => match self.compile() {
                Some(c) => (vec![format!("./{OUTPUT_BINARY}")], Some(c)),
                None => return,
            },
        };
        let cfg = self.config;
        let all_benchmarks = cases::format_cases(cfg.benchmarks.iter());
        let ranked = match cfg.ranking_by {
            // kernelbot (`run_single_evaluation`): with `last`, the benchmark and ranked runs
            // get only the last line of the benchmarks (`splitlines(keepends=True)[-1]`).
            RankingBy::Last => cases::format_cases(cfg.benchmarks.last()),
            _ => all_benchmarks,
        };
        let test = || Stage {
            name: run_name::TEST.into(),
            harness_mode: "test",
            cases: cases::format_cases(cfg.tests.iter()),
            timeout_secs: cfg.test_timeout,
            timeout_field: "test_timeout",
        };
        let benchmark = || Stage {
            name: run_name::BENCHMARK.into(),
            harness_mode: "benchmark",
            cases: ranked.clone(),
            timeout_secs: cfg.benchmark_timeout,
            timeout_field: "benchmark_timeout",
        };
        let program = &program;
        let compilation = compilation.as_ref();
        match cfg.mode {
            Mode::Test => {
                self.stage(test(), program, compilation, None);
            }
            Mode::Benchmark => {
                self.before_timed_stage();
                self.stage(benchmark(), program, compilation, None);
            }
            Mode::Leaderboard | Mode::Private => {
                if !self.stage(test(), program, compilation, None) {
                    return;
                }
                self.before_timed_stage();
                if !self.stage(benchmark(), program, compilation, None) {
                    return;
                }
                let ranked_stage = Stage {
                    name: run_name::LEADERBOARD.into(),
                    harness_mode: "leaderboard",
                    cases: ranked.clone(),
                    timeout_secs: cfg.ranked_timeout,
                    timeout_field: "ranked_timeout",
                };
                self.stage(ranked_stage, program, compilation, None);
            }
            Mode::Profile => {
                let runtime = self.probe.get(PROBE_WAIT).runtime.clone();
                let selected = match profile::select(self.args.profiler, &runtime) {
                    Ok(p) => p,
                    Err(e) => {
                        self.error = Some(e);
                        return;
                    }
                };
                for (i, case) in cfg.benchmarks.iter().enumerate() {
                    let stage = Stage {
                        name: format!("{}{i}", run_name::PROFILE_PREFIX),
                        harness_mode: "profile",
                        // kernelbot hands each profile run one line of `splitlines()`: no
                        // line break at the end.
                        cases: case.to_line(),
                        timeout_secs: cfg.benchmark_timeout,
                        timeout_field: "benchmark_timeout",
                    };
                    if !self.stage(stage, program, compilation, Some(&selected)) && self.error.is_some() {
                        return;
                    }
                }
            }
        }
    }

    /// Timed stages never share the machine with the GPU probe.
    fn before_timed_stage(&mut self) {
        self.probe.get(PROBE_WAIT);
    }

    fn write_files(&self) -> Result<(), String> {
        let headers = self.config.headers.iter().flat_map(|h| h.iter());
        for (name, content) in self.config.sources.iter().chain(headers) {
            let path = self.dir.work.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("creating {} failed: {e}", parent.display()))?;
            }
            std::fs::write(&path, content).map_err(|e| format!("writing {} failed: {e}", path.display()))?;
        }
        Ok(())
    }

    fn first_stage_name(&self) -> String {
        match self.config.mode {
            Mode::Test | Mode::Leaderboard | Mode::Private => run_name::TEST.into(),
            Mode::Benchmark => run_name::BENCHMARK.into(),
            Mode::Profile => format!("{}0", run_name::PROFILE_PREFIX),
        }
    }

    /// Compiles a `cu` submission. `None` when there is nothing to run: the compile result
    /// is recorded under the first stage, and `error` is set when the failure is the
    /// infrastructure's (nvcc missing, invalid build config).
    fn compile(&mut self) -> Option<CompileResult> {
        let start = now_naive();
        let record = |this: &mut Self, c: CompileResult| {
            let eval =
                EvalResult { start: start.clone(), end: now_naive(), compilation: Some(c), run: None, profile: None };
            this.runs.insert(this.first_stage_name(), eval.clone());
            // kernelbot compiles again for every profile run and records each failure; the
            // other modes stop at the first stage.
            if this.config.mode == Mode::Profile && eval.compilation.as_ref().is_some_and(|c| c.nvcc_found) {
                for i in 1..this.config.benchmarks.len() {
                    this.runs.insert(format!("{}{i}", run_name::PROFILE_PREFIX), eval.clone());
                }
            }
        };
        let args = match compile::nvcc_args(self.config, &self.dir.work) {
            Ok(a) => a,
            Err(e) => {
                self.error = Some(format!("invalid CUDA build config: {e}"));
                return None;
            }
        };
        let nvcc = match compile::find_nvcc(self.args.nvcc.as_deref()) {
            Ok(p) => p,
            Err(why) => {
                let mut argv = vec!["nvcc".to_owned()];
                argv.extend(args);
                record(self, compile::not_found_result(&process::shell_join(&argv), &why));
                self.error = Some(format!("{why}: this agent cannot compile CUDA submissions"));
                return None;
            }
        };
        let result = compile::compile(&nvcc, &args, &self.dir.work, Duration::from_secs(self.args.compile_timeout));
        // Like the seeds: the sources are gone before any submitted code runs.
        let headers = self.config.headers.iter().flat_map(|h| h.keys());
        for name in self.config.sources.keys().chain(headers) {
            let _ = std::fs::remove_file(self.dir.work.join(name));
        }
        if let Some(sig) = process::stop_signal() {
            record(self, result);
            self.error = Some(format!("canceled by signal {sig} while compiling"));
            return None;
        }
        if !result.nvcc_found {
            self.error = Some(format!("nvcc could not be started: {}", result.stderr));
            record(self, result);
            return None;
        }
        if !result.success {
            log(&format!("compilation failed (exit code {})", result.exit_code));
            record(self, result);
            return None;
        }
        Some(result)
    }

    /// kernelbot's "compile" step for Python submissions (`run_pytorch_script`): before
    /// every stage, `python3 submission.py` runs once with the environment of a run,
    /// `POPCORN_SEED=1` and a result pipe whose content is ignored, under the compile timeout
    /// (`Timeout.COMPILE`, 120 s) and outside the stage's own, so that `load_inline` fills
    /// its build cache before the timed run. Its outcome becomes `compilation` only when its
    /// stdout shows a torch extension build (`-DTORCH_EXTENSION_NAME`), then always as a
    /// success whatever its exit code, exactly as kernelbot records it; otherwise `None`.
    ///
    /// kernelbot runs the literal `submission.py` (not `main`); without that file in the
    /// working directory it gets `None` from a failed start of Python, which is what
    /// skipping the run gives here. `Err` when the infrastructure failed (`error` is set).
    fn compile_prerun(&mut self, stage: &str) -> Result<Option<CompileResult>, ()> {
        if !self.dir.work.join(PRERUN_FILE).is_file() {
            return Ok(None);
        }
        let argv = [self.args.python.clone(), PRERUN_FILE.to_owned()];
        let mut spec = Spec::new(&argv[0]).args(argv[1..].iter());
        spec.cwd = Some(self.dir.work.clone());
        spec.result_pipe = true;
        spec.timeout = Some(Duration::from_secs(self.args.compile_timeout));
        spec.env_remove = self.hidden.clone();
        spec.env.push(("POPCORN_SEED".into(), "1".into()));
        let out = match process::run(&spec) {
            Ok(o) => o,
            Err(process::SpawnError::Canceled(sig)) => {
                self.error = Some(format!("canceled by signal {sig} before the compile step of the {stage} run"));
                return Err(());
            }
            Err(e) => {
                self.error = Some(format!("starting the compile step of the {stage} run failed: {e}"));
                return Err(());
            }
        };
        let exit = match out.ending {
            Ending::TimedOut => exit_code::TIMEOUT,
            Ending::Canceled(sig) => {
                self.error = Some(format!("canceled by signal {sig} during the compile step of the {stage} run"));
                return Err(());
            }
            other => other.python_returncode(),
        };
        log(&format!(
            "{stage}: compile step `{}` exit code {exit} in {:.3} s{}",
            process::shell_join(&argv),
            out.duration.as_secs_f64(),
            if out.ending == Ending::TimedOut { " (timed out)" } else { "" }
        ));
        let stdout = out.stdout.to_output();
        if !stdout.contains(TORCH_EXTENSION_MARKER) {
            return Ok(None);
        }
        Ok(Some(CompileResult {
            nvcc_found: true,
            nvcc_version: String::new(),
            success: true,
            command: process::shell_join(&argv),
            stdout,
            stderr: out.stderr.to_output(),
            exit_code: exit,
        }))
    }

    /// Runs one stage and records it; returns whether it passed (`check: pass`).
    fn stage(
        &mut self,
        stage: Stage,
        program: &[String],
        compilation: Option<&CompileResult>,
        profiler: Option<&profile::Selected>,
    ) -> bool {
        let start = now_naive();
        let compilation = match self.config.lang {
            Lang::Py => match self.compile_prerun(&stage.name) {
                Ok(c) => c,
                Err(()) => return false,
            },
            Lang::Cu => compilation.cloned(),
        };
        let cases_path = self.dir.root.join(format!("cases.{}.txt", stage.name));
        if let Err(e) = std::fs::write(&cases_path, &stage.cases) {
            self.error = Some(format!("writing {} failed: {e}", cases_path.display()));
            return false;
        }
        let mut argv: Vec<String> = Vec::new();
        let profile_dir = self.dir.root.join(&stage.name).join(profile::OUTPUT_DIR);
        if let Some(p) = profiler {
            if let Err(e) = std::fs::create_dir_all(&profile_dir) {
                self.error = Some(format!("creating {} failed: {e}", profile_dir.display()));
                return false;
            }
            argv.extend(p.profiler.args(&p.path, &profile_dir));
        }
        argv.extend(program.iter().cloned());
        argv.push(stage.harness_mode.to_owned());
        argv.push(cases_path.to_string_lossy().into_owned());

        let mut spec = Spec::new(&argv[0]).args(argv[1..].iter());
        spec.cwd = Some(self.dir.work.clone());
        spec.result_pipe = true;
        // `subprocess.run(timeout=...)`: fractions count; zero or less times out at once.
        spec.timeout = Some(Duration::try_from_secs_f64(stage.timeout_secs.max(0.0)).unwrap_or(Duration::MAX));
        spec.env_remove = self.hidden.clone();
        if let Some(seed) = self.config.seed {
            spec.env.push(("POPCORN_SEED".into(), seed.to_string()));
        }
        if self.config.multi_gpu {
            let n = self.probe.get(PROBE_WAIT).device_count.max(1);
            spec.env.push(("POPCORN_GPUS".into(), n.to_string()));
        }
        if let Some(p) = profiler {
            spec.env.extend(p.profiler.env().iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        }
        let command = process::shell_join(&argv);
        let out = match process::run(&spec) {
            Ok(o) => o,
            Err(process::SpawnError::Canceled(sig)) => {
                self.error = Some(format!("canceled by signal {sig} before the {} run", stage.name));
                return false;
            }
            Err(e) => {
                self.error = Some(format!("starting the {} run failed: {e}", stage.name));
                return false;
            }
        };
        self.timing.first_spawn.get_or_insert(out.spawned_at);
        self.timing.last_end = Some(out.ended_at);

        let mut stderr = out.stderr.to_output();
        let mut duration = out.duration.as_secs_f64();
        let (exit, mut result) = match out.ending {
            Ending::TimedOut => {
                // As kernelbot's `run_program` on `TimeoutExpired`: exit code 114, the limit
                // as the duration, no results, and the output only as the program wrote it
                // (the note goes to the job log).
                log(&format!(
                    "{} run timed out after {} s ({}); its process group was killed",
                    stage.name, stage.timeout_secs, stage.timeout_field
                ));
                duration = stage.timeout_secs;
                (exit_code::TIMEOUT, BTreeMap::new())
            }
            Ending::Canceled(sig) => {
                stderr.push_str(&format!("\n[benchkite] run canceled: the runner received signal {sig}\n"));
                stderr = contract::truncate_output(&stderr).into_owned();
                self.error = Some(format!("canceled by signal {sig} during the {} run", stage.name));
                (out.ending.python_returncode(), BTreeMap::new())
            }
            other => (other.python_returncode(), cases::parse_result_lines(&String::from_utf8_lossy(&out.result))),
        };
        let passed = out.ending != Ending::TimedOut && contract::passed(&result);
        let success = contract::run_success(exit);
        let mut profile = None;
        if let Some(p) = profiler {
            // kernelbot reads the ncu report whatever the run's outcome, and keeps a trace
            // only from a run that succeeded.
            for note in p.profiler.after_run(&p.path, &profile_dir, &self.dir.work, &mut result) {
                log(&note);
            }
            if success {
                let (trace, note) = profile::trace_of(&profile_dir);
                if let Some(n) = note {
                    log(&n);
                }
                profile = Some(ProfileResult { profiler: p.profiler.label().to_owned(), trace, download_url: None });
            }
        }
        let run = RunResult {
            success,
            passed,
            command,
            stdout: out.stdout.to_output(),
            stderr,
            exit_code: exit,
            duration,
            result,
        };
        log(&format!(
            "{}: exit code {}, {} in {:.3} s",
            stage.name,
            run.exit_code,
            if run.passed { "passed" } else { "not passed" },
            out.duration.as_secs_f64()
        ));
        let passed = run.passed;
        self.runs.insert(stage.name, EvalResult { start, end: now_naive(), compilation, run: Some(run), profile });
        passed && self.error.is_none()
    }
}
