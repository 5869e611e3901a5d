//! Tenancy on the real API server (issue 17): KernelJob authors are less trusted than the
//! admin who owns the pools. A job may name a pool of another namespace only when the pool's
//! namespace selector admits its namespace; raw overrides and env are off unless the admin
//! allows them (controller flags, namespace labels); the CRD refuses env names that anything
//! below the job reads; the chart's ValidatingAdmissionPolicy refuses overrides at create.
//!
//! The controllers here run with the tenancy defaults (`tenant_kerneljob_args`), unlike the
//! other suites' (the e2e operator helper allows everything their jobs use).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use benchkite::api::{AgentPool, KernelJob};
use benchkite_e2e::operator::{Operator, install_crds, wait_ready};
use benchkite_e2e::sim::{all_builds, queue_config, tenant_kerneljob_args};
use benchkite_e2e::{TestNamespace, client, default_timeout, kubeconfig_path, repo_root, wait_until};
use buildkite_sim::{SimHandle, Simulator};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A KernelJob spec: a tiny Python submission plus `extra` (which may remove keys with null).
fn job(name: &str, extra: Value) -> Result<KernelJob> {
    let mut spec = json!({
        "mode": "test", "lang": "py", "main": "eval.py",
        "sources": {"eval.py": "print('eval')\n", "submission.py": "def kernel(x):\n    return x\n"},
        "tests": [{"size": 64, "seed": 1}],
    });
    if let (Some(obj), Some(add)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in add {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name}, "spec": spec,
    }))?)
}

/// A pool that selects no GpuNode (no fleet runs here; the KernelJob controller reads its
/// queue and namespace selector only).
fn pool(name: &str, queue: &str) -> Result<AgentPool> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "queue": queue,
            "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": "tenancy-no-such-node"}},
            "agent": {"tokenSecretRef": {"name": "agent-token", "key": "token"}},
        },
    }))?)
}

/// A KernelJob controller of `ns` with the tenancy defaults (as flags, over the allowances
/// the e2e helper puts in every controller's environment) but `extra`, against `sim`.
async fn controller(sim: &SimHandle, ns: &str, extra: &[&str]) -> Result<Operator> {
    let http = format!("127.0.0.1:{}", free_port()?);
    let common = tenant_kerneljob_args(sim, ns, extra);
    let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--http-addr", &http, "--poll-interval-seconds", "2"]);
    let token = sim.api_token();
    let op = Operator::start_with_env(&format!("tenancy-{ns}"), &args, &[("BUILDKITE_API_TOKEN", token.as_str())])?;
    wait_ready(&http).await.with_context(|| op.log_text())?;
    Ok(op)
}

/// The job's Ready condition as `reason: message`.
fn ready(job: &KernelJob) -> Option<(String, String)> {
    let c = job.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.reason.clone(), c.message.clone()))
}

/// Waits until the job's Ready condition has `reason` and a message containing every needle.
async fn wait_refused(api: &Api<KernelJob>, name: &str, reason: &str, needles: &[&str]) -> Result<String> {
    let last = std::sync::Mutex::new(None);
    let got = wait_until(&format!("KernelJob {name} Ready=False/{reason}"), default_timeout(), || async {
        let j = api.get(name).await?;
        let r = ready(&j);
        if let Ok(mut l) = last.lock() {
            *l = r.clone();
        }
        Ok(r.filter(|(re, m)| re == reason && needles.iter().all(|n| m.contains(n))).map(|(_, m)| m))
    })
    .await;
    got.with_context(|| format!("last Ready condition: {:?}", last.lock().ok().and_then(|l| l.clone())))
}

async fn wait_built(api: &Api<KernelJob>, name: &str) -> Result<KernelJob> {
    wait_until(&format!("KernelJob {name} has a build"), default_timeout(), || async {
        let j = api.get(name).await?;
        Ok(j.status.as_ref().is_some_and(|s| s.build.is_some()).then_some(j))
    })
    .await
}

async fn label_namespace(client: &Client, ns: &str, key: &str, value: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.patch(ns, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {key: value}}})))
        .await
        .with_context(|| format!("labelling namespace {ns} {key}={value}"))?;
    Ok(())
}

#[tokio::test]
async fn a_pool_admits_other_namespaces_only_by_its_selector() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let pool_ns = TestNamespace::create(&client, "tenpool").await?;
    let job_ns = TestNamespace::create(&client, "tenjob").await?;
    let queue = format!("q-{}", job_ns.name());
    // No agents: a build that gets created stays scheduled (its existence is the point).
    let sim = Simulator::start(queue_config(&queue, 0)?).await?;
    let op = controller(&sim, job_ns.name(), &[]).await?;
    let pools: Api<AgentPool> = pool_ns.api();
    pools.create(&PostParams::default(), &pool("shared", &queue)?).await?;
    let jobs: Api<KernelJob> = job_ns.api();
    let (a, b) = (pool_ns.name(), job_ns.name());
    jobs.create(&PostParams::default(), &job("cross", json!({"pool": "shared", "poolNamespace": a}))?).await?;

    let outcome = async {
        // No selector: the pool's own namespace only.
        wait_refused(&jobs, "cross", "PoolNotAllowed", &[&format!("AgentPool {a}/shared"), "own namespace only"])
            .await?;
        // A selector that does not match: the job is told which (woken by the pool's change).
        let team = format!("kernels-{}", suffix());
        let selector =
            json!({"spec": {"buildkite": {"kernelJobs": {"namespaceSelector": {"matchLabels": {"team": team}}}}}});
        pools.patch("shared", &PatchParams::default(), &Patch::Merge(selector)).await?;
        let msg = wait_refused(
            &jobs,
            "cross",
            "PoolNotAllowed",
            &[
                &format!("matching team={team} (spec.buildkite.kernelJobs.namespaceSelector)"),
                &format!("namespace {b} does not match"),
            ],
        )
        .await?;
        eprintln!("refused: {msg}");
        let j = jobs.get("cross").await?;
        ensure!(j.status.as_ref().is_some_and(|s| s.build.is_none()), "a refused job has a build: {:?}", j.status);
        ensure!(all_builds(&sim).await?.is_empty(), "a build was created for a refused job");
        // The admin labels the job's namespace: admitted (woken by the label), built on the
        // pool's queue.
        label_namespace(&client, b, "team", &team).await?;
        let j = wait_built(&jobs, "cross").await?;
        let status = j.status.unwrap_or_default();
        ensure!(status.queue.as_deref() == Some(queue.as_str()), "built on {:?}, not the pool's queue", status.queue);
        ensure!(all_builds(&sim).await?.len() == 1, "one build");
        Ok(())
    }
    .await;
    let outcome = outcome.with_context(|| op.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n"));
    drop(op);
    outcome?;
    job_ns.delete().await?;
    pool_ns.delete().await
}

#[tokio::test]
async fn overrides_and_env_are_refused_by_the_controller_until_allowed() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "tenovr").await?;
    let queue = format!("q-{}", ns.name());
    let sim = Simulator::start(queue_config(&queue, 0)?).await?;
    // Raw queues per namespace label; everything else at its default (refused).
    let op = controller(&sim, ns.name(), &["--allow-raw-queue=labelled"]).await?;
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool("own", &queue)?).await?;
    let canary = format!("tenancy-secret-canary-{}", suffix());
    let secrets: Api<Secret> = ns.api();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "private"}, "stringData": {"submission.py": canary}}))?,
        )
        .await?;
    let jobs: Api<KernelJob> = ns.api();
    let own = json!({"pool": "own"});
    let with = |extra: Value| -> Value {
        let mut v = own.clone();
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    jobs.create(&PostParams::default(), &job("raw", json!({"queue": queue}))?).await?;
    jobs.create(&PostParams::default(), &job("pipe", with(json!({"pipeline": "mine"})))?).await?;
    jobs.create(&PostParams::default(), &job("branch", with(json!({"branch": "main", "commit": "abc123"})))?).await?;
    let secret_sources = json!({"sources": {"eval.py": "print('eval')\n"}, "sourcesFrom": [{"secret": "private"}]});
    jobs.create(&PostParams::default(), &job("secret", with(secret_sources))?).await?;
    jobs.create(&PostParams::default(), &job("env", with(json!({"env": {"MY_FLAG": "1"}})))?).await?;
    jobs.create(&PostParams::default(), &job("plain", own.clone())?).await?;

    let outcome = async {
        let ns_name = ns.name();
        let cases: [(&str, &str, Vec<String>); 5] = [
            (
                "raw",
                "OverrideNotAllowed",
                vec![
                    "spec.queue".into(),
                    "benchkite.dev/allow-raw-queue=true".into(),
                    format!("namespace {ns_name} is not"),
                ],
            ),
            ("pipe", "OverrideNotAllowed", vec!["spec.pipeline".into(), "--allow-pipeline-override=none".into()]),
            (
                "branch",
                "OverrideNotAllowed",
                vec!["spec.branch/spec.commit".into(), "--allow-branch-override=none".into()],
            ),
            (
                "secret",
                "OverrideNotAllowed",
                vec!["spec.sourcesFrom[].secret".into(), "--allow-secret-sources=none".into()],
            ),
            ("env", "EnvNotAllowed", vec!["MY_FLAG".into(), "--kerneljob-env-allow (empty)".into()]),
        ];
        for (name, reason, needles) in &cases {
            let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
            let msg = wait_refused(&jobs, name, reason, &needles).await?;
            eprintln!("{name}: {msg}");
        }
        // A job without overrides on its own pool is built meanwhile; none of the refused is.
        let plain = wait_built(&jobs, "plain").await?;
        let builds = all_builds(&sim).await?;
        ensure!(builds.len() == 1, "only the plain job has a build: {} builds", builds.len());
        ensure!(!builds.iter().any(|b| b.to_string().contains(&canary)), "the Secret reached a build");
        ensure!(
            plain.status.and_then(|s| s.queue).as_deref() == Some(queue.as_str()),
            "plain built on its pool's queue"
        );
        // The admin labels the namespace: the raw queue is allowed there (woken by the label).
        label_namespace(&client, ns_name, "benchkite.dev/allow-raw-queue", "true").await?;
        wait_built(&jobs, "raw").await?;
        // The others' labels were not set: still refused, still no build.
        for (name, reason, _) in &cases[1..] {
            let j = jobs.get(name).await?;
            ensure!(ready(&j).is_some_and(|(r, _)| r == *reason), "{name}: {:?}", ready(&j));
            ensure!(j.status.as_ref().is_some_and(|s| s.build.is_none()), "{name} has a build");
        }
        ensure!(all_builds(&sim).await?.len() == 2, "plain and raw only");
        let log = op.log_text();
        ensure!(!log.contains(&canary), "the Secret's content is in the controller's log");
        Ok(())
    }
    .await;
    let outcome = outcome.with_context(|| op.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n"));
    drop(op);
    outcome?;
    ns.delete().await
}

/// The error message of a refused create.
fn refusal(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) => Some(s.message.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn the_api_server_refuses_env_names_that_something_below_the_job_reads() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "tenenv").await?;
    let jobs: Api<KernelJob> = ns.api();
    let dry = PostParams { dry_run: true, ..Default::default() };
    let mut failures = Vec::new();
    for name in [
        "PATH",
        "path",
        "HOME",
        "BASH_ENV",
        "ENV",
        "PS4",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "GLIBC_TUNABLES",
        "GIT_SSH_COMMAND",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PERL5OPT",
        "NODE_OPTIONS",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "TORCH_CUDA_ARCH_LIST",
        "TMPDIR",
        "SSL_CERT_FILE",
        "https_proxy",
        "POPCORN_FD",
        "KERNELBOT_PAYLOAD",
        "BENCHKITE_RESULT_KEY",
        "BUILDKITE_AGENT_ACCESS_TOKEN",
    ] {
        let j = job(&format!("env-{}", suffix()), json!({"pool": "p", "env": {name: "x"}}))?;
        match jobs.create(&dry, &j).await {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(e) => match refusal(&e) {
                Some(m) if m.contains("may not set anything the agent, the shell, the dynamic loader") => {}
                _ => failures.push(format!("{name}: {e}")),
            },
        }
    }
    // Names nothing below the job reads pass the API server (the controller's allow-list
    // decides about them).
    for name in ["MY_FLAG", "EXPERIMENT", "PATHS_TRIED"] {
        let j = job(&format!("env-{}", suffix()), json!({"pool": "p", "env": {name: "x"}}))?;
        if let Err(e) = jobs.create(&dry, &j).await {
            failures.push(format!("{name}: refused: {e}"));
        }
    }
    ensure!(failures.is_empty(), "env names:\n{}", failures.join("\n"));
    ns.delete().await
}

/// The chart's admission policy, installed for one namespace: deleted by [`Policy::delete`],
/// or, if the test fails first, when dropped.
struct Policy {
    client: Client,
    name: String,
    deleted: bool,
}

async fn delete_policy(client: &Client, name: &str) -> Result<()> {
    for r in [
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
        Api::<ValidatingAdmissionPolicy>::all(client.clone()).delete(name, &DeleteParams::default()).await.map(|_| ()),
    ] {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting the admission policy {name}")),
        }
    }
    Ok(())
}

impl Policy {
    async fn delete(mut self) -> Result<()> {
        self.deleted = true;
        delete_policy(&self.client, &self.name).await
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // The test's runtime cannot be blocked on from here, and the client belongs to it:
        // delete from a fresh runtime and client.
        let name = self.name.clone();
        let outcome = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async { delete_policy(&client().await?, &name).await })
        })
        .join();
        if !matches!(outcome, Ok(Ok(()))) {
            eprintln!("warning: could not delete the admission policy {}", self.name);
        }
    }
}

fn helm() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("HELM") {
        return Ok(PathBuf::from(h));
    }
    let out = Command::new(repo_root().join("e2e/cluster/build-binaries"))
        .arg("--helm")
        .stderr(Stdio::inherit())
        .output()
        .context("running e2e/cluster/build-binaries")?;
    ensure!(out.status.success(), "e2e/cluster/build-binaries failed");
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("helm"))
}

/// Renders the chart's policy for `ns` with `set` and creates it.
async fn install_policy(client: &Client, ns: &str, set: &str) -> Result<Policy> {
    let release = format!("tenancy-{}", suffix());
    let set = format!(
        "buildkite.organization=acme,buildkite.apiToken=x,kernelJobs.watchNamespace={ns}{}{set}",
        if set.is_empty() { "" } else { "," }
    );
    let chart = repo_root().join("charts/benchkite");
    let out = Command::new(helm()?)
        .args(["template", &release])
        .arg(&chart)
        .args(["--set", &set, "--show-only", "templates/admissionpolicy.yaml"])
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .context("helm template")?;
    ensure!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    let mut policy = None;
    let mut binding = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        match v["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => policy = Some(serde_json::from_value::<ValidatingAdmissionPolicy>(v)?),
            Some("ValidatingAdmissionPolicyBinding") => {
                binding = Some(serde_json::from_value::<ValidatingAdmissionPolicyBinding>(v)?)
            }
            _ => {}
        }
    }
    let (Some(policy), Some(binding)) = (policy, binding) else { bail!("the chart rendered no policy and binding") };
    let name = policy.name_any();
    let guard = Policy { client: client.clone(), name: name.clone(), deleted: false };
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    policies.create(&PostParams::default(), &policy).await.context("creating the policy")?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .context("creating the binding")?;
    // The API server type-checks every expression against the CRD's schema.
    let warnings = wait_until("the policy's type check", default_timeout(), || async {
        let p = policies.get(&name).await?;
        let checked = p.status.as_ref().filter(|s| s.observed_generation.is_some());
        Ok(checked.map(|s| s.type_checking.as_ref().and_then(|t| t.expression_warnings.clone()).unwrap_or_default()))
    })
    .await?;
    ensure!(warnings.is_empty(), "the policy's expressions do not type-check: {warnings:?}");
    Ok(guard)
}

/// Waits until a dry-run create of `job` is refused with every needle (the policy takes
/// effect a moment after its creation) and returns the message.
async fn wait_denied(jobs: &Api<KernelJob>, job: &KernelJob, needles: &[&str]) -> Result<String> {
    let dry = PostParams { dry_run: true, ..Default::default() };
    wait_until(&format!("{} refused with {needles:?}", job.name_any()), default_timeout(), || async {
        match jobs.create(&dry, job).await {
            Ok(_) => Ok(None),
            Err(e) => {
                let m = refusal(&e).unwrap_or_else(|| e.to_string());
                if needles.iter().all(|n| m.contains(n)) { Ok(Some(m)) } else { bail!("refused otherwise: {m}") }
            }
        }
    })
    .await
}

async fn wait_admitted(jobs: &Api<KernelJob>, job: &KernelJob) -> Result<()> {
    let dry = PostParams { dry_run: true, ..Default::default() };
    wait_until(&format!("{} admitted", job.name_any()), default_timeout(), || async {
        Ok(jobs.create(&dry, job).await.ok().map(|_| ()))
    })
    .await
}

#[tokio::test]
async fn the_chart_policy_refuses_overrides_unless_allowed() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "tenvap").await?;
    let policy = install_policy(&client, ns.name(), "kernelJobs.tenancy.rawQueue=labelled").await?;
    let jobs: Api<KernelJob> = ns.api();
    let raw = job("raw", json!({"queue": "q"}))?;
    let msg = wait_denied(
        &jobs,
        &raw,
        &["spec.queue", "benchkite.dev/allow-raw-queue=true", "kernelJobs.tenancy.rawQueue=labelled"],
    )
    .await?;
    eprintln!("raw queue: {msg}");
    let denied: [(&str, Value, &[&str]); 5] = [
        ("pipe", json!({"pool": "p", "pipeline": "mine"}), &["spec.pipeline", "--allow-pipeline-override=none"]),
        (
            "branch",
            json!({"pool": "p", "branch": "main"}),
            &["spec.branch/spec.commit", "kernelJobs.tenancy.branchOverride"],
        ),
        ("commit", json!({"pool": "p", "commit": "abc"}), &["spec.branch/spec.commit"]),
        (
            "secret",
            json!({"pool": "p", "sources": null, "sourcesFrom": [{"configMap": "c"}, {"secret": "s"}]}),
            &["spec.sourcesFrom[].secret", "kernelJobs.tenancy.secretSources=none"],
        ),
        ("env", json!({"pool": "p", "env": {"MY_FLAG": "1"}}), &["spec.env", "kernelJobs.tenancy.envAllow"]),
    ];
    for (name, spec, needles) in denied {
        let msg = wait_denied(&jobs, &job(name, spec)?, needles).await?;
        eprintln!("{name}: {msg}");
    }
    // What a tenant writes passes: a pool (of any namespace: the controller decides that),
    // ConfigMap sources.
    wait_admitted(&jobs, &job("plain", json!({"pool": "p", "poolNamespace": "elsewhere"}))?).await?;
    wait_admitted(&jobs, &job("cm", json!({"pool": "p", "sources": null, "sourcesFrom": [{"configMap": "c"}]}))?)
        .await?;
    // The admin labels the namespace: raw queues are allowed there, nothing else is.
    label_namespace(&client, ns.name(), "benchkite.dev/allow-raw-queue", "true").await?;
    wait_admitted(&jobs, &raw).await?;
    wait_denied(&jobs, &job("pipe", json!({"pool": "p", "pipeline": "mine"}))?, &["spec.pipeline"]).await?;
    policy.delete().await?;
    ns.delete().await
}

#[test]
fn the_policy_follows_the_values_it_is_rendered_from() -> Result<()> {
    let render = |set: &str| -> Result<String> {
        let out = Command::new(helm()?)
            .args(["template", "t"])
            .arg(repo_root().join("charts/benchkite"))
            .args(["--set", set])
            .output()?;
        ensure!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let org = "buildkite.organization=acme,buildkite.apiToken=x";
    let default = render(org)?;
    ensure!(default.contains("kind: ValidatingAdmissionPolicy\n"), "no policy by default");
    for flag in ["--allow-raw-queue=none", "--allow-pipeline-override=none", "--allow-branch-override=none"] {
        ensure!(default.contains(flag), "the controller is not given {flag}");
    }
    let off = render(&format!("{org},kernelJobs.tenancy.admissionPolicy.enabled=false"))?;
    ensure!(!off.contains("ValidatingAdmissionPolicy"), "admissionPolicy.enabled=false still renders it");
    // Everything allowed: no refusing expression is left, and the flags say so.
    let all = render(&format!(
        "{org},kernelJobs.tenancy.rawQueue=all,kernelJobs.tenancy.pipelineOverride=all,kernelJobs.tenancy.branchOverride=all,kernelJobs.tenancy.secretSources=all,kernelJobs.tenancy.envAllow={{*}}"
    ))?;
    ensure!(!all.contains("reason: Forbidden"), "a refusal is rendered although everything is allowed");
    ensure!(all.contains("--allow-raw-queue=all") && all.contains("--kerneljob-env-allow=*"), "flags: {all}");
    // Without the KernelJob controller, no policy (nothing of this installation decides jobs).
    let fleet = render("controllers={fleet}")?;
    ensure!(!fleet.contains("ValidatingAdmissionPolicy"), "a fleet-only install renders the policy");
    Ok(())
}
