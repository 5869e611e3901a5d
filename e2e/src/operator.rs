//! Runs the real `benchkite` binary against the e2e cluster, as the chart would in a pod:
//! same flags, a kubeconfig instead of a service account.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::{e2e_dir, kubeconfig_path, repo_root, wait_until};

/// The operator binary: `$BENCHKITE_BIN`, else `<repo>/target/debug/benchkite` (built by
/// `make test` before the e2e tests run).
pub fn binary() -> Result<PathBuf> {
    let path = match std::env::var_os("BENCHKITE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target").join("debug").join("benchkite"),
    };
    if !path.exists() {
        bail!("{} does not exist: build it with `cargo build --bin benchkite` (make test does)", path.display());
    }
    Ok(path)
}

/// Installs (server-side applies) the CRDs from `crds/` and waits until they are Established.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join("crds");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply("benchkite-e2e").force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    for name in names {
        wait_until(&format!("CRD {name} Established"), Duration::from_secs(30), || async {
            let crd = api.get(&name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            Ok(established.then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// The e2e installation's result master key (a fixed test value, not a secret).
pub const E2E_RESULT_MASTER_KEY: &str = "6b3c1f0e9d2a4857b6c3e1f09a7d5c2e4b8f1a3d6c9e0b2f5a7d4c1e8b3f6a90";

/// Writes `key` (hex) to `path` once, atomically (parallel tests share it).
fn write_key_file(path: &std::path::Path, key: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if std::fs::read_to_string(path).is_ok_and(|k| k.trim() == key) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))
            .with_context(|| format!("chmod {}", path.display()))?;
        return Ok(path.to_path_buf());
    }
    let dir = path.parent().with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".key.{}.{:?}", std::process::id(), std::thread::current().id()));
    std::fs::write(&tmp, format!("{key}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    // Root-only, as in an agent pod: a sandboxed submission must not read it.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// The file holding [`E2E_RESULT_MASTER_KEY`], for `--result-key-file`.
pub fn result_master_key_file() -> Result<PathBuf> {
    write_key_file(&e2e_dir().join("result-keys").join("master"), E2E_RESULT_MASTER_KEY)
}

/// The e2e master key.
pub fn result_master_key() -> Result<benchkite::signing::Key> {
    benchkite::signing::Key::parse(E2E_RESULT_MASTER_KEY.as_bytes()).context("the e2e result master key")
}

/// A file holding the result key of `queue` (derived from [`E2E_RESULT_MASTER_KEY`]), for
/// the `BENCHKITE_RESULT_KEY_FILE` of agents on that queue.
pub fn result_queue_key_file(queue: &str) -> Result<PathBuf> {
    let key = result_master_key()?.queue_key(queue).to_hex();
    let name = benchkite::fleet::pod::label_value(queue);
    write_key_file(&e2e_dir().join("result-keys").join(format!("queue-{name}")), &key)
}

/// What the e2e suites' jobs need allowed (see [`Operator::start_with_env`]).
pub const TEST_ALLOWANCES: &[(&str, &str)] = &[
    ("BENCHKITE_ALLOW_RAW_QUEUE", "all"),
    ("BENCHKITE_ALLOW_PIPELINE_OVERRIDE", "all"),
    ("BENCHKITE_ALLOW_BRANCH_OVERRIDE", "all"),
    ("BENCHKITE_ALLOW_SECRET_SOURCES", "all"),
    ("BENCHKITE_KERNELJOB_ENV_ALLOW", "CHAOS_*,E2E_*"),
];

/// A running controller process. Killed (SIGKILL) when dropped or when the test process
/// exits (parent-death signal), so no controller outlives its tests.
pub struct Operator {
    pid: u32,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `benchkite controller <args>` with the e2e kubeconfig, logging to
    /// `target/e2e/logs/<name>.log`.
    pub fn start(name: &str, args: &[&str]) -> Result<Operator> {
        Self::start_with_env(name, args, &[])
    }

    /// Like [`Operator::start`], with extra environment (secrets go here, never in flags).
    pub fn start_with_env(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<Operator> {
        let bin = binary()?;
        let logs = e2e_dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        // A chart's `--result-key-file` names the file mounted in its pod: here the e2e key
        // stands in when that file does not exist locally.
        let args: Vec<String> = args
            .iter()
            .map(|a| match a.strip_prefix("--result-key-file=") {
                Some(path) if !std::path::Path::new(path).exists() => {
                    Ok(format!("--result-key-file={}", result_master_key_file()?.display()))
                }
                _ => Ok(a.to_string()),
            })
            .collect::<Result<_>>()?;
        cmd.arg("controller").args(&args);
        // Parallel tests run many controllers: never the fixed default ports.
        for (flag, env) in [("--metrics-addr", "BENCHKITE_METRICS_ADDR"), ("--http-addr", "BENCHKITE_HTTP_ADDR")] {
            let given = args.iter().any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
                || envs.iter().any(|(k, _)| *k == env);
            if !given {
                cmd.arg(flag).arg("127.0.0.1:0");
            }
        }
        // Every test controller has the e2e result master key (the simulator's agents hold
        // the matching queue keys, [`crate::sim::queue_config`]) unless the test names its own.
        let keyed = args.iter().any(|a| a.starts_with("--result-key-file"))
            || envs.iter().any(|(k, _)| *k == benchkite::signing::MASTER_KEY_FILE_ENV);
        if !keyed {
            cmd.env(benchkite::signing::MASTER_KEY_FILE_ENV, result_master_key_file()?);
        }
        // The suites' jobs use raw queues, their own pipelines and branches, secret sources
        // and CHAOS_*/E2E_* env: an admin's allowance, off by default. Every controller
        // started here gets it through the environment, which `envs` and explicit flags
        // override (tests/tenancy.rs passes the defaults as flags).
        for (k, v) in TEST_ALLOWANCES {
            cmd.env(k, v);
        }
        cmd.env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", std::env::var("BENCHKITE_E2E_LOG").unwrap_or_else(|_| "info,benchkite=debug".into()))
            .envs(envs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let pid = spawn_on_keeper_thread(cmd)?;
        Ok(Operator { pid, log })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILLs the process (a crash, not a shutdown).
    pub fn kill(&self) {
        signal(self.pid, libc::SIGKILL);
    }

    /// SIGTERM: a graceful shutdown.
    pub fn terminate(&self) {
        signal(self.pid, libc::SIGTERM);
    }

    /// The log so far (for assertion messages and secret scans).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a pid we spawned; no memory is touched.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Children are spawned from one thread that lives as long as the test process, with
/// PR_SET_PDEATHSIG tied to it: when the test binary exits (even on a panic or Ctrl-C) the
/// kernel kills every controller it started. Reaping also happens there.
fn spawn_on_keeper_thread(cmd: Command) -> Result<u32> {
    type Request = (Command, mpsc::Sender<std::io::Result<u32>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            let mut children: Vec<Child> = Vec::new();
            loop {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok((mut cmd, reply)) => {
                        use std::os::unix::process::CommandExt;
                        // SAFETY: prctl in the forked child before exec; async-signal-safe.
                        unsafe {
                            cmd.pre_exec(|| {
                                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                    return Err(std::io::Error::last_os_error());
                                }
                                Ok(())
                            });
                        }
                        let result = cmd.spawn().map(|child| {
                            let pid = child.id();
                            children.push(child);
                            pid
                        });
                        let _ = reply.send(result);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
            }
        });
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper
        .lock()
        .map_err(|_| anyhow::anyhow!("keeper thread lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| anyhow::anyhow!("keeper thread is gone"))?;
    let pid = reply_rx.recv().context("keeper thread did not answer")?.context("spawning benchkite")?;
    Ok(pid)
}

/// One controller shared by all tests of a test binary (started on first use, killed when
/// the binary exits). Tests that need their own controller (crash tests) use
/// [`Operator::start`] instead.
pub async fn shared_controller(name: &str, args: &[&str]) -> Result<&'static Operator> {
    static SHARED: tokio::sync::OnceCell<Operator> = tokio::sync::OnceCell::const_new();
    let client = crate::client().await?;
    SHARED
        .get_or_try_init(|| async {
            install_crds(&client).await?;
            Operator::start(name, args)
        })
        .await
}

/// Waits until the controller at `http_addr` answers `/readyz` with 200 (caches synced), so a
/// test's clock starts when the controller can act, not while it is still starting.
pub async fn wait_ready(http_addr: &str) -> Result<()> {
    let url = format!("http://{http_addr}/readyz");
    let http = reqwest::Client::new();
    crate::wait_until(&format!("{url} ready"), crate::default_timeout(), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            Ok(match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            })
        }
    })
    .await
}
