//! Hostile submissions end to end (issue 17): one KernelJob per attack of `tests/hostile/`
//! through the real controller and the Buildkite simulator, whose agents run the real
//! `benchkite run` with the sandbox required. Each job must end with the honest verdict, no
//! canary may show anywhere the platform shows things (status, Events, build env, meta-data,
//! job logs, files left in the job directories, the controller's log), and nothing of the
//! sandbox users may be left running. Needs root (skipped with a message otherwise).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::KernelJob;
use benchkite::api::kerneljob::Phase;
use benchkite_e2e::hostile::{HostileOptions, HostileRig, can_run};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// (KernelJob name, submission file, whether its tests pass, what the attack reports when
/// it ran and was refused: a line of its output in result.json).
const ATTACKS: &[(&str, &str, bool, &str)] = &[
    ("environ", "read_environ.py", true, "hostile: /proc/1/environ: refused PermissionError"),
    ("secrets", "read_secrets.py", true, "agent-token PermissionError"),
    ("tools", "replace_tools.py", true, "buildkite-agent PermissionError"),
    ("result", "write_result.py", true, "result.json PermissionError"),
    ("ptrace", "ptrace_runner.py", true, "hostile: refused parent Operation not permitted"),
    ("daemon", "daemon.py", true, "hostile: daemon pid"),
    // Killed mid-write: its own output may be lost; the job log says why.
    ("disk", "fill_disk.py", false, ""),
    ("forkbomb", "fork_bomb.py", true, "hostile: fork refused after"),
];

#[tokio::test]
async fn every_attack_is_refused_or_harmless_and_leaks_nothing() -> Result<()> {
    if let Some(why) = can_run() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let (client, rig) = HostileRig::start("hostile", HostileOptions::new(64_100)).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let paths = rig.paths(json!({}));
    for (name, file, _, _) in ATTACKS {
        api.create(&PostParams::default(), &rig.job(name, file, &paths)?).await?;
    }
    let mut texts = Vec::new();
    for (name, file, passes, _) in ATTACKS {
        let job = rig.wait_finished(name, Duration::from_secs(180)).await?;
        let s = job.status.clone().context("status")?;
        let log = rig.build_log(&job).await.unwrap_or_default();
        ensure!(s.phase == Phase::Succeeded, "{file}: {:?} {}\n{log}", s.phase, s.message);
        ensure!(s.passed == Some(*passes), "{file}: passed {:?}, want {passes}\n{log}", s.passed);
        ensure!(log.contains("sandbox: evaluated programs run as uid"), "{file} ran unsandboxed:\n{log}");
        if *name == "disk" {
            ensure!(log.contains("scratch disk use went over its limit"), "{file}: the verdict says why:\n{log}");
        }
        texts.push((format!("status of {name}"), serde_json::to_string(&s)?));
        texts.push((format!("log of {name}"), log));
    }
    // Each attack did run (and said what it got).
    let outputs: Vec<String> =
        rig.results().iter().filter_map(|r| r["runs"]["test"]["run"]["stdout"].as_str().map(str::to_string)).collect();
    for (_, file, _, said) in ATTACKS {
        ensure!(
            said.is_empty() || outputs.iter().any(|o| o.contains(said)),
            "no result shows that {file} ran and was refused ({said:?}):\n{}",
            outputs.join("\n--\n")
        );
    }
    // The planted tools never ran; nothing the sandbox forged is anywhere.
    ensure!(!rig.dir.join("hostile-marker").exists(), "a tool planted by replace_tools.py ran");
    for (source, text) in &texts {
        ensure!(!text.contains("\"forged\""), "{source} shows a forged result");
    }
    // The daemon and the fork bomb's children died with their jobs.
    let left = rig.sandbox_processes();
    ensure!(left.is_empty(), "processes of the sandbox users outlived their jobs: {left:?}");
    let leaks = rig.scan(&client, &texts).await?;
    ensure!(leaks.is_empty(), "canaries leaked:\n{}", leaks.join("\n"));
    // The scan would have seen one.
    let planted = [("control".to_string(), format!("x{}x", benchkite_e2e::hostile::CANARY_TOKEN_FILE))];
    ensure!(rig.scan(&client, &planted).await?.len() == 1, "the scan misses a planted canary");
    rig.delete().await
}
