//! The user's side: `benchkite submit` (a kernelbot task directory and a submission → a
//! KernelJob, optionally followed to its result), `benchkite get` and `benchkite logs`,
//! also run as the kubectl plugin `kubectl benchkite`.

pub mod render;
pub mod task;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use kube::{Api, Client, Config};

use crate::api::KernelJob;
use crate::api::kerneljob::Mode;
use render::{Outcome, exit};

/// The label naming who submitted a job (fair share counts usage per submitter).
pub const SUBMITTER_LABEL: &str = "benchkite.dev/submitter";

/// The file name under which the binary is a kubectl plugin (`kubectl benchkite ...`).
pub const PLUGIN_FILE_NAME: &str = "kubectl-benchkite";

/// The program name to show in help and errors when the binary was started as `argv0`:
/// `kubectl benchkite` for the plugin (a file or symlink named `kubectl-benchkite`), `None`
/// otherwise (clap's default).
pub fn plugin_bin_name(argv0: &OsStr) -> Option<&'static str> {
    let name = std::path::Path::new(argv0).file_name()?;
    (name == PLUGIN_FILE_NAME).then_some("kubectl benchkite")
}

/// How to reach the cluster, as kubectl does.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Path to the kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "FILE", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, value_name = "NS", global = true)]
    pub namespace: Option<String>,
}

/// The evaluation mode, as `--mode` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Test,
    Benchmark,
    Profile,
    Leaderboard,
    Private,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Test => Mode::Test,
            ModeArg::Benchmark => Mode::Benchmark,
            ModeArg::Profile => Mode::Profile,
            ModeArg::Leaderboard => Mode::Leaderboard,
            ModeArg::Private => Mode::Private,
        }
    }
}

/// `-o` of `submit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
    Yaml,
}

/// `-o` of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GetOutput {
    Wide,
    Json,
    Yaml,
}

const SUBMIT_AFTER_HELP: &str = "\
Exit codes:
  0  the kernel passed (without --wait: the KernelJob was created)
  1  the evaluation ran and the kernel failed (tests failed, did not compile, crashed)
  2  usage error, unreadable task or submission, or a Kubernetes API error
  3  the job ended without a kernel verdict (Failed: infrastructure, build, refusal;
     TimedOut; Cancelled; deleted while waiting)
  4  --timeout passed before the job finished (the job keeps running)

TASK_DIR is a task in kernelbot's layout: task.yml with files: [{name, source}] (source
@SUBMISSION@ is SUBMISSION_FILE, others are paths relative to the task directory), lang,
config, tests, benchmarks, ranking_by, timeouts, seed, multi_gpu.";

/// `benchkite submit`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = SUBMIT_AFTER_HELP)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["pool", "queue"]))]
pub struct SubmitArgs {
    /// The task directory (kernelbot's layout: TASK_DIR/task.yml), or its task.yml.
    pub task_dir: PathBuf,
    /// The submission: the file `@SUBMISSION@` stands for in task.yml.
    pub submission_file: PathBuf,
    /// Evaluation mode.
    #[arg(long, value_enum)]
    pub mode: ModeArg,
    /// AgentPool to run on.
    #[arg(long, value_name = "NAME")]
    pub pool: Option<String>,
    /// Namespace of --pool, when it is not the job's.
    #[arg(long, value_name = "NS", requires = "pool")]
    pub pool_namespace: Option<String>,
    /// Raw Buildkite queue (where the admin allows it).
    #[arg(long, value_name = "NAME")]
    pub queue: Option<String>,
    /// Submission priority (-1000..1000; higher first).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// A label `key=value` on the KernelJob (repeatable).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// KernelJob name (default: generated from the task directory's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Who submits (the label benchkite.dev/submitter; fair share counts per submitter).
    #[arg(long, value_name = "NAME")]
    pub submitter: Option<String>,
    /// CUDA architecture (default: the pool's GPU architecture).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Run it even if the pool's result cache holds the result of an identical job (the
    /// job's `resultCache: Bypass`; its result replaces the cached one).
    #[arg(long)]
    pub no_cache: bool,
    /// Follow the job to its end and print the result; the exit code tells the outcome.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (`90s`, `10m`, `1h`; plain seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
    /// Output: `text`, or the KernelJob (created, or final with --wait) as `json` or `yaml`,
    /// alone on stdout (progress goes to stderr).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `benchkite get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// One KernelJob (rendered like submit's result); without it, a table of them.
    pub name: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Only jobs with these labels (a label selector, as kubectl's -l).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// `wide` (more columns), `json` or `yaml`.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<GetOutput>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `benchkite logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The KernelJob.
    pub name: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `90`, `90s`, `10m`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 90s, 10m, 1h30m");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    if !num.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A DNS-1123 prefix for generated names, from the task directory's name.
fn generate_name_prefix(task: &std::path::Path) -> String {
    let dir = if task.is_dir() { task } else { task.parent().unwrap_or(task) };
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut out = String::new();
    for c in base.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').chars().take(40).collect::<String>();
    out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "kernel-".to_string() } else { format!("{out}-") }
}

/// The KernelJob `submit` creates.
pub fn build_job(args: &SubmitArgs) -> Result<KernelJob> {
    let task = task::load(&args.task_dir, &args.submission_file, args.mode.into())?;
    let mut spec = task.spec;
    spec.pool = args.pool.clone();
    spec.pool_namespace = args.pool_namespace.clone();
    spec.queue = args.queue.clone();
    if let Some(p) = args.priority {
        spec.priority = p;
    }
    if args.no_cache {
        spec.result_cache = Some(crate::api::kerneljob::CachePolicy::Bypass);
    }
    if args.arch.is_some() {
        spec.arch = args.arch.clone();
    }
    let mut labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
    if let Some(who) = &args.submitter {
        labels.insert(SUBMITTER_LABEL.to_string(), who.clone());
    }
    let metadata = ObjectMeta {
        name: args.name.clone(),
        generate_name: args.name.is_none().then(|| generate_name_prefix(&args.task_dir)),
        namespace: args.kube.namespace.clone(),
        labels: (!labels.is_empty()).then_some(labels),
        ..ObjectMeta::default()
    };
    Ok(KernelJob { metadata, spec, status: None })
}

/// A Kubernetes client from the kubeconfig, like kubectl (`$KUBECONFIG`, `~/.kube/config`,
/// in-cluster), with `--kubeconfig` and `--context` honoured; and the namespace to use.
async fn connect(k: &KubeArgs) -> Result<(Client, String)> {
    let options = KubeConfigOptions { context: k.context.clone(), ..KubeConfigOptions::default() };
    let config = match (&k.kubeconfig, &k.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        (None, Some(ctx)) => Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("loading context {ctx} of the kubeconfig"))?,
        (None, None) => Config::infer()
            .await
            .context("finding a kubeconfig ($KUBECONFIG, ~/.kube/config) or an in-cluster config")?,
    };
    let namespace = k.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, namespace))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `f`, printing an error and returning [`exit::USAGE_OR_API`] when it fails.
fn run_main(f: impl std::future::Future<Output = Result<i32>>) -> i32 {
    let result = runtime().and_then(|rt| rt.block_on(f));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::USAGE_OR_API
        }
    }
}

/// `benchkite submit`; returns the exit code.
pub fn submit(args: SubmitArgs) -> i32 {
    run_main(submit_async(args))
}

/// Creates the job with a plain POST (`Api::create`, as `kubectl create` does), never with
/// client-side apply: `kubectl apply` stores the whole object in the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation, and annotations are capped
/// at 256 KiB in total, so a KernelJob whose sources come near the 1 MB object limit would be
/// refused. A POST stores the object once.
async fn create_job(api: &Api<KernelJob>, job: &KernelJob) -> Result<KernelJob> {
    api.create(&PostParams::default(), job).await.map_err(|e| match e {
        kube::Error::Api(s) => anyhow!("the API server refused the KernelJob: {} ({} {})", s.message, s.code, s.reason),
        e => anyhow!(e).context("creating the KernelJob"),
    })
}

async fn submit_async(args: SubmitArgs) -> Result<i32> {
    let mut job = build_job(&args)?;
    let (client, namespace) = connect(&args.kube).await?;
    job.metadata.namespace = Some(namespace.clone());
    let api: Api<KernelJob> = Api::namespaced(client, &namespace);
    let created = create_job(&api, &job).await?;
    let name = created.metadata.name.clone().context("the created KernelJob has no name")?;
    if !args.wait {
        print_object(&created, args.output, || format!("kerneljob.benchkite.dev/{name} created\n"))?;
        return Ok(exit::PASSED);
    }
    if args.output == Output::Text {
        println!("kerneljob.benchkite.dev/{name} created in {namespace}");
    }
    // Progress on stdout for people; on stderr when stdout carries the object.
    let to_stderr = args.output != Output::Text;
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let (last, outcome) = wait(&api, &name, created, deadline, Progress::new(to_stderr)).await?;
    match args.output {
        Output::Text => {
            print!("{}", render::result_text(&last));
            println!("Exit:       {} ({})", outcome.exit_code(), outcome.headline());
        }
        other => print_object(&last, other, String::new)?,
    }
    Ok(outcome.exit_code())
}

/// Prints `job` as JSON or YAML (without managedFields, as kubectl does), or `text()`.
fn print_object(job: &KernelJob, output: Output, text: impl FnOnce() -> String) -> Result<()> {
    let mut job = job.clone();
    job.metadata.managed_fields = None;
    let out = match output {
        Output::Text => text(),
        Output::Json => serde_json::to_string_pretty(&job).context("encoding the KernelJob")? + "\n",
        Output::Yaml => serde_yaml::to_string(&job).context("encoding the KernelJob")?,
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).context("writing to stdout")
}

/// The live progress display: one line redrawn in place on a terminal, plain lines (one per
/// change) otherwise.
struct Progress {
    to_stderr: bool,
    tty: bool,
    last_key: String,
    drawn: bool,
}

impl Progress {
    fn new(to_stderr: bool) -> Self {
        let tty = if to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
        Self { to_stderr, tty, last_key: String::new(), drawn: false }
    }

    fn write(&self, s: &str) {
        // A closed terminal must not stop the wait; the outcome still decides the exit code.
        let _ = if self.to_stderr {
            let mut e = std::io::stderr().lock();
            e.write_all(s.as_bytes()).and_then(|()| e.flush())
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(s.as_bytes()).and_then(|()| o.flush())
        };
    }

    fn show(&mut self, job: &KernelJob, waited: Duration) {
        let now = jiff::Timestamp::now();
        if self.tty {
            let width = terminal_width(self.to_stderr).unwrap_or(100);
            let line = render::fit(&render::progress_line(job, waited, now), width.saturating_sub(1));
            self.write(&format!("\r\x1b[2K{line}"));
            self.drawn = true;
        } else {
            let key = render::progress_key(job, now);
            if key != self.last_key {
                self.write(&format!("{}\n", render::progress_line(job, waited, now)));
                self.last_key = key;
            }
        }
    }

    fn finish(&mut self) {
        if self.tty && self.drawn {
            self.write("\n");
            self.drawn = false;
        }
    }
}

/// Columns of the terminal on stdout (or stderr).
fn terminal_width(stderr: bool) -> Option<usize> {
    let fd = if stderr { libc::STDERR_FILENO } else { libc::STDOUT_FILENO };
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a `winsize` into the struct we own; the fd is only read.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

/// Follows the job through a watch on its name until it finishes, is deleted, or the
/// deadline passes; redraws the progress line every second meanwhile (no API request).
async fn wait(
    api: &Api<KernelJob>,
    name: &str,
    mut job: KernelJob,
    deadline: Option<Instant>,
    mut progress: Progress,
) -> Result<(KernelJob, Outcome)> {
    let start = Instant::now();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config).default_backoff().boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let sleep_until = |d: Option<Instant>| async move {
        match d {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let timeout = sleep_until(deadline);
    tokio::pin!(timeout);
    progress.show(&job, start.elapsed());
    loop {
        if let Some(outcome) = render::outcome(&job) {
            progress.finish();
            return Ok((job, outcome));
        }
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j))) => {
                    job = j;
                    progress.show(&job, start.elapsed());
                }
                Some(Ok(watcher::Event::Delete(j))) => {
                    progress.finish();
                    let outcome = Outcome::JobFailed("the KernelJob was deleted while waiting".to_string());
                    return Ok((j, outcome));
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                // The watcher backs off and retries on its own; a persistent failure (no
                // `watch` permission, the API server gone) is said each time, and ends in
                // the timeout or the user's Ctrl-C.
                Some(Err(e)) => {
                    progress.finish();
                    eprintln!("watching KernelJob {name}: {e} (retrying)");
                }
                None => bail!("the watch of KernelJob {name} ended"),
            },
            _ = tick.tick() => progress.show(&job, start.elapsed()),
            () = &mut timeout => {
                progress.finish();
                return Ok((job, Outcome::WaitTimedOut));
            }
        }
    }
}

/// `benchkite get`; returns the exit code.
pub fn get(args: GetArgs) -> i32 {
    run_main(get_async(args))
}

async fn get_async(args: GetArgs) -> Result<i32> {
    let (client, namespace) = connect(&args.kube).await?;
    let api: Api<KernelJob> = if args.all_namespaces { Api::all(client) } else { Api::namespaced(client, &namespace) };
    let as_object = |o: Option<GetOutput>| match o {
        Some(GetOutput::Json) => Some(Output::Json),
        Some(GetOutput::Yaml) => Some(Output::Yaml),
        _ => None,
    };
    if let Some(name) = &args.name {
        let job = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading KernelJob {name} in {namespace}"))?
            .ok_or_else(|| anyhow!("KernelJob {name} not found in namespace {namespace}"))?;
        match as_object(args.output) {
            Some(o) => print_object(&job, o, String::new)?,
            None => print!("{}", render::result_text(&job)),
        }
        return Ok(exit::PASSED);
    }
    let mut lp = ListParams::default();
    if let Some(sel) = &args.selector {
        lp = lp.labels(sel);
    }
    let mut jobs = api.list(&lp).await.context("listing KernelJobs")?.items;
    jobs.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    match as_object(args.output) {
        Some(o) => {
            let items: Vec<_> = jobs
                .into_iter()
                .map(|mut j| {
                    j.metadata.managed_fields = None;
                    j
                })
                .collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            let text = match o {
                Output::Yaml => serde_yaml::to_string(&list).context("encoding the list")?,
                _ => serde_json::to_string_pretty(&list).context("encoding the list")? + "\n",
            };
            print!("{text}");
        }
        None if jobs.is_empty() => {
            let scope =
                if args.all_namespaces { "any namespace".to_string() } else { format!("{namespace} namespace") };
            eprintln!("No KernelJobs found in {scope}.");
        }
        None => {
            let wide = args.output == Some(GetOutput::Wide);
            print!("{}", render::jobs_table(&jobs, args.all_namespaces, wide, jiff::Timestamp::now()));
        }
    }
    Ok(exit::PASSED)
}

/// `benchkite logs`; returns the exit code.
pub fn logs(args: LogsArgs) -> i32 {
    run_main(logs_async(args))
}

async fn logs_async(args: LogsArgs) -> Result<i32> {
    let (client, namespace) = connect(&args.kube).await?;
    let api: Api<KernelJob> = Api::namespaced(client.clone(), &namespace);
    let name = &args.name;
    let job = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading KernelJob {name} in {namespace}"))?
        .ok_or_else(|| anyhow!("KernelJob {name} not found in namespace {namespace}"))?;
    let status = job.status.clone().unwrap_or_default();
    let stored = match &status.output_ref {
        Some(cm) => {
            let cms: Api<ConfigMap> = Api::namespaced(client, &namespace);
            cms.get_opt(cm).await.with_context(|| format!("reading the result ConfigMap {cm}"))?.and_then(|c| c.data)
        }
        None => None,
    };
    let mut out = String::new();
    match stored.as_ref().and_then(|d| d.get("result.json")) {
        Some(text) => out.push_str(&render_result_json(text)),
        None => {
            out.push_str(
                "No result.json is stored for this job (the result came with the build's meta-data, \
                 or there is none yet); the full log is on the build page.\n",
            );
            if let Some(result) = &status.result {
                if !result.error.is_empty() {
                    out.push_str(&format!("error: {}\n", result.error));
                }
                for (run, r) in &result.runs {
                    if let Some(e) = &r.error {
                        out.push_str(&format!("== {run}: {e}\n"));
                    }
                }
            }
            if !status.message.is_empty() {
                out.push_str(&format!("{}: {}\n", status.phase.as_str(), status.message));
            }
        }
    }
    match render::build_link(&job) {
        Some((number, url)) => out.push_str(&format!("Build: #{number} {url}\n")),
        None => out.push_str("Build: none yet\n"),
    }
    print!("{out}");
    Ok(exit::PASSED)
}

/// The logs in a `result.json`: per run, the compiler's and the harness's output.
pub fn render_result_json(text: &str) -> String {
    let Ok(result) = crate::contract::parse_result_json(text.as_bytes()) else {
        return format!("{text}\n");
    };
    let mut out = String::new();
    if !result.error.is_empty() {
        out.push_str(&format!("error: {}\n", result.error));
    }
    for (name, run) in &result.runs {
        if let Some(c) = &run.compilation {
            out.push_str(&format!("== {name}: compile (exit {}): {}\n", c.exit_code, c.command));
            for (label, s) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
                if !s.is_empty() {
                    out.push_str(&format!("-- {label}\n{}\n", s.trim_end()));
                }
            }
        }
        if let Some(r) = &run.run {
            out.push_str(&format!(
                "== {name}: run (exit {}, {:.2}s, passed {}): {}\n",
                r.exit_code, r.duration, r.passed, r.command
            ));
            for (label, s) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
                if !s.is_empty() {
                    out.push_str(&format!("-- {label}\n{}\n", s.trim_end()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
