//! One evaluation: decode the payload, lay out the working directory, compile or run the
//! submission stage by stage through the harness protocol and collect the runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::fingerprint;
use super::process::{self, Ending, Spec};
use super::sandbox::{self, Decision, Sandbox};
use super::sysinfo::Probe;
use super::workdir::WorkDir;
use super::{
    OUTPUT_BINARY, PRERUN_FILE, PROBE_WAIT, RunArgs, TORCH_EXTENSION_MARKER, Timing, cases, compile, hidden_env, infra,
    log, profile, read_payload, runner_limits,
};
use crate::contract::{
    self, CompileResult, EvalConfig, EvalResult, FullResult, Lang, Mode, ProfileResult, RankingBy, RunResult,
    SystemInfo, exit_code, run_name,
};

/// Decodes the payload and runs it; never panics on bad input. `harness_sha256` gets the
/// hash of the task's main file once the payload decoded (for the fingerprint).
pub(super) fn evaluate(
    args: &RunArgs,
    probe: &mut Probe,
    timing: &mut Timing,
    harness_sha256: &mut String,
) -> (FullResult, RankingBy) {
    let payload = match read_payload(args) {
        Ok(p) => p,
        Err(e) => return (infra(e), RankingBy::default()),
    };
    let config = match contract::decode_runnable_payload(&payload, &runner_limits()) {
        Ok(c) => c,
        Err(e) => return (infra(e.to_string()), RankingBy::default()),
    };
    let ranking_by = config.ranking_by.clone();
    if let Some(main) = config.main.as_ref().and_then(|m| config.sources.get(m)) {
        *harness_sha256 = fingerprint::harness_sha256(main);
    }
    // The interpreter is found now, before any submitted code ran (the work directory is
    // writable by the sandbox; PATH lookups later could find what it planted).
    let python = sandbox::resolve(&args.python).map_or_else(|| args.python.clone().into(), PathBuf::into_os_string);
    let must_run: Vec<PathBuf> = match config.lang {
        Lang::Py => vec![PathBuf::from(&python)],
        Lang::Cu => compile::find_nvcc(args.nvcc.as_deref()).into_iter().collect(),
    };
    let (mut sandbox, base) = match sandbox::decide(&args.sandbox_settings(), &must_run, args.workdir.as_deref()) {
        Ok(Decision::Sandboxed { sandbox, base }) => (Some(sandbox), Some(base)),
        Ok(Decision::Unconfined(warning)) => {
            if let Some(w) = warning {
                log(&w);
            }
            (None, None)
        }
        Err(e) => return (infra(e), ranking_by),
    };
    let dir = match WorkDir::create(args.workdir.as_deref(), args.keep_workdir, base.as_deref()) {
        Ok(d) => d,
        Err(e) => return (infra(e), ranking_by),
    };
    if let Some(sb) = sandbox.as_mut() {
        if let Err(e) = sb.adopt(&dir.root, &dir.work) {
            return (infra(e), ranking_by);
        }
        log(&format!(
            "sandbox: evaluated programs run as uid {} gid {} (nproc {}, nofile {}, scratch {} MiB)",
            sb.creds.uid,
            sb.creds.gid,
            sb.creds.nproc,
            sb.creds.nofile,
            sb.disk_limit / (1024 * 1024)
        ));
    }
    let mut ev = Evaluator {
        args,
        config: &config,
        dir: &dir,
        probe,
        timing,
        hidden: hidden_env(),
        python,
        sandbox: sandbox.as_ref(),
        runs: BTreeMap::new(),
        error: None,
    };
    ev.run();
    let Evaluator { runs, error, .. } = ev;
    if let Some(sb) = &sandbox {
        for note in sb.finish() {
            log(&note);
        }
    }
    let result = match error {
        None => FullResult { success: true, error: String::new(), system: SystemInfo::default(), runs },
        Some(e) => FullResult { success: false, error: e, system: SystemInfo::default(), runs },
    };
    drop(dir);
    (result, ranking_by)
}

struct Evaluator<'a> {
    args: &'a RunArgs,
    config: &'a EvalConfig,
    dir: &'a WorkDir,
    probe: &'a mut Probe,
    timing: &'a mut Timing,
    /// Env vars removed from every program the evaluation runs (unsandboxed; the sandbox
    /// starts from an empty environment).
    hidden: Vec<String>,
    /// `--python` resolved to an absolute path when the evaluation started.
    python: std::ffi::OsString,
    sandbox: Option<&'a Sandbox>,
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
        if let Some(sb) = self.sandbox
            && let Err(e) = sb.give(&self.dir.work)
        {
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

    /// A spec for `argv` (as recorded), with the interpreter as resolved at the start,
    /// confined to the sandbox when there is one.
    fn spec(&self, argv: &[String], env: Vec<(String, String)>) -> Spec {
        let program = match argv.first() {
            Some(p) if *p == self.args.python => self.python.clone(),
            Some(p) => p.into(),
            None => std::ffi::OsString::new(),
        };
        let mut spec = Spec::new(program).args(argv.iter().skip(1));
        self.confine(&mut spec, env);
        spec
    }

    /// Sets `spec`'s environment (`env` added to what a program gets) and its confinement.
    fn confine(&self, spec: &mut Spec, env: Vec<(String, String)>) {
        match self.sandbox {
            Some(sb) => {
                spec.env = sb.env(&env);
                spec.sandbox = Some(sb.confine());
            }
            None => {
                spec.env_remove = self.hidden.clone();
                spec.env = env;
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
        let result =
            compile::compile(&nvcc, &args, &self.dir.work, Duration::from_secs(self.args.compile_timeout), &|s| {
                self.confine(s, Vec::new())
            });
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
        let mut spec = self.spec(&argv, vec![("POPCORN_SEED".into(), "1".into())]);
        spec.cwd = Some(self.dir.work.clone());
        spec.result_pipe = true;
        spec.timeout = Some(Duration::from_secs(self.args.compile_timeout));
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
        if let Some(v) = &out.violation {
            // The run that follows is measured again and fails if it is still over.
            log(&format!("{stage}: compile step: sandbox: {v}"));
        }
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
            if let Some(sb) = self.sandbox
                && let Err(e) = sb.give(&profile_dir)
            {
                self.error = Some(e);
                return false;
            }
            argv.extend(p.profiler.args(&p.path, &profile_dir));
        }
        argv.extend(program.iter().cloned());
        argv.push(stage.harness_mode.to_owned());
        argv.push(cases_path.to_string_lossy().into_owned());

        let mut env = Vec::new();
        if let Some(seed) = self.config.seed {
            env.push(("POPCORN_SEED".into(), seed.to_string()));
        }
        if self.config.multi_gpu {
            let n = self.probe.get(PROBE_WAIT).device_count.max(1);
            env.push(("POPCORN_GPUS".into(), n.to_string()));
        }
        if let Some(p) = profiler {
            env.extend(p.profiler.env().iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        }
        let mut spec = self.spec(&argv, env);
        spec.cwd = Some(self.dir.work.clone());
        spec.result_pipe = true;
        // `subprocess.run(timeout=...)`: fractions count; zero or less times out at once.
        spec.timeout = Some(Duration::try_from_secs_f64(stage.timeout_secs.max(0.0)).unwrap_or(Duration::MAX));
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
        let mut passed = out.ending != Ending::TimedOut && contract::passed(&result);
        let mut success = contract::run_success(exit);
        // The sandbox's verdict overrides the harness's: a run over its limits failed.
        let mut refused = out.violation.clone();
        if refused.is_none()
            && profiler.is_some()
            && self.sandbox.is_some()
            && let Err(e) = sandbox::confine::refuse_symlinks(&profile_dir)
        {
            refused = Some(e);
        }
        if let Some(v) = &refused {
            log(&format!("{}: sandbox: {v}", stage.name));
            stderr.push_str(&format!("\n[benchkite] sandbox: {v}\n"));
            stderr = contract::truncate_output(&stderr).into_owned();
            passed = false;
            success = false;
        }
        let mut profile = None;
        if let Some(p) = profiler.filter(|_| refused.is_none()) {
            // kernelbot reads the ncu report whatever the run's outcome, and keeps a trace
            // only from a run that succeeded.
            for note in p
                .profiler
                .after_run(&p.path, &profile_dir, &self.dir.work, &mut result, &|s| self.confine(s, Vec::new()))
            {
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
