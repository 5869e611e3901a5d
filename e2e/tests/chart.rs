//! The Helm chart (`charts/benchkite`) and `manifests/`, against the real API server of the
//! e2e cluster and the real `benchkite` binary: lint, server-side dry runs of every object,
//! install/upgrade/uninstall, values the schema must refuse, flags the binary must accept,
//! and RBAC that is enough for the controller and no more.
//!
//! helm and kubectl are the ones `e2e/cluster/build-binaries --with-helm` built. Every test uses
//! its own namespace and release name, so they run in parallel.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use benchkite::api::kerneljob::Phase;
use benchkite::api::{AgentPool, GpuNode, KernelJob};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::{Operator, binary, install_crds};
use benchkite_e2e::{TestNamespace, client, default_timeout, e2e_dir, kubeconfig_path, repo_root, wait_until};
use buildkite_sim::Simulator;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use serde_yaml::Value;

fn chart_dir() -> PathBuf {
    repo_root().join("charts").join("benchkite")
}

/// The directory holding helm and kubectl (built once, then cached by build-binaries).
fn tools() -> Result<&'static Path> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir);
    }
    let out = Command::new(repo_root().join("e2e/cluster/build-binaries"))
        .arg("--with-helm")
        .stderr(Stdio::inherit())
        .output()
        .context("running e2e/cluster/build-binaries")?;
    ensure!(out.status.success(), "e2e/cluster/build-binaries failed");
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    Ok(DIR.get_or_init(|| dir))
}

fn run(tool: &str, args: &[&str], stdin: Option<&str>, kubeconfig: &Path) -> Result<Output> {
    use std::io::Write;
    let path = tools()?.join(tool);
    let mut child = Command::new(&path)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", path.display()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Runs a tool with the admin kubeconfig; fails with its stderr unless it succeeds.
fn ok(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let out = run(tool, args, stdin, &kubeconfig_path())?;
    if !out.status.success() {
        bail!("{tool} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template <release> charts/benchkite -n <ns> <extra...>`.
fn template(release: &str, ns: &str, extra: &[&str]) -> Result<String> {
    let chart = chart_dir();
    let mut args = vec!["template", release, chart.to_str().context("chart path")?, "--namespace", ns];
    args.extend_from_slice(extra);
    ok("helm", &args, None)
}

/// The documents of a multi-document YAML stream (empty ones dropped).
fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// A unique suffix for release and node names.
fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Writes a values file for one test under target/e2e/chart/ and returns its path.
fn values_file(name: &str, values: &serde_json::Value) -> Result<PathBuf> {
    let dir = e2e_dir().join("chart");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(values)?)?;
    Ok(path)
}

/// ci/full-values.yaml with every namespace it names replaced by `ns` (objects applied to
/// the cluster must land in namespaces that exist).
fn full_values_in(ns: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(chart_dir().join("ci/full-values.yaml"))?;
    let mut values: serde_json::Value = serde_yaml::from_str(&text)?;
    values["kernelJobs"]["watchNamespace"] = json!(ns);
    values["rbac"]["secretNamespaces"] = json!([ns]);
    if let Some(pools) = values["agentPools"].as_array_mut() {
        for p in pools {
            p["namespace"] = json!(ns);
        }
    }
    // A GpuNode of its own: the dry run must not touch the fleet's.
    values["gpuNodes"][0]["name"] = json!(format!("chart-dry-run-{ns}"));
    values_file(&format!("full-{ns}"), &values)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
}

/// Server-side dry run of a YAML stream; returns the number of objects the server accepted.
fn dry_run(yaml: &str) -> Result<usize> {
    let out = ok(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "--field-manager=benchkite-e2e",
            "-f",
            "-",
        ],
        Some(yaml),
    )?;
    Ok(out.lines().filter(|l| l.contains("(server dry run)")).count())
}

#[tokio::test]
async fn lint_strict_with_default_and_full_values() -> Result<()> {
    let chart = chart_dir();
    let chart = path_str(&chart)?;
    let full = chart_dir().join("ci/full-values.yaml");
    for extra in [vec![], vec!["-f", path_str(&full)?]] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra.iter().copied());
        let out = ok("helm", &args, None)?;
        ensure!(out.contains("0 chart(s) failed"), "helm lint: {out}");
    }
    // Rendering is deterministic (manifests/install.yaml is checked for drift), but for the
    // generated result master key, which the manifests leave out (resultSigning.generate=false).
    let values = ["-f", path_str(&full)?];
    let a = template("benchkite", "benchkite-system", &values)?;
    let b = template("benchkite", "benchkite-system", &values)?;
    ensure!(a != b, "the generated result master key is the same twice: it is not random");
    let fixed = [&values[..], &["--set", "resultSigning.generate=false"]].concat();
    let a = template("benchkite", "benchkite-system", &fixed)?;
    let b = template("benchkite", "benchkite-system", &fixed)?;
    ensure!(a == b, "two renders of the same values differ");
    ensure!(!a.contains("helm.sh/resource-policy: keep"), "generate=false still renders the key Secret");
    Ok(())
}

#[tokio::test]
async fn every_rendered_object_passes_server_side_dry_run() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    install_monitoring_crds()?;
    let ns = TestNamespace::create(&client, "chart-dry").await?;
    let release = format!("dry-{}", suffix());

    // Default values, CRDs included: no monitoring objects unless asked for.
    let yaml = template(&release, ns.name(), &["--include-crds"])?;
    let docs = documents(&yaml)?;
    ensure!(
        !docs.iter().any(|d| kind_of(d) == "PrometheusRule" || kind_of(d) == "ServiceMonitor"),
        "default values render monitoring objects"
    );
    ensure!(
        !docs.iter().any(|d| d["metadata"]["labels"]["grafana_dashboard"].is_string()),
        "default values render dashboards"
    );
    ensure!(dry_run(&yaml)? == docs.len(), "not every default object was accepted");

    // Every option set (ServiceMonitor, Ingress, NetworkPolicy, AgentPools, GpuNode, ...).
    let full = full_values_in(ns.name())?;
    let yaml = template(&release, ns.name(), &["--include-crds", "-f", path_str(&full)?])?;
    let docs = documents(&yaml)?;
    let kinds: BTreeSet<&str> = docs.iter().map(kind_of).collect();
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "Ingress",
        "NetworkPolicy",
        "AgentPool",
        "GpuNode",
        "RoleBinding",
        "PodDisruptionBudget",
    ] {
        ensure!(kinds.contains(kind), "full values render no {kind}: {kinds:?}");
    }
    check_monitoring_objects(&docs, 5)?;
    ensure!(dry_run(&yaml)? == docs.len(), "not every object of the full values was accepted");

    // GPUs through DRA: the fleet ClusterRole's resource.k8s.io rules.
    let yaml = template(&release, ns.name(), &["--set", "fleet.dra.enabled=true"])?;
    let docs = documents(&yaml)?;
    ensure!(
        all_rules(&docs).iter().any(|(group, _, _)| group == "resource.k8s.io"),
        "fleet.dra.enabled renders no resource.k8s.io rule"
    );
    ensure!(dry_run(&yaml)? == docs.len(), "not every object with fleet.dra.enabled was accepted");

    // manifests/monitoring.yaml (what GitOps users apply), moved into the test namespace.
    let monitoring = std::fs::read_to_string(repo_root().join("manifests/monitoring.yaml"))?
        .replace("namespace: benchkite-system", &format!("namespace: {}", ns.name()));
    let docs = documents(&monitoring)?;
    check_monitoring_objects(&docs, 5)?;
    ensure!(docs.iter().any(|d| kind_of(d) == "ServiceMonitor"), "manifests/monitoring.yaml has no ServiceMonitor");
    ensure!(dry_run(&monitoring)? == docs.len(), "not every object of manifests/monitoring.yaml was accepted");

    // Alerts left out and labels added to every alert (its own labels win).
    let yaml = template(
        &release,
        ns.name(),
        &[
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.prometheusRule.disabledAlerts={BenchkiteSlotsNotServing,BenchkiteSlotQuarantined}",
            "--set",
            "metrics.prometheusRule.ruleLabels.team=gpu,metrics.prometheusRule.ruleLabels.severity=page",
        ],
    )?;
    let docs = documents(&yaml)?;
    let rule = docs.iter().find(|d| kind_of(d) == "PrometheusRule").context("no PrometheusRule")?;
    let alerts: Vec<&Value> = rule["spec"]["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .collect();
    let file: Value = serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("files/alerts.yaml"))?)?;
    let in_file = file["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|g| g["rules"].as_sequence().map_or(0, Vec::len))
        .sum::<usize>();
    ensure!(alerts.len() == in_file - 2, "{} alerts rendered of {in_file} with 2 disabled", alerts.len());
    for a in &alerts {
        ensure!(a["alert"] != "BenchkiteSlotsNotServing" && a["alert"] != "BenchkiteSlotQuarantined", "{a:?}");
        ensure!(a["labels"]["team"] == "gpu", "no team label on {:?}", a["alert"]);
        ensure!(a["labels"]["severity"] != "page", "ruleLabels overrode {:?}'s severity", a["alert"]);
    }
    ensure!(dry_run(&yaml)? == docs.len(), "not every object with disabled alerts was accepted");

    // manifests/ through kustomize, moved into the test namespace by an overlay.
    let overlay = e2e_dir().join("chart").join(format!("overlay-{}", ns.name()));
    std::fs::create_dir_all(&overlay)?;
    let manifests = repo_root().join("manifests");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!("namespace: {}\nresources:\n  - {}\n", ns.name(), relative(&overlay, &manifests).display()),
    )?;
    let yaml = ok("kubectl", &["kustomize", path_str(&overlay)?], None)?;
    let docs = documents(&yaml)?;
    ensure!(docs.iter().any(|d| kind_of(d) == "Deployment"), "manifests/ render no Deployment");
    ensure!(dry_run(&yaml)? == docs.len(), "not every object of manifests/ was accepted");
    std::fs::remove_dir_all(&overlay)?;
    ns.delete().await
}

/// prometheus-operator's published ServiceMonitor and PrometheusRule CRDs (the e2e cluster
/// runs no operator), from e2e/monitoring/operator-crds, installed once per cluster.
fn install_monitoring_crds() -> Result<()> {
    let out = Command::new(repo_root().join("e2e/monitoring/operator-crds"))
        .output()
        .context("running e2e/monitoring/operator-crds")?;
    ensure!(out.status.success(), "e2e/monitoring/operator-crds: {}", String::from_utf8_lossy(&out.stderr));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for kind in ["servicemonitors", "prometheusrules"] {
        let file = dir.join(format!("monitoring.coreos.com_{kind}.yaml"));
        ok("kubectl", &["apply", "--server-side", "--field-manager=benchkite-e2e", "-f", path_str(&file)?], None)?;
        ok("kubectl", &["wait", "--for=condition=Established", &format!("crd/{kind}.monitoring.coreos.com")], None)?;
    }
    Ok(())
}

/// The rendered PrometheusRule carries every group of files/alerts.yaml, and each of the
/// `dashboards` dashboard ConfigMaps carries one dashboard JSON, labelled for the sidecar.
fn check_monitoring_objects(docs: &[Value], dashboards: usize) -> Result<()> {
    let rules: Vec<&Value> = docs.iter().filter(|d| kind_of(d) == "PrometheusRule").collect();
    ensure!(rules.len() == 1, "{} PrometheusRules rendered", rules.len());
    let file: Value = serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("files/alerts.yaml"))?)?;
    ensure!(rules[0]["spec"]["groups"] == file["groups"], "the PrometheusRule's groups are not files/alerts.yaml's");
    let maps: Vec<&Value> = docs
        .iter()
        .filter(|d| kind_of(d) == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1"))
        .collect();
    ensure!(maps.len() == dashboards, "{} dashboard ConfigMaps rendered, expected {dashboards}", maps.len());
    for m in maps {
        let data = m["data"].as_mapping().ok_or_else(|| anyhow!("a dashboard ConfigMap without data"))?;
        ensure!(data.len() == 1, "a dashboard ConfigMap holds {} keys", data.len());
        for (key, text) in data {
            let text = text.as_str().ok_or_else(|| anyhow!("{key:?} is not a string"))?;
            let dashboard: serde_json::Value = serde_json::from_str(text).with_context(|| format!("{key:?}"))?;
            ensure!(
                dashboard["uid"].as_str().is_some_and(|u| u.starts_with("benchkite-")),
                "{key:?} has no benchkite uid"
            );
        }
    }
    Ok(())
}

/// `to` relative to the directory `from` (kustomize refuses absolute resource paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out: PathBuf = from[common..].iter().map(|_| "..").collect();
    out.extend(&to[common..]);
    out
}

fn container_args(deployment: &Deployment) -> Vec<String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default()
}

/// A pool that selects no node (nothing to schedule), for install tests.
fn idle_pool(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "spec": {
            "queue": format!("chart-{name}"),
            "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": "chart-no-such-node"}},
            "agent": {"tokenSecretRef": {"name": "agent-token", "key": "token"}},
        },
    })
}

#[tokio::test]
async fn install_upgrade_uninstall() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart-life").await?;
    let release = format!("life-{}", suffix());
    let chart = chart_dir();
    let chart = path_str(&chart)?;
    let fullname = format!("{release}-benchkite");

    let v1 = values_file(&release, &json!({"agentPools": [idle_pool("first")]}))?;
    ok("helm", &["install", &release, chart, "--namespace", ns.name(), "-f", path_str(&v1)?], None)?;
    // Uninstalls on failure (cluster-scoped objects outlive the namespace); a no-op after the
    // uninstall below.
    let _guard = Release { name: release.clone(), namespace: ns.name().to_string(), set: String::new() };
    let deployments: Api<Deployment> = ns.api();
    let pools: Api<AgentPool> = ns.api();
    let roles: Api<Role> = ns.api();
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let d = deployments.get(&fullname).await.context("Deployment after install")?;
    ensure!(d.spec.as_ref().and_then(|s| s.replicas) == Some(2), "default replicas are not 2");
    let args = container_args(&d);
    for want in ["controller", "--leader-elect=true", "--log-format=json", "--controllers=fleet"] {
        ensure!(args.iter().any(|a| a == want), "Deployment args lack {want}: {args:?}");
    }
    ensure!(!args.iter().any(|a| a.starts_with("--buildkite-org")), "no organization, yet {args:?}");
    roles.get(&format!("{fullname}-leader-election")).await.context("leader-election Role")?;
    cluster_roles.get(&format!("{fullname}-fleet")).await.context("fleet ClusterRole")?;
    ensure!(
        cluster_roles.get_opt(&format!("{fullname}-kerneljob")).await?.is_none(),
        "kerneljob ClusterRole without an organization"
    );
    ensure!(pools.get_opt("first").await?.is_some(), "AgentPool first not installed");

    // Upgrade: 3 replicas, pool `first` replaced by `second`, an organization with a token.
    let v2 = values_file(
        &format!("{release}-2"),
        &json!({
            "replicaCount": 3,
            "agentPools": [idle_pool("second")],
            "buildkite": {"organization": "acme", "apiToken": "e2e-not-a-token", "webhookSecret": "e2e-hook"},
            // Its admission policy then covers this namespace only: cluster-wide, it would
            // refuse the raw-queue KernelJobs of tests running beside this one.
            "kernelJobs": {"watchNamespace": ns.name()},
        }),
    )?;
    ok("helm", &["upgrade", &release, chart, "--namespace", ns.name(), "-f", path_str(&v2)?], None)?;
    let d = deployments.get(&fullname).await?;
    ensure!(d.spec.as_ref().and_then(|s| s.replicas) == Some(3), "replicas not 3 after upgrade");
    let args = container_args(&d);
    for want in [
        "--controllers=fleet,kerneljob",
        "--buildkite-org=acme",
        "--buildkite-token-file=/var/run/secrets/benchkite/buildkite/api-token",
        "--webhook-secret-file=/var/run/secrets/benchkite/buildkite/webhook-secret",
    ] {
        ensure!(args.iter().any(|a| a == want), "upgraded args lack {want}: {args:?}");
    }
    ensure!(!args.iter().any(|a| a.contains("e2e-not-a-token")), "a secret is in the args: {args:?}");
    let env = serde_json::to_string(&d.spec.as_ref().map(|s| &s.template))?;
    ensure!(!env.contains("e2e-not-a-token") && !env.contains("e2e-hook"), "a secret is in the pod template");
    let secrets: Api<Secret> = ns.api();
    secrets.get(&format!("{fullname}-buildkite")).await.context("created credentials Secret")?;
    cluster_roles.get(&format!("{fullname}-kerneljob")).await.context("kerneljob ClusterRole after upgrade")?;
    let binding = format!("validatingadmissionpolicybinding/{fullname}-kerneljob-tenancy");
    let scope =
        ok("kubectl", &["get", &binding, "-o", "jsonpath={.spec.matchResources.namespaceSelector.matchLabels}"], None)?;
    ensure!(scope.contains(ns.name()), "the tenancy policy is not limited to {}: {scope:?}", ns.name());
    ensure!(pools.get_opt("first").await?.is_none(), "AgentPool first still there after upgrade");
    ensure!(pools.get_opt("second").await?.is_some(), "AgentPool second missing after upgrade");

    ok("helm", &["uninstall", &release, "--namespace", ns.name()], None)?;
    wait_until("the release's objects to be gone", default_timeout(), || async {
        let gone = deployments.get_opt(&fullname).await?.is_none()
            && pools.get_opt("second").await?.is_none()
            && cluster_roles.get_opt(&format!("{fullname}-fleet")).await?.is_none()
            && cluster_roles.get_opt(&fullname).await?.is_none();
        Ok(gone.then_some(()))
    })
    .await?;
    // The CRDs stay (Helm never deletes crds/), so KernelJobs etc. survive an uninstall.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    ensure!(crds.get_opt("agentpools.benchkite.dev").await?.is_some(), "CRD removed by uninstall");
    ns.delete().await
}

#[tokio::test]
async fn schema_and_checks_reject_bad_values() -> Result<()> {
    // A DNS subdomain of 64 characters: longer than a DRA driver name may be.
    let too_long = format!("fleet.dra.driver={}.com", "a".repeat(60));
    // (helm arguments, substrings the error must contain)
    let cases: &[(&[&str], &[&str])] = &[
        (&["--set", "replicaCount=-1"], &["/replicaCount", "minimum"]),
        (&["--set-string", "replicaCount=two"], &["/replicaCount", "want integer"]),
        (&["--set", "replicas=2"], &["additional properties 'replicas' not allowed"]),
        (&["--set", "fleet.agentImag=x"], &["/fleet", "additional properties 'agentImag' not allowed"]),
        (&["--set", "logFormat=xml"], &["/logFormat", "'json', 'text'"]),
        (&["--set", "controllers={fleet,gpu}"], &["/controllers/1", "'fleet', 'kerneljob'"]),
        (&["--set", "image.pullPolicy=Sometimes"], &["/image/pullPolicy", "IfNotPresent"]),
        (
            &["--set", "buildkite.organization=acme"],
            &["/buildkite", "/buildkite/existingSecret", "/buildkite/apiToken"],
        ),
        (&["--set", "buildkite.existingSecret=bk,buildkite.apiToken=x"], &["/buildkite/apiToken", "maxLength"]),
        (&["--set", "buildkite.apiUrl=ftp://x"], &["/buildkite/apiUrl", "does not match pattern"]),
        (&["--set", "podDisruptionBudget.maxUnavailable=0"], &["/podDisruptionBudget/maxUnavailable"]),
        (&["--set", "agentPools[0].name=p"], &["/agentPools/0", "missing property 'spec'"]),
        (&["--set", "metrics.prometheusRule.enable=true"], &["/metrics/prometheusRule", "'enable' not allowed"]),
        (
            &["--set", "metrics.prometheusRule.enabled=true,metrics.prometheusRule.disabledAlerts={BenchkiteNope}"],
            &["BenchkiteNope is not an alert of files/alerts.yaml"],
        ),
        (&["--set", "metrics.prometheusRule.disabledAlerts={nope}"], &["/metrics/prometheusRule/disabledAlerts/0"]),
        (&["--set", "metrics.grafanaDashboards.label="], &["/metrics/grafanaDashboards/label", "minLength"]),
        (&["--set", "metrics.grafanaDashboards.label=bad label"], &["/metrics/grafanaDashboards/label", "pattern"]),
        (&["--set", "fleet.dra.driver=Not_A_Driver"], &["/fleet/dra/driver", "does not match pattern"]),
        (&["--set", "fleet.dra.enabled=true,fleet.dra.driver="], &["/fleet/dra/driver", "minLength"]),
        (&["--set", too_long.as_str()], &["/fleet/dra/driver", "maxLength"]),
        (&["--set-string", "fleet.dra.enabled=yes"], &["/fleet/dra/enabled", "want boolean"]),
        (&["--set", "fleet.dra.enable=true"], &["/fleet/dra", "additional properties 'enable' not allowed"]),
        // Checks in the templates (what a schema cannot say), also with the schema skipped.
        (&["--set", "replicaCount=3,leaderElection.enabled=false"], &["leaderElection.enabled is false"]),
        (&["--set", "controllers={kerneljob}"], &["no controller would run", "buildkite.organization"]),
        (&["--set", "extraArgs={--log-level=debug}"], &["extraArgs: --log-level is already set", "logLevel"]),
        (
            &["--skip-schema-validation", "--set", "buildkite.organization=acme"],
            &["buildkite.organization is set but there is no API token source"],
        ),
        (&["--set", "ingress.enabled=true"], &["ingress.enabled needs ingress.host"]),
    ];
    let chart = chart_dir();
    let chart = path_str(&chart)?;
    let mut failures = Vec::new();
    for (extra, want) in cases {
        let mut args = vec!["template", "bad", chart];
        args.extend_from_slice(extra);
        let out = run("helm", &args, None, &kubeconfig_path())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{extra:?} was accepted"));
        } else if let Some(missing) = want.iter().find(|w| !stderr.contains(*w)) {
            failures.push(format!("{extra:?}: error lacks {missing:?}: {stderr}"));
        }
    }
    ensure!(failures.is_empty(), "bad values not rejected as expected:\n{}", failures.join("\n"));
    Ok(())
}

/// The Deployment of a render.
fn deployment_of(yaml: &str) -> Result<Deployment> {
    let doc = documents(yaml)?.into_iter().find(|d| kind_of(d) == "Deployment").context("no Deployment rendered")?;
    Ok(serde_yaml::from_value(doc)?)
}

#[tokio::test]
async fn chart_flags_and_env_are_the_binarys() -> Result<()> {
    let bin = binary()?;
    let help = Command::new(&bin).args(["controller", "--help"]).output()?;
    ensure!(help.status.success(), "benchkite controller --help failed");
    let help = String::from_utf8(help.stdout)?;
    let src = std::fs::read_to_string(repo_root().join("src/main.rs"))? + &read_tree(&repo_root().join("src"))?;
    let full = chart_dir().join("ci/full-values.yaml");
    let renders = [
        template("flags", "benchkite-system", &[])?,
        template("flags", "benchkite-system", &["-f", path_str(&full)?])?,
        template(
            "flags",
            "benchkite-system",
            &[
                "--set",
                "buildkite.organization=acme,buildkite.apiToken=x,buildkite.pollIntervalSeconds=5,leaderElection.enabled=false,replicaCount=1",
            ],
        )?,
    ];
    for yaml in &renders {
        let d = deployment_of(yaml)?;
        let spec = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("pod spec")?;
        let c = spec.containers.first().context("container")?;
        // The binary's own parser judges the chart's arguments: clap parses (and validates
        // the values of) everything before --help, and rejects unknown or repeated flags.
        let args = c.args.clone().unwrap_or_default();
        ensure!(args.first().map(String::as_str) == Some("controller"), "first arg is not the subcommand: {args:?}");
        let out = Command::new(&bin).args(&args).arg("--help").output()?;
        ensure!(
            out.status.success(),
            "benchkite rejects the chart's arguments {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Environment the chart sets (extraEnv aside) is read by the binary: a flag's
        // [env: NAME] or a variable the source reads by name.
        for e in c.env.iter().flatten() {
            if e.name == "TZ" {
                continue; // ci/full-values.yaml's extraEnv
            }
            let quoted = format!("\"{}\"", e.name);
            ensure!(
                help.contains(&format!("[env: {}=", e.name)) || src.contains(&quoted),
                "the chart sets {} but benchkite does not read it",
                e.name
            );
        }
    }
    Ok(())
}

fn read_tree(dir: &Path) -> Result<String> {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out += &read_tree(&path)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out += &std::fs::read_to_string(&path)?;
        }
    }
    Ok(out)
}

/// A Helm release uninstalled when dropped (cluster-scoped RBAC outlives namespaces).
struct Release {
    name: String,
    namespace: String,
    /// The --set string it was installed with.
    set: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = run("helm", &["uninstall", &self.name, "--namespace", &self.namespace], None, &kubeconfig_path());
    }
}

/// A kubeconfig for the e2e cluster that authenticates with `token`.
fn token_kubeconfig(path: &Path, token: &str) -> Result<()> {
    let admin: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig_path())?)?;
    let cluster = admin["clusters"][0].clone();
    let name = cluster["name"].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "chart-sa", "user": {"token": token}}],
        "contexts": [{"name": "chart-sa", "context": {"cluster": name, "user": "chart-sa"}}],
        "current-context": "chart-sa",
    });
    std::fs::write(path, serde_yaml::to_string(&config)?)?;
    Ok(())
}

/// `kubectl auth can-i` as the chart's ServiceAccount.
fn can_i(sa: &str, args: &[&str]) -> Result<bool> {
    let mut all = vec!["auth", "can-i", "--as", sa];
    all.extend_from_slice(args);
    let out = run("kubectl", &all, None, &kubeconfig_path())?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!("kubectl auth can-i {args:?}: {answer} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// The chart installed in a test namespace without controller pods (they cannot run on
/// kwok; only the RBAC matters), and the real controller run locally with the chart's
/// arguments and a token of the chart's ServiceAccount.
struct ChartController {
    // Fields drop in order: the release (its record lives in the namespace) before the namespace.
    release: Release,
    ns: TestNamespace,
    fullname: String,
    sa: String,
    id: String,
    kubeconfig: PathBuf,
    token: String,
}

impl ChartController {
    /// Installs the chart with `set` (`NS` stands for the namespace).
    async fn install(client: &Client, prefix: &str, set: &str) -> Result<ChartController> {
        install_crds(client).await?;
        let ns = TestNamespace::create(client, prefix).await?;
        let id = suffix();
        let name = format!("{prefix}-{id}");
        let set = format!("replicaCount=0,{}", set.replace("NS", ns.name()));
        let chart = chart_dir();
        ok("helm", &["install", &name, path_str(&chart)?, "--namespace", ns.name(), "--set", &set], None)?;
        let release = Release { name: name.clone(), namespace: ns.name().to_string(), set };
        let fullname = format!("{name}-benchkite");
        let sa = format!("system:serviceaccount:{}:{fullname}", ns.name());
        let token = ok("kubectl", &["create", "token", &fullname, "--namespace", ns.name(), "--duration", "1h"], None)?;
        let kubeconfig = e2e_dir().join("chart").join(format!("{}.kubeconfig", ns.name()));
        std::fs::create_dir_all(kubeconfig.parent().context("kubeconfig dir")?)?;
        token_kubeconfig(&kubeconfig, token.trim())?;
        Ok(ChartController { ns, release, fullname, sa, id, kubeconfig, token: token.trim().to_string() })
    }

    /// Starts the controller with the rendered Deployment's arguments, `replace` swapping
    /// flag values that only make sense in the pod (addresses, mounted files).
    /// A stand-in for the controller's own Pod (kwok runs it) is created first and named in
    /// POD_NAME, so the leader labels it as in the cluster.
    async fn start(&self, replace: &[(&str, String)]) -> Result<Operator> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": self.pod_name()},
            "spec": {"containers": [{"name": "controller", "image": "example.invalid/benchkite:e2e"}]},
        }))?;
        self.ns.api::<Pod>().create(&PostParams::default(), &pod).await.context("creating the stand-in Pod")?;
        let d = deployment_of(&template(&self.release.name, self.ns.name(), &["--set", &self.release.set])?)?;
        let args: Vec<String> = container_args(&d)
            .into_iter()
            .skip(1) // `controller`: Operator::start adds it
            .map(|a| {
                let flag = a.split_once('=').map(|(f, _)| f).unwrap_or(&a);
                match replace.iter().find(|(f, _)| *f == flag) {
                    Some((f, v)) => format!("{f}={v}"),
                    None => a,
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // POD_NAME and POD_NAMESPACE as the downward API sets them.
        let pod_name = self.pod_name();
        Operator::start_with_env(
            &self.release.name,
            &args,
            &[("KUBECONFIG", path_str(&self.kubeconfig)?), ("POD_NAMESPACE", self.ns.name()), ("POD_NAME", &pod_name)],
        )
    }

    fn pod_name(&self) -> String {
        format!("controller-{}", self.id)
    }

    /// Waits until the leader has labelled its Pod for the webhook Service.
    async fn leader_labelled(&self) -> Result<()> {
        let pods: Api<Pod> = self.ns.api();
        let name = self.pod_name();
        wait_until("the leader label on the controller's Pod", default_timeout(), || async {
            let pod = pods.get(&name).await?;
            Ok((pod.labels().get("benchkite.dev/leader").map(String::as_str) == Some("true")).then_some(()))
        })
        .await
    }

    fn can(&self, args: &[&str]) -> Result<bool> {
        can_i(&self.sa, args)
    }

    /// Fails on any forbidden request in the log (or the token in it); `outcome` is what
    /// the test waited for.
    fn check_log(&self, operator: Operator, outcome: Result<()>) -> Result<()> {
        let (log, path) = (operator.log_text(), operator.log.clone());
        drop(operator);
        let short = |l: &str| l.chars().take(400).collect::<String>();
        let tail: Vec<String> = log.lines().rev().take(15).map(short).collect::<Vec<_>>().into_iter().rev().collect();
        outcome.with_context(|| format!("controller log ({}), last lines:\n{}", path.display(), tail.join("\n")))?;
        let forbidden: Vec<String> =
            log.lines().filter(|l| l.to_lowercase().contains("forbidden")).take(5).map(short).collect();
        ensure!(forbidden.is_empty(), "forbidden requests with the chart's RBAC:\n{}", forbidden.join("\n"));
        ensure!(!log.contains(&self.token), "the token is in the log");
        Ok(())
    }

    async fn delete(self) -> Result<()> {
        std::fs::remove_file(&self.kubeconfig)?;
        drop(self.release);
        self.ns.delete().await
    }
}

/// The fleet controller is cluster-wide: two at once would reconcile each other's pools
/// (and one could do the other's work). One at a time.
static ONE_CONTROLLER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Checks what the chart's ServiceAccount may and may not do with `set`, then that the
/// controller reconciles a pool (agent pods, pool and GpuNode status) without a forbidden
/// request.
async fn fleet_with_chart_rbac(prefix: &str, set: &str, read_secrets: bool) -> Result<()> {
    let _turn = ONE_CONTROLLER_AT_A_TIME.lock().await;
    let client = client().await?;
    let chart = ChartController::install(&client, prefix, set).await?;
    let ns = chart.ns.name();
    let lease = format!("leases.coordination.k8s.io/{}", chart.fullname);
    // Minimal: Secrets only when asked for, no KernelJobs (no organization) but what
    // certification reads and labels, nothing else.
    let certification = !set.contains("fleet.certification=false");
    let certifying: &[&[&str]] = &[
        &["list", "kerneljobs.benchkite.dev", "-A"],
        &["patch", "kerneljobs.benchkite.dev", "-A"],
        &["get", "configmaps", "-A"],
    ];
    for args in certifying {
        let can = chart.can(args)?;
        ensure!(can == certification, "can {args:?}: {can}, want {certification} (fleet.certification)");
    }
    // GPUs through DRA only when asked for (the fleet's only pod patch: the leader's own
    // namespace aside, agent pods are created, never patched, without it).
    let dra = set.contains("fleet.dra.enabled=true");
    let dra_calls: &[&[&str]] = &[
        &["list", "resourceslices.resource.k8s.io"],
        &["watch", "resourceslices.resource.k8s.io"],
        &["list", "resourceclaims.resource.k8s.io", "-A"],
        &["watch", "resourceclaims.resource.k8s.io", "-A"],
        &["create", "resourceclaimtemplates.resource.k8s.io", "-A"],
        &["patch", "resourceclaimtemplates.resource.k8s.io", "-A"],
        &["list", "resourceclaimtemplates.resource.k8s.io", "-A"],
        &["delete", "resourceclaimtemplates.resource.k8s.io", "-A"],
        &["get", "deviceclasses.resource.k8s.io"],
        &["patch", "pods", "-A"],
    ];
    for args in dra_calls {
        let can = chart.can(args)?;
        ensure!(can == dra, "can {args:?}: {can}, want {dra} (fleet.dra.enabled)");
    }
    let denied: &[&[&str]] = &[
        &["list", "secrets", "-n", ns],
        &["watch", "secrets", "-A"],
        &["watch", "kerneljobs.benchkite.dev", "-A"],
        &["patch", "kerneljobs.benchkite.dev", "--subresource=status", "-A"],
        &["list", "configmaps", "-A"],
        &["delete", "nodes"],
        &["patch", "nodes"],
        &["update", "pods", "-A"],
        &["create", "agentpools.benchkite.dev", "-A"],
        &["patch", "agentpools.benchkite.dev", "-A"],
        &["create", "leases.coordination.k8s.io", "-n", "default"],
        &["get", "leases.coordination.k8s.io/other-lease", "-n", ns],
        &["create", "deployments.apps", "-A"],
        &["update", &lease, "-n", ns],
        // DRA, with or without fleet.dra: claims are the scheduler's and kube-controller-
        // manager's to make, slices the driver's, classes the admin's.
        &["get", "resourceclaims.resource.k8s.io", "-A"],
        &["create", "resourceclaims.resource.k8s.io", "-A"],
        &["patch", "resourceclaims.resource.k8s.io", "-A"],
        &["delete", "resourceclaims.resource.k8s.io", "-A"],
        &["update", "resourceclaimtemplates.resource.k8s.io", "-A"],
        &["watch", "resourceclaimtemplates.resource.k8s.io", "-A"],
        &["create", "resourceslices.resource.k8s.io"],
        &["patch", "resourceslices.resource.k8s.io"],
        &["list", "deviceclasses.resource.k8s.io"],
        &["create", "deviceclasses.resource.k8s.io"],
    ];
    for args in denied {
        ensure!(!chart.can(args)?, "the ServiceAccount can {args:?}");
    }
    let allowed: &[&[&str]] = &[
        &["create", "pods", "-A"],
        &["watch", "nodes"],
        &["patch", "gpunodes.benchkite.dev", "--subresource=status"],
        &["patch", "agentpools.benchkite.dev", "--subresource=status", "-A"],
        &["create", "events.events.k8s.io", "-A"],
        // The pools' result-key Secrets: written, never read.
        &["create", "secrets", "-A"],
        &["update", "secrets", "-A"],
        &["create", "leases.coordination.k8s.io", "-n", ns],
        &["patch", &lease, "-n", ns],
    ];
    for args in allowed {
        ensure!(chart.can(args)?, "the ServiceAccount cannot {args:?}");
    }
    for where_ in [&["-n", ns][..], &["-A"][..]] {
        let args = [&["get", "secrets"][..], where_].concat();
        let can = chart.can(&args)?;
        ensure!(can == read_secrets, "can {args:?}: {can}, want {read_secrets}");
    }

    let local = "127.0.0.1:0".to_string();
    let operator = chart.start(&[("--http-addr", local.clone()), ("--metrics-addr", local)]).await?;
    let node_name = format!("{prefix}-{}", chart.id);
    // With DRA, the node's 2 GPUs are a fake driver's devices (no device plugin resource) and
    // the pool asks for them through DRA: every DRA call is made for real (the template's
    // apply, the DeviceClass check, the agents' allocations written onto their pods).
    let plugin_gpus = if dra { 0 } else { 2 };
    let _node = TestNode::create(&client, &node_name, &node_name, "32", "256Gi", plugin_gpus).await?;
    if dra {
        benchkite_e2e::dra::device_class(&client).await?;
        let devices = (0..2).map(|i| benchkite_e2e::dra::gpu(i, benchkite_e2e::dra::H100)).collect();
        benchkite_e2e::dra::publish(&client, &node_name, devices).await?;
    }
    let secrets: Api<Secret> = chart.ns.api();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-token"}, "stringData": {"token": "e2e-agent-token-not-a-secret"},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let mut pool = json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "rbac"},
        "spec": {
            "queue": format!("chart-{}", chart.id),
            "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": node_name}},
            "agent": {"image": "example.invalid/agent:e2e", "tokenSecretRef": {"name": "agent-token", "key": "token"}},
        },
    });
    if dra {
        pool["spec"]["dra"] = json!({"productName": benchkite_e2e::dra::H100});
    }
    let pool: AgentPool = serde_json::from_value(pool)?;
    let pools: Api<AgentPool> = chart.ns.api();
    pools.create(&PostParams::default(), &pool).await?;

    let pods: Api<Pod> = chart.ns.api();
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let outcome = wait_until("2 agent pods, the pool's and the GpuNode's status", default_timeout(), || async {
        let live = pods.list(&ListParams::default().labels("benchkite.dev/pool=rbac")).await?.items;
        let status = pools.get("rbac").await?.status.unwrap_or_default();
        let discovered = gpunodes.get_opt(&node_name).await?.is_some_and(|g| g.status.is_some());
        // DRA: each agent told its device (the pod patch), from its claim (the claim watch).
        let told =
            !dra || live.iter().all(|p| p.annotations().contains_key(benchkite::fleet::dra::ANNOTATION_ALLOCATION));
        Ok((live.len() == 2 && status.desired_agents == 2 && discovered && told).then_some(()))
    })
    .await;
    let outcome = match outcome {
        Ok(()) => chart.leader_labelled().await,
        e => e,
    };
    let outcome = match outcome {
        Ok(()) => secrets_as_the_controller(&chart, read_secrets).await,
        e => e,
    };
    chart.check_log(operator, outcome)?;
    chart.delete().await
}

/// With the controller's own token (not impersonation): the pool's result-key Secret it wrote
/// exists, and reading it, or any Secret, is forbidden unless `read_secrets`.
async fn secrets_as_the_controller(chart: &ChartController, read_secrets: bool) -> Result<()> {
    let name = benchkite::signing::result_key_secret_name("rbac");
    let secrets: Api<Secret> = chart.ns.api();
    wait_until("the pool's result-key Secret", default_timeout(), || async {
        Ok(secrets.get_opt(&name).await?.map(|_| ()))
    })
    .await?;
    let ns = chart.ns.name();
    let tries: &[&[&str]] =
        &[&["get", "secret", &name, "-n", ns], &["get", "secrets", "-A"], &["get", "secrets", "-n", ns]];
    for args in tries {
        let out = run("kubectl", args, None, &chart.kubeconfig)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let forbidden = !out.status.success() && stderr.contains("Forbidden");
        if read_secrets {
            ensure!(
                args.len() != 5 || out.status.success(),
                "kubectl {args:?} with the controller's token failed: {stderr}"
            );
        } else {
            ensure!(forbidden, "kubectl {args:?} with the controller's token was not forbidden: {stderr}");
            ensure!(out.stdout.is_empty(), "kubectl {args:?} printed Secrets with the controller's token");
        }
    }
    Ok(())
}

/// Default values: no Secret access at all, and the fleet still works.
#[tokio::test]
async fn default_rbac_is_enough_for_the_fleet_and_no_more() -> Result<()> {
    fleet_with_chart_rbac("chart-rbac", "rbac.create=true", false).await
}

/// rbac.readSecrets (cluster-wide): the same, with `get` on Secrets.
#[tokio::test]
async fn read_secrets_rbac_is_enough_for_the_fleet() -> Result<()> {
    fleet_with_chart_rbac("chart-sec", "rbac.readSecrets=true,fleet.certification=false", true).await
}

/// fleet.dra.enabled: the controller watches the driver's ResourceSlices and benchkite's
/// ResourceClaims with the chart's RBAC (a forbidden list or watch is in its log) and still
/// reconciles a pool; the DRA grants exist, and no more.
#[tokio::test]
async fn dra_rbac_is_enough_for_the_fleet() -> Result<()> {
    fleet_with_chart_rbac("chart-dra", "fleet.dra.enabled=true", false).await
}

/// rbac.secretNamespaces: `get` (only) in those namespaces (only).
#[tokio::test]
async fn secret_namespaces_limit_the_secret_grant() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "chart-secns").await?;
    let release = format!("secns-{}", suffix());
    let chart = chart_dir();
    let set = format!("replicaCount=0,rbac.readSecrets=true,rbac.secretNamespaces={{{}}}", ns.name());
    ok("helm", &["install", &release, path_str(&chart)?, "--namespace", ns.name(), "--set", &set], None)?;
    let _release = Release { name: release.clone(), namespace: ns.name().to_string(), set };
    let sa = format!("system:serviceaccount:{}:{release}-benchkite", ns.name());
    ensure!(can_i(&sa, &["get", "secrets", "-n", ns.name()])?, "no get on Secrets in {}", ns.name());
    ensure!(!can_i(&sa, &["list", "secrets", "-n", ns.name()])?, "readSecrets grants list");
    ensure!(!can_i(&sa, &["get", "secrets", "-n", "default"])?, "the grant reaches beyond secretNamespaces");
    drop(_release);
    ns.delete().await
}

/// The KernelJob controller alone, for one namespace (kernelJobs.watchNamespace: its rules
/// bound there only), against the Buildkite simulator: a job runs to Succeeded and, deleted,
/// goes (its build cancelled, no finalizer), without a forbidden request.
#[tokio::test]
async fn kerneljob_rbac_is_enough_in_its_namespace() -> Result<()> {
    let client = client().await?;
    let queue = format!("chart-kj-{}", suffix());
    // Agents running the real `benchkite run` (the managed pipeline's step finds it on PATH),
    // Buildkite's rate limits.
    // The token has GraphQL access: the chart's controller creates over GraphQL.
    let mut cfg = benchkite_e2e::sim::queue_config(&queue, 1)?;
    benchkite_e2e::sim::grant_graphql(&mut cfg);
    let sim = Simulator::start(cfg).await?;
    // The chart's Secret gets a placeholder; the local process reads the real token from a file.
    let set = format!(
        "controllers={{kerneljob}},kernelJobs.watchNamespace=NS,buildkite.organization={},buildkite.apiUrl={},\
         buildkite.agentApiUrl={},buildkite.graphql.url={},buildkite.apiToken=placeholder,\
         buildkite.pollIntervalSeconds=1,kernelJobs.tenancy.rawQueue=all",
        sim.organization(),
        sim.api_url(),
        sim.agent_url(),
        sim.graphql_url()
    );
    let chart = ChartController::install(&client, "chart-kj", &set).await?;
    let ns = chart.ns.name();
    let allowed: &[&[&str]] = &[
        &["watch", "kerneljobs.benchkite.dev", "-n", ns],
        &["patch", "kerneljobs.benchkite.dev", "--subresource=status", "-n", ns],
        &["delete", "kerneljobs.benchkite.dev", "-n", ns],
        &["create", "configmaps", "-n", ns],
        &["get", "configmaps", "-n", ns],
        // Result cache entries: watched (metadata, by label) and evicted.
        &["watch", "configmaps", "-n", ns],
        &["delete", "configmaps", "-n", ns],
        &["watch", "namespaces"],
    ];
    for args in allowed {
        ensure!(chart.can(args)?, "the ServiceAccount cannot {args:?}");
    }
    let denied: &[&[&str]] = &[
        &["watch", "kerneljobs.benchkite.dev", "-n", "default"],
        &["get", "configmaps", "-n", "default"],
        &["get", "secrets", "-n", ns],
        &["create", "pods", "-n", ns],
        // A KernelJob-only process watches neither Nodes nor Pods.
        &["watch", "nodes"],
        &["list", "pods", "-A"],
        &["patch", "gpunodes.benchkite.dev"],
        &["patch", "agentpools.benchkite.dev", "--subresource=status", "-n", ns],
    ];
    for args in denied {
        ensure!(!chart.can(args)?, "the ServiceAccount can {args:?}");
    }

    let token_file = e2e_dir().join("chart").join(format!("{ns}.token"));
    std::fs::write(&token_file, sim.api_token())?;
    let local = "127.0.0.1:0".to_string();
    let operator = chart
        .start(&[
            ("--http-addr", local.clone()),
            ("--metrics-addr", local),
            ("--buildkite-token-file", path_str(&token_file)?.to_string()),
        ])
        .await?;
    let task = |name: &str| -> Result<String> {
        let path = repo_root().join("tests/tasks/vectoradd").join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let job: KernelJob = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": "rbac"},
        "spec": {
            "queue": queue, "mode": "test", "lang": "py", "main": "eval.py",
            "sources": {"eval.py": task("eval.py")?, "reference.py": task("reference.py")?,
                        "submission.py": task("submission_ok.py")?},
            "tests": [{"size": 64, "seed": 1}],
            "testTimeoutSeconds": 60,
        },
    }))?;
    let jobs: Api<KernelJob> = chart.ns.api();
    jobs.create(&PostParams::default(), &job).await?;
    let outcome = async {
        chart.leader_labelled().await?;
        let phase = wait_until("KernelJob rbac finished", Duration::from_secs(120), || async {
            let j = jobs.get("rbac").await?;
            Ok(j.status.filter(|s| s.phase.is_finished()).map(|s| s.phase))
        })
        .await?;
        ensure!(phase == Phase::Succeeded, "KernelJob rbac ended {phase:?}");
        jobs.delete("rbac", &DeleteParams::default()).await?;
        wait_until("KernelJob rbac released and gone", default_timeout(), || async {
            Ok(jobs.get_opt("rbac").await?.is_none().then_some(()))
        })
        .await
    }
    .await;
    chart.check_log(operator, outcome)?;
    std::fs::remove_file(&token_file)?;
    sim.shutdown().await;
    chart.delete().await
}

/// The webhook Service selects the leader's label only when there is a leader election to
/// set it; without one (a single replica) neither that selector nor the Lease Role exists.
#[test]
fn the_webhook_service_follows_leader_election() -> Result<()> {
    for (enabled, replicas) in [(true, 2), (false, 1)] {
        let set = format!("leaderElection.enabled={enabled},replicaCount={replicas}");
        let docs = documents(&template("svc", "benchkite-system", &["--set", &set])?)?;
        let service = docs
            .iter()
            .find(|d| kind_of(d) == "Service" && d["metadata"]["name"].as_str() == Some("svc-benchkite"))
            .context("no webhook Service")?;
        let selects_leader = service["spec"]["selector"]["benchkite.dev/leader"].as_str() == Some("true");
        ensure!(selects_leader == enabled, "leader election {enabled}: Service selects the leader: {selects_leader}");
        let role = docs.iter().any(|d| kind_of(d) == "Role");
        ensure!(role == enabled, "leader election {enabled}: Lease Role rendered: {role}");
    }
    Ok(())
}

/// A rule grant: (API group, resource, verb).
type Grant = (String, String, String);

/// The grants of one rendered ClusterRole or Role document (resourceNames aside).
fn grants_of(role: &Value) -> BTreeSet<Grant> {
    let strings = |rule: &Value, key: &str| -> Vec<String> {
        rule[key].as_sequence().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().into_iter().flatten() {
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                for verb in strings(rule, "verbs") {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

/// The grants of every rendered ClusterRole and Role, by object name.
fn roles_of(docs: &[Value]) -> std::collections::BTreeMap<String, BTreeSet<Grant>> {
    docs.iter()
        .filter(|d| matches!(kind_of(d), "ClusterRole" | "Role"))
        .map(|d| (d["metadata"]["name"].as_str().unwrap_or_default().to_string(), grants_of(d)))
        .collect()
}

/// The grants of every rendered ClusterRole and Role together.
fn all_rules(docs: &[Value]) -> BTreeSet<Grant> {
    roles_of(docs).into_values().flatten().collect()
}

/// What the fleet controller's calls need with `--dra-driver` (src/controller/mod.rs and
/// src/controller/agentpool/dra.rs), and nothing else.
fn dra_grants() -> BTreeSet<Grant> {
    [
        // The driver's ResourceSlices and benchkite's ResourceClaims: watched.
        ("resource.k8s.io", "resourceslices", "list"),
        ("resource.k8s.io", "resourceslices", "watch"),
        ("resource.k8s.io", "resourceclaims", "list"),
        ("resource.k8s.io", "resourceclaims", "watch"),
        // Each pool's ResourceClaimTemplate: server-side apply, outdated ones listed and deleted.
        ("resource.k8s.io", "resourceclaimtemplates", "create"),
        ("resource.k8s.io", "resourceclaimtemplates", "patch"),
        ("resource.k8s.io", "resourceclaimtemplates", "list"),
        ("resource.k8s.io", "resourceclaimtemplates", "delete"),
        // The pool's DeviceClass exists.
        ("resource.k8s.io", "deviceclasses", "get"),
        // Agent pods annotated with their devices.
        ("", "pods", "patch"),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
    .collect()
}

/// GPUs through DRA (fleet.dra): off by default, and then no resource.k8s.io rule, no pod
/// patch in the fleet ClusterRole and no `--dra-driver`; on, the fleet ClusterRole gains
/// exactly the rules of DRA's calls (every other role unchanged) and the controller the
/// driver. Without the fleet controller no role carries them.
#[test]
fn dra_rbac_and_flag_only_with_fleet_dra_enabled() -> Result<()> {
    let render = |set: &str| -> Result<(Vec<Value>, Vec<String>)> {
        let extra: &[&str] = if set.is_empty() { &[] } else { &["--set", set] };
        let yaml = template("dra", "benchkite-system", extra)?;
        Ok((documents(&yaml)?, container_args(&deployment_of(&yaml)?)))
    };
    let fleet_role = "dra-benchkite-fleet";
    let pod_patch: Grant = (String::new(), "pods".into(), "patch".into());

    // Off: the defaults, and a driver named without enabled.
    let (off, _) = render("")?;
    for set in ["", "fleet.dra.driver=gpu.example.com", "fleet.dra.enabled=false"] {
        let (docs, args) = render(set)?;
        let dra: Vec<Grant> = all_rules(&docs).into_iter().filter(|(g, _, _)| g == "resource.k8s.io").collect();
        ensure!(dra.is_empty(), "{set:?}: resource.k8s.io rules without fleet.dra.enabled: {dra:?}");
        let fleet = roles_of(&docs).remove(fleet_role).context("no fleet ClusterRole")?;
        ensure!(!fleet.contains(&pod_patch), "{set:?}: the fleet ClusterRole patches pods without DRA");
        ensure!(!args.iter().any(|a| a.starts_with("--dra-driver")), "{set:?}: --dra-driver in {args:?}");
    }

    // On: exactly DRA's grants added, to the fleet ClusterRole only.
    let (on, args) = render("fleet.dra.enabled=true")?;
    let (mut roles_off, mut roles_on) = (roles_of(&off), roles_of(&on));
    let fleet_off = roles_off.remove(fleet_role).context("no fleet ClusterRole")?;
    let fleet_on = roles_on.remove(fleet_role).context("no fleet ClusterRole with DRA")?;
    ensure!(fleet_off.is_subset(&fleet_on), "fleet.dra.enabled removes grants: {:?}", fleet_off.difference(&fleet_on));
    let added: BTreeSet<Grant> = fleet_on.difference(&fleet_off).cloned().collect();
    ensure!(added == dra_grants(), "fleet.dra.enabled adds {added:?}, want {:?}", dra_grants());
    ensure!(roles_off == roles_on, "fleet.dra.enabled changes roles other than the fleet's");
    let flags: Vec<&String> = args.iter().filter(|a| a.starts_with("--dra-driver")).collect();
    ensure!(flags == ["--dra-driver=gpu.nvidia.com"], "fleet.dra.enabled: DRA flags {flags:?} in {args:?}");
    let (_, args) = render("fleet.dra.enabled=true,fleet.dra.driver=gpu.example.com")?;
    ensure!(args.iter().any(|a| a == "--dra-driver=gpu.example.com"), "fleet.dra.driver not passed: {args:?}");

    // The KernelJob controller alone: no fleet ClusterRole, nothing of DRA's.
    let (docs, _) =
        render("controllers={kerneljob},buildkite.organization=acme,buildkite.apiToken=x,fleet.dra.enabled=true")?;
    let roles = roles_of(&docs);
    ensure!(!roles.contains_key(fleet_role), "a fleet ClusterRole without the fleet controller");
    ensure!(
        !all_rules(&docs).iter().any(|(g, _, _)| g == "resource.k8s.io"),
        "resource.k8s.io rules without the fleet controller"
    );
    Ok(())
}
