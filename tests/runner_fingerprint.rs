//! The environment fingerprint `benchkite run` puts in the signed summary
//! (`system.fingerprint`), gathered with stand-in `nvidia-smi` / `rocm-smi` scripts first on
//! PATH; and a job without any GPU tool still succeeding with empty GPU fields.

#[path = "tasks/support.rs"]
mod support;

use benchkite::contract::{self, Fingerprint};
use sha2::Digest as _;
use support::*;

/// A stand-in nvidia-smi with two GPUs: every temperature query bumps a counter in
/// $FAKE_SMI_COUNTER, so the temperature after the run differs from the one before.
const FAKE_NVIDIA_SMI: &str = include_str!("fake-gpu/nvidia-smi");

/// A stand-in rocm-smi with one card.
const FAKE_ROCM_SMI: &str = include_str!("fake-gpu/rocm-smi");

/// Runs the vector-add test with `env` (PATH included) and reads the summary the runner set
/// as meta-data.
fn run_and_read_summary(scratch: &Scratch, env: &[(&str, &str)]) -> (Run, contract::ResultSummary) {
    let md = scratch.path().join("meta-data");
    let md_s = md.to_string_lossy().into_owned();
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.push(("BUILDKITE_SIM_META_DATA_FILE", &md_s));
    let r = run_with(Some(&encode(&vectoradd("test", "ok"))), &env, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.result.success, "{}", r.result.error);
    let text = std::fs::read_to_string(&md).expect("meta-data file");
    let value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["key"] == contract::META_DATA_KEY)
        .and_then(|v| v["value"].as_str().map(str::to_owned))
        .expect("summary in meta-data");
    let summary = contract::parse_meta_data_summary(&value).expect("summary parses");
    (r, summary)
}

fn harness_hash() -> String {
    hex::encode(sha2::Sha256::digest(task_file("vectoradd/eval.py").as_bytes()))
}

fn fingerprint_of(s: &contract::ResultSummary) -> Fingerprint {
    s.system.as_ref().and_then(|s| s.fingerprint.clone()).expect("a fingerprint in the summary")
}

#[test]
fn nvidia_smi_fills_the_fingerprint_of_the_visible_gpu() {
    let tools = Scratch::new("fp-nvidia");
    tools.tool("nvidia-smi", FAKE_NVIDIA_SMI);
    let path = tools.path_with_tools();
    let counter = tools.path().join("counter").to_string_lossy().into_owned();
    let env = [
        ("PATH", path.as_str()),
        ("FAKE_SMI_COUNTER", counter.as_str()),
        ("CUDA_VISIBLE_DEVICES", "1"),
        ("BENCHKITE_IMAGE_DIGEST", "sha256:0123abcd"),
        ("BENCHKITE_NODE_NAME", "gpu-node-7"),
        ("BENCHKITE_CERTIFICATION_EPOCH", "3"),
        ("KERNELBOT_GPU_INDEX", "1"),
    ];
    let (r, s) = run_and_read_summary(&tools, &env);
    let f = fingerprint_of(&s);
    assert_eq!(f.gpu_uuid, "GPU-11111111-aaaa-bbbb-cccc-111111111111", "{f:?}");
    assert_eq!(f.gpu_model, "NVIDIA H100 80GB HBM3");
    assert_eq!(f.driver_version, "550.54.15");
    assert_eq!(f.cuda_version, "12.4");
    assert_eq!(f.rocm_version, "");
    assert_eq!((f.app_clock_graphics_mhz.as_str(), f.app_clock_memory_mhz.as_str()), ("", ""));
    assert_eq!((f.clock_graphics_mhz.as_str(), f.clock_memory_mhz.as_str()), ("1755", "2619"));
    assert_eq!(f.power_limit_w, "650.00");
    assert_eq!((f.ecc_mode.as_str(), f.mig_mode.as_str()), ("Enabled", ""));
    // Before: the first temperature query; after: the second, once the last stage ended.
    assert_eq!(f.temperature_before_c, "41");
    assert_eq!(f.temperature_after_c, "42");
    assert_eq!(f.image_digest, "sha256:0123abcd");
    assert_eq!(f.node, "gpu-node-7");
    assert_eq!(f.slot, "1");
    assert_eq!(f.certification_epoch, "3");
    assert_eq!(f.harness_sha256, harness_hash());
    // result.json stays kernelbot's format: no fingerprint there.
    assert!(!r.json.to_string().contains("fingerprint"));
    assert!(!r.json.to_string().contains("GPU-11111111"));
    assert_eq!(r.result.system.gpu, "NVIDIA H100 80GB HBM3");
}

#[test]
fn rocm_smi_fills_the_fingerprint_when_there_is_no_nvidia_smi() {
    let tools = Scratch::new("fp-rocm");
    tools.tool("rocm-smi", FAKE_ROCM_SMI);
    let path = tools.path_with_tools();
    let counter = tools.path().join("counter").to_string_lossy().into_owned();
    let env = [("PATH", path.as_str()), ("FAKE_SMI_COUNTER", counter.as_str())];
    let (_r, s) = run_and_read_summary(&tools, &env);
    let f = fingerprint_of(&s);
    assert_eq!(f.gpu_model, "AMD Instinct MI300X", "{f:?}");
    assert_eq!(f.gpu_uuid, "0x18f68e602b8a790f");
    assert_eq!(f.driver_version, "6.7.0");
    assert_eq!((f.clock_graphics_mhz.as_str(), f.clock_memory_mhz.as_str()), ("2100", "1300"));
    assert_eq!(f.power_limit_w, "750.0");
    assert_eq!(f.temperature_before_c, "31.0");
    assert_eq!(f.temperature_after_c, "32.0");
    assert_eq!(f.cuda_version, "");
    assert_eq!(f.harness_sha256, harness_hash());
}

#[test]
fn without_gpu_tools_the_job_succeeds_with_empty_gpu_fields() {
    let tools = Scratch::new("fp-none");
    // A PATH with python but no nvidia-smi or rocm-smi (the host may have them elsewhere).
    let bin = tools.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let python = which("python3").expect("python3 on PATH");
    std::os::unix::fs::symlink(&python, bin.join("python3")).expect("symlink python3");
    let path = bin.to_string_lossy().into_owned();
    let (_r, s) = run_and_read_summary(&tools, &[("PATH", path.as_str())]);
    let f = fingerprint_of(&s);
    let expected = Fingerprint { harness_sha256: harness_hash(), ..Fingerprint::default() };
    assert_eq!(f, expected, "only the harness hash is known");
}

#[test]
fn a_gpu_tool_printing_garbage_leaves_fields_empty() {
    let tools = Scratch::new("fp-garbage");
    tools.tool("nvidia-smi", "#!/bin/sh\necho 'Failed to initialize NVML: Driver/library version mismatch'\n");
    tools.tool("rocm-smi", "#!/bin/sh\necho '{not json'\nexit 0\n");
    let path = tools.path_with_tools();
    let (_r, s) = run_and_read_summary(&tools, &[("PATH", path.as_str()), ("BENCHKITE_NODE_NAME", "n1")]);
    let f = fingerprint_of(&s);
    let expected = Fingerprint { harness_sha256: harness_hash(), node: "n1".into(), ..Fingerprint::default() };
    assert_eq!(f, expected);
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_default()
}

#[test]
fn a_hanging_gpu_query_is_given_up_and_the_job_still_succeeds() {
    let tools = Scratch::new("fp-hang");
    // Answers the system probe, hangs on the fingerprint's queries (killed at its budget).
    tools.tool(
        "nvidia-smi",
        "#!/bin/sh\nif [ \"$1\" = \"--query-gpu=name\" ]; then echo 'NVIDIA H100 80GB HBM3'; exit 0; fi\nexec sleep 600\n",
    );
    let path = tools.path_with_tools();
    let (r, s) = run_and_read_summary(&tools, &[("PATH", path.as_str())]);
    assert_eq!(r.result.system.gpu, "NVIDIA H100 80GB HBM3");
    let f = fingerprint_of(&s);
    let expected = Fingerprint { harness_sha256: harness_hash(), ..Fingerprint::default() };
    assert_eq!(f, expected);
}
