//! Issue 18 acceptance, on the local cluster: agent pods of a certifying pool run their
//! `benchkite certify` init container (through the e2e kubelet, `e2e/src/kubelet.rs`) on
//! simulated GPU slots with known distortions (`buildkite_sim::gpu`), the fleet controller
//! records each slot's certification on its GpuNode, KernelJobs run on certified slots only,
//! and a slot whose canary drifts is quarantined, drained, re-certified, with the results it
//! measured since its last good canary marked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::certification::{SUSPECT_LABEL, states};
use benchkite::api::kerneljob::Phase;
use benchkite::api::{GpuNode, KernelJob};
use benchkite_e2e::jobrig::{JobRig, RigOptions};
use benchkite_e2e::kubelet::Kubelet;
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::install_crds;
use benchkite_e2e::synthetic::config;
use benchkite_e2e::{TestNamespace, client, wait_until};
use buildkite_sim::gpu::GpuProfile;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

/// One fleet controller at a time: each manages every pool of the cluster.
static ONE_FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Rig {
    ns: TestNamespace,
    ctl: JobRig,
    kubelet: Kubelet,
    node: String,
    _nodes: TestNode,
}

/// A node with `gpus` simulated GPUs (`profiles` by slot), a fleet + KernelJob controller, a
/// certifying pool on the node, and the kubelet running its pods.
async fn rig(prefix: &str, gpus: u32, profiles: BTreeMap<u32, GpuProfile>, canary: Value) -> Result<(Client, Rig)> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    let id = ns.name().to_string();
    let node = format!("{id}-gpu");
    let nodes = TestNode::create(&client, &node, &id, "64", "256Gi", gpus).await?;
    let queue = format!("q-{id}");
    let opts = RigOptions { args: vec!["--poll-interval-seconds".into(), "1".into()], ..Default::default() };
    let ctl = JobRig::start(&ns, "certify", benchkite_e2e::sim::queue_config(&queue, 0)?, opts).await?;
    let spec = json!({"certification": {"requireCertified": true, "canary": canary}});
    let kubelet =
        benchkite_e2e::synthetic::certifying_pool(&client, &ns, &ctl.sim, &node, &queue, profiles, spec).await?;
    Ok((client, Rig { ns, ctl, kubelet, node, _nodes: nodes }))
}

fn job(name: &str, kernel: &str) -> Result<KernelJob> {
    let c = config(kernel)?;
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name},
        "spec": {
            "pool": "p", "mode": "leaderboard", "lang": "py", "main": "eval.py", "sources": c["sources"],
            "tests": c["tests"], "benchmarks": c["benchmarks"], "rankingBy": "mean",
            "testTimeoutSeconds": 60, "benchmarkTimeoutSeconds": 60, "rankedTimeoutSeconds": 60,
        },
    }))?)
}

async fn finished(api: &Api<KernelJob>, name: &str) -> Result<KernelJob> {
    wait_until(&format!("KernelJob {name} finished"), Duration::from_secs(120), || async {
        let j = api.get(name).await?;
        Ok(j.status.as_ref().is_some_and(|s| s.phase.is_finished()).then_some(j))
    })
    .await
}

fn slot_of(j: &KernelJob) -> Option<String> {
    Some(j.status.as_ref()?.result.as_ref()?.system.as_ref()?.fingerprint.as_ref()?.slot.clone())
}

async fn ledger(client: &Client, node: &str) -> Result<benchkite::api::certification::NodeCertification> {
    let gns: Api<GpuNode> = Api::all(client.clone());
    Ok(gns.get(node).await?.status.and_then(|s| s.certification).unwrap_or_default())
}

#[tokio::test]
async fn a_distorted_slot_fails_certification_and_ranked_jobs_run_on_certified_slots_only() -> Result<()> {
    let _one = ONE_FLEET.lock().await;
    // Slot 2 flips the order of the two close kernels (k_mid_a 10 % faster, k_mid_b 10 % slower).
    let flip = GpuProfile {
        kernel_factors: [("k_mid_a".to_string(), 0.9), ("k_mid_b".to_string(), 1.1)].into(),
        ..Default::default()
    };
    let (client, rig) = rig("certify", 4, [(2, flip)].into(), json!({"everyEvaluations": 100})).await?;
    let cert = wait_until("slots 0, 1, 3 certified and slot 2 failed", Duration::from_secs(120), || async {
        let c = ledger(&client, &rig.node).await?;
        Ok((c.certified == 3 && c.failed == 1).then_some(c))
    })
    .await
    .with_context(|| format!("{:#?}\n{}", rig.kubelet.agents(), rig.ctl.op.log_text()))?;
    ensure!(cert.summary == "3/4", "{cert:?}");
    let failed = cert.slots.iter().find(|s| s.slot == "2").context("slot 2")?;
    ensure!(failed.state == states::FAILED && failed.epoch.is_none(), "{failed:?}");
    let figures = failed.figures.clone().context("figures of the failed slot")?;
    ensure!(!figures.passed && figures.kendall_tau.is_some_and(|t| t < 0.96), "{figures:?}");
    ensure!(failed.times["k-mid-a"] < failed.times["k-mid-b"], "the flip is in its times: {:?}", failed.times);
    ensure!(cert.min_kendall_tau == figures.kendall_tau, "{cert:?}");
    for s in cert.slots.iter().filter(|s| s.slot != "2") {
        ensure!(s.state == states::CERTIFIED && s.epoch.is_some(), "{s:?}");
        ensure!(s.figures.as_ref().is_some_and(|f| f.passed && f.kendall_tau == Some(1.0)), "{s:?}");
    }
    // The failed slot's init container exited non-zero: its agent never started.
    let runs = rig.kubelet.agents();
    let slot2 = runs.values().find(|r| r.slot.as_deref() == Some("2")).context("slot 2's pod")?;
    ensure!(slot2.agent.is_none() && slot2.init.first().is_some_and(|i| i.exit_code == 3), "{slot2:?}");
    ensure!(runs.values().filter(|r| r.agent.is_some()).count() == 3, "{runs:#?}");
    // An Event on the GpuNode carries the figures.
    let events: Api<CoreEvent> = Api::all(client.clone());
    let evs = events.list(&ListParams::default().fields(&format!("involvedObject.name={}", rig.node))).await?;
    ensure!(
        evs.items.iter().any(|e| e.reason.as_deref() == Some("SlotCertificationFailed")
            && e.message.as_deref().is_some_and(|m| m.contains("Kendall τ"))),
        "no SlotCertificationFailed event: {:?}",
        evs.items.iter().map(|e| (&e.reason, &e.message)).collect::<Vec<_>>()
    );
    // Ranked KernelJobs land on certified slots only, and carry their slot's epoch.
    let jobs: Api<KernelJob> = rig.ns.api();
    let n = 6;
    for i in 0..n {
        jobs.create(&PostParams::default(), &job(&format!("lb-{i}"), "k_fast")?).await?;
    }
    let mut slots = BTreeSet::new();
    for i in 0..n {
        let j = finished(&jobs, &format!("lb-{i}")).await?;
        let s = j.status.clone().context("status")?;
        ensure!(s.phase == Phase::Succeeded, "lb-{i}: {:?} {}", s.phase, s.message);
        let fp = s.result.as_ref().and_then(|r| r.system.as_ref()).and_then(|y| y.fingerprint.clone()).context("fp")?;
        let epoch = cert.slots.iter().find(|x| x.slot == fp.slot).and_then(|x| x.epoch.clone());
        ensure!(fp.node == rig.node && epoch.as_deref() == Some(fp.certification_epoch.as_str()), "{fp:?} {epoch:?}");
        slots.insert(fp.slot);
    }
    ensure!(!slots.contains("2"), "a ranked job ran on the failed slot: {slots:?}");
    // `kubectl get gpunodes -o wide` shows the figures.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd = crds.get("gpunodes.benchkite.dev").await?;
    let columns: Vec<(String, Option<i32>)> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.json_path.clone(), c.priority))
        .collect();
    for path in
        [".status.certification.summary", ".status.certification.minKendallTau", ".status.certification.quarantined"]
    {
        ensure!(columns.iter().any(|(p, prio)| p == path && *prio == Some(1)), "-o wide lacks {path}: {columns:?}");
    }
    // A driver update on the node: the certified slots drain and certify again.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let labels = json!({"metadata": {"labels": {
        "nvidia.com/cuda.driver.major": "570", "nvidia.com/cuda.driver.minor": "133", "nvidia.com/cuda.driver.rev": "20"}}});
    nodes.patch(&rig.node, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&labels)).await?;
    let again =
        wait_until("the certified slots certified again for the new driver", Duration::from_secs(120), || async {
            let c = ledger(&client, &rig.node).await?;
            let done = c
                .slots
                .iter()
                .filter(|s| s.slot != "2")
                .all(|s| s.state == states::CERTIFIED && s.node_driver == "570.133.20" && s.epoch.is_some());
            Ok(done.then_some(c))
        })
        .await
        .with_context(|| rig.ctl.op.log_text())?;
    for s in again.slots.iter().filter(|s| s.slot != "2") {
        let before = cert.slots.iter().find(|b| b.slot == s.slot).and_then(|b| b.epoch.clone());
        ensure!(
            s.epoch != before
                || s.pod_uid
                    != cert.slots.iter().find(|b| b.slot == s.slot).map(|b| b.pod_uid.clone()).unwrap_or_default(),
            "slot {} was not certified again: {s:?}",
            s.slot
        );
    }
    rig.kubelet.stop().await;
    rig.ns.delete().await
}

#[tokio::test]
async fn a_drifting_slot_is_quarantined_recertified_and_its_results_marked() -> Result<()> {
    let _one = ONE_FLEET.lock().await;
    // Slot 1 slows down by 30 % per job from its fourth job on; the canary runs after every
    // evaluation; two outliers in a row quarantine.
    let drift = GpuProfile { drift_after_jobs: Some(3), drift_per_job: 0.3, ..Default::default() };
    let canary = json!({"everyEvaluations": 1, "everyMinutes": 0, "drift": {"minHistory": 2, "consecutive": 2}});
    let (client, rig) = rig("drift", 2, [(1, drift)].into(), canary).await?;
    wait_until("both slots certified", Duration::from_secs(120), || async {
        Ok((ledger(&client, &rig.node).await?.certified == 2).then_some(()))
    })
    .await
    .with_context(|| rig.ctl.op.log_text())?;
    let slot1_pod = |k: &Kubelet| k.agents().values().find(|r| r.slot.as_deref() == Some("1")).map(|r| r.uid.clone());
    let first_pod = slot1_pod(&rig.kubelet).context("slot 1's pod")?;
    let jobs: Api<KernelJob> = rig.ns.api();
    let mut ran: Vec<(String, String)> = Vec::new();
    let mut quarantined = None;
    // Rounds of two jobs at once, so that both slots take one each (an idle agent takes the
    // next job: one at a time, the first slot would take them all).
    for round in 0..12 {
        let names = [format!("j-{round}-a"), format!("j-{round}-b")];
        for name in &names {
            jobs.create(&PostParams::default(), &job(name, "k_fast")?).await?;
        }
        for name in &names {
            let j = finished(&jobs, name).await?;
            ensure!(j.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded), "{name}: {:?}", j.status);
            ran.push((name.clone(), slot_of(&j).unwrap_or_default()));
            // The manager records canaries every 2 s: give it the time to see this one.
            wait_until(&format!("{name}'s canary recorded"), Duration::from_secs(30), || async {
                let j = jobs.get(name).await?;
                Ok((j.labels().get("benchkite.dev/canary").map(String::as_str) == Some("recorded")).then_some(()))
            })
            .await?;
        }
        let c = ledger(&client, &rig.node).await?;
        if let Some(s) = c.slots.iter().find(|s| s.state == states::QUARANTINED) {
            quarantined = Some(s.clone());
            break;
        }
    }
    let q = quarantined.with_context(|| format!("no quarantine after {ran:?}\n{}", rig.ctl.op.log_text()))?;
    ensure!(q.slot == "1", "the drifting slot: {q:?}");
    let on_slot1: Vec<&String> = ran.iter().filter(|(_, s)| s == "1").map(|(n, _)| n).collect();
    // Its jobs 0..2 were clean (3 good canaries: min history 2, then one more judged good),
    // the 4th drifted (an outlier), the 5th quarantined: within the configured 2 canaries.
    ensure!(on_slot1.len() == 5, "slot 1 ran {on_slot1:?} before its quarantine");
    let quarantine = q.quarantine.clone().context("quarantine record")?;
    ensure!(quarantine.message.contains("Own"), "{quarantine:?}");
    // The results measured on it since its last good canary are marked; the rest are not.
    let suspect: BTreeSet<String> = wait_until("the suspect results marked", Duration::from_secs(30), || async {
        let marked: BTreeSet<String> = jobs
            .list(&ListParams::default().labels(&format!("{SUSPECT_LABEL}=drift")))
            .await?
            .items
            .iter()
            .map(|j| j.name_any())
            .collect();
        Ok((marked.len() >= 2).then_some(marked))
    })
    .await?;
    let want: BTreeSet<String> = on_slot1[3..].iter().map(|s| s.to_string()).collect();
    ensure!(suspect == want, "suspect {suspect:?}, want {want:?} (slot 1 ran {on_slot1:?})");
    // Drained and replaced: the new pod certifies again, and the slot serves again.
    let back = wait_until("slot 1 certified again", Duration::from_secs(120), || async {
        let c = ledger(&client, &rig.node).await?;
        Ok(c.slots.iter().find(|s| s.slot == "1" && s.state == states::CERTIFIED).cloned())
    })
    .await
    .with_context(|| rig.ctl.op.log_text())?;
    ensure!(back.epoch.is_some() && back.quarantine.is_none() && back.canary.is_none(), "{back:?}");
    ensure!(slot1_pod(&rig.kubelet).is_some_and(|uid| uid != first_pod), "slot 1 certified again in a new pod");
    rig.kubelet.stop().await;
    rig.ns.delete().await
}
