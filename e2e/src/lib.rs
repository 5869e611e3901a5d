//! Helpers shared by the end-to-end tests.
//!
//! The tests run against the local cluster that `e2e/cluster/up` starts (a
//! real etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with
//! kwok faking the kubelets of a fleet of GPU nodes). They never skip: without
//! a cluster, [`client`] fails with a message saying how to start one.

pub mod chaos;
pub mod dra;
pub mod hostile;
pub mod jobrig;
pub mod kubelet;
pub mod nodes;
pub mod operator;
pub mod promql;
pub mod sim;
pub mod synthetic;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;

/// Label on every node of the default fleet (`default`) and on the extra
/// nodes of `e2e/cluster/up --gpu-nodes N` (`extra`).
pub const FLEET_LABEL: &str = "e2e.benchkite.dev/fleet";

/// Label on every namespace made by [`TestNamespace`].
pub const TEST_NAMESPACE_LABEL: &str = "e2e.benchkite.dev/test-namespace";

/// Default wait for things the cluster should do promptly (scheduling, kwok
/// moving a pod to Running, garbage collection). `BENCHKITE_E2E_WAIT_SECS`
/// overrides it.
/// A loopback port for a process the test starts, which binds it later. Ports come from
/// below the kernel's ephemeral range (32768–60999 here): a port found by binding port 0 goes
/// back to that range when released, and any outgoing connection may take it as its local
/// port before the process binds it (seen in CI: a controller's `--http-addr` "Address
/// already in use"). Each test process walks its own slice of 20000–32699 and hands out a
/// port only after binding and releasing it.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_700;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(997) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {LOW}-{}", LOW + SPAN - 1)
}

pub fn default_timeout() -> Duration {
    let secs = std::env::var("BENCHKITE_E2E_WAIT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    Duration::from_secs(secs)
}

/// The repository root (the workspace that holds `e2e/`).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// The directory `e2e/cluster/up` writes to: `$BENCHKITE_E2E_DIR` (relative to
/// the repo root when relative), by default `<repo>/target/e2e`.
pub fn e2e_dir() -> PathBuf {
    match std::env::var_os("BENCHKITE_E2E_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { repo_root().join(dir) }
        }
        _ => repo_root().join("target").join("e2e"),
    }
}

/// The admin kubeconfig of the e2e cluster.
pub fn kubeconfig_path() -> PathBuf {
    e2e_dir().join("kubeconfig")
}

/// A client for the e2e cluster. Fails (never skips) when the cluster is not
/// there, saying how to start it.
pub async fn client() -> Result<Client> {
    client_with(true).await
}

/// Like [`client`], without kube's automatic retries of 429/503/504 (up to 15, backing off
/// to minutes): for tests that expect a refusal, such as an eviction a
/// PodDisruptionBudget forbids (answered 429).
pub async fn client_without_retries() -> Result<Client> {
    client_with(false).await
}

async fn client_with(retries: bool) -> Result<Client> {
    let path = kubeconfig_path();
    if !path.exists() {
        bail!(
            "no e2e cluster: {} does not exist; start one with `make e2e-up` \
             (or `e2e/cluster/up`) and run the tests again",
            path.display()
        );
    }
    let kubeconfig = Kubeconfig::read_from(&path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    let mut config = config;
    config.default_retry = retries;
    let client = Client::try_from(config).context("building a kube client")?;
    client.apiserver_version().await.with_context(|| {
        format!(
            "the e2e cluster in {} does not answer; restart it with \
             `make e2e-down e2e-up`",
            path.display()
        )
    })?;
    Ok(client)
}

/// Polls `check` every 200 ms until it yields `Some(value)`, or fails after
/// `timeout` with `what` and the last error `check` returned, if any.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() >= timeout {
            return Err(match last_error {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches the object `name` until `cond` holds, for at most `timeout`.
/// Returns the object (`None` if the condition held because it is gone).
pub async fn wait_for<K>(api: &Api<K>, name: &str, timeout: Duration, cond: impl Condition<K>) -> Result<Option<K>>
where
    K: Clone + std::fmt::Debug + Send + DeserializeOwned + Resource + 'static,
    <K as Resource>::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(result) => result.with_context(|| format!("watching {kind} {name}")),
        Err(_) => bail!("timed out after {timeout:?} waiting for {kind} {name}"),
    }
}

/// A namespace with a random name for one test. Deleted by [`Self::delete`],
/// or, if the test panics first, when dropped.
pub struct TestNamespace {
    client: Client,
    name: String,
    deleted: bool,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<random>` and waits until pods can be created in
    /// it (its `default` service account exists).
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("e2e-{prefix}-{}", &suffix[..8]);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces.create(&PostParams::default(), &ns).await.with_context(|| format!("creating namespace {name}"))?;
        let this = Self { client: client.clone(), name, deleted: false };
        // The ServiceAccount admission plugin rejects pods until the
        // controller-manager has made the namespace's default account.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &this.name);
        wait_until(&format!("the default service account of {}", this.name), default_timeout(), || async {
            Ok(accounts.get_opt("default").await?.map(|_| ()))
        })
        .await?;
        Ok(this)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace and waits until it is gone, so that its pods no
    /// longer take node resources when the next test starts.
    pub async fn delete(mut self) -> Result<()> {
        self.deleted = true;
        delete_namespace(&self.client, &self.name).await?;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        wait_until(&format!("namespace {} to be gone", self.name), default_timeout(), || async {
            Ok(namespaces.get_opt(&self.name).await?.is_none().then_some(()))
        })
        .await
    }
}

async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting namespace {name}")),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // The test's runtime cannot be blocked on from here, and the client's
        // connections belong to it: delete from a fresh runtime and client.
        let name = self.name.clone();
        let outcome = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let client = client().await?;
                delete_namespace(&client, &name).await
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not delete test namespace {}: {e:#}", self.name),
            Err(_) => eprintln!("warning: deleting test namespace {} panicked", self.name),
        }
    }
}
