//! `benchkite agent-start` (a DRA agent container's entrypoint), as the binary: it waits for
//! the downward-API file of the pod's allocation annotation, then runs the agent (here `sh`,
//! which prints what it was given) with the devices in its tags and environment.

#[path = "tasks/support.rs"]
mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use benchkite::fleet::dra::{AllocatedDevice, Allocation};
use support::*;

fn allocation() -> Allocation {
    Allocation {
        driver: "gpu.nvidia.com".into(),
        devices: vec![AllocatedDevice {
            name: "gpu-5".into(),
            uuid: Some("GPU-5a5a5a5a-0000-0000-0000-000000000000".into()),
            product_name: Some("NVIDIA H100 80GB HBM3".into()),
        }],
    }
}

const PRINT: &str = "echo \"tags=$BUILDKITE_AGENT_TAGS\"; echo \"device=$KERNELBOT_GPU_DEVICE\"; \
                     echo \"uuid=$KERNELBOT_GPU_UUID\"; echo \"slot=$KERNELBOT_GPU_INDEX\"; echo \"args=$*\"";

fn agent_start(scratch: &Scratch, wait: &str) -> std::process::Child {
    Command::new(BIN)
        .args(["agent-start", "--wait-seconds", wait, "--", "sh", "-c", PRINT, "agent", "start", "--debug"])
        .env("BENCHKITE_ALLOCATION_FILE", scratch.path().join("devices"))
        .env("BUILDKITE_AGENT_TAGS", "queue=nvidia-h100,gpu=h100,slot=2")
        .env("KERNELBOT_GPU_INDEX", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting benchkite agent-start")
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

#[test]
fn the_agent_starts_once_the_allocation_arrives_with_its_devices() {
    let s = Scratch::new("agent-start");
    let file = s.path().join("devices");
    // The kubelet mounts the file empty until the controller has written the annotation.
    std::fs::write(&file, "").unwrap();
    let started = Instant::now();
    let child = agent_start(&s, "30");
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&file, allocation().encode()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(started.elapsed() >= Duration::from_millis(1500), "it did not wait for the allocation");
    assert_eq!(
        lines(&out),
        [
            "tags=queue=nvidia-h100,gpu=h100,slot=2,gpu-device=gpu-5,gpu-uuid=GPU-5a5a5a5a-0000-0000-0000-000000000000",
            "device=gpu-5",
            "uuid=GPU-5a5a5a5a-0000-0000-0000-000000000000",
            "slot=2",
            "args=start --debug",
        ]
    );
    assert!(stderr.contains("GPUs gpu-5 allocated"), "{stderr}");
}

#[test]
fn without_an_allocation_in_time_the_agent_never_starts() {
    let s = Scratch::new("agent-start-timeout");
    let out = agent_start(&s, "1").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(benchkite::runner::agent_start::EXIT_NO_ALLOCATION));
    assert!(lines(&out).is_empty(), "the agent ran: {:?}", lines(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no GPU allocation"));
    // A file that is not an allocation fails at once, without running the agent.
    std::fs::write(s.path().join("devices"), "gpu-5").unwrap();
    let started = Instant::now();
    let out = agent_start(&s, "30").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(benchkite::runner::agent_start::EXIT_NO_ALLOCATION));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(lines(&out).is_empty());
}
