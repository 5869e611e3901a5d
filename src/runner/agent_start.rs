//! `benchkite agent-start`: the entrypoint of a DRA pool's agent container. The pod is
//! created before the scheduler allocates its GPUs, so its environment cannot name them; the
//! controller writes the allocation onto the pod once it is made, and this waits for it (a
//! downward-API file), adds the devices to the agent's tags (`gpu-device`, `gpu-uuid`) and
//! environment (`KERNELBOT_GPU_DEVICE`, `KERNELBOT_GPU_UUID`), then runs the agent in its
//! place.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::fleet::dra::Allocation;

/// Exit code when no allocation arrived in time (the pod fails; the controller replaces it).
pub const EXIT_NO_ALLOCATION: i32 = 3;

/// `benchkite agent-start [--] COMMAND...`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentStartArgs {
    /// The downward-API file of the pod's allocation annotation.
    #[arg(long, env = crate::fleet::pod::ALLOCATION_FILE_ENV, value_name = "FILE")]
    pub allocation_file: PathBuf,
    /// How long to wait for the allocation, seconds.
    #[arg(long, env = "BENCHKITE_ALLOCATION_WAIT_SECONDS", default_value_t = 600)]
    pub wait_seconds: u64,
    /// The agent to run: the image's entrypoint and its arguments (default
    /// `buildkite-agent-entrypoint start`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The agent's environment once `allocation` is known: the tags with the devices added (after
/// the managed tags, before nothing: a tag the pool sets itself is kept as it is) and the
/// `KERNELBOT_*` variables of the devices.
pub fn agent_env(allocation: &Allocation, tags: Option<&str>) -> Vec<(String, String)> {
    let mut all: Vec<String> =
        tags.unwrap_or_default().split(',').filter(|t| !t.is_empty()).map(String::from).collect();
    for tag in allocation.tags() {
        let key = tag.split('=').next().unwrap_or_default().to_string();
        if !all.iter().any(|t| t.split('=').next() == Some(key.as_str())) {
            all.push(tag);
        }
    }
    let mut env = vec![("BUILDKITE_AGENT_TAGS".to_string(), all.join(","))];
    env.extend(allocation.env());
    env
}

/// Reads the allocation file: `Ok(None)` while it is empty or absent (not written yet).
pub fn read_allocation(path: &std::path::Path) -> Result<Option<Allocation>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => Allocation::decode(&s).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Waits for the allocation, then replaces this process with the agent.
pub fn main(args: AgentStartArgs) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
    let allocation = loop {
        match read_allocation(&args.allocation_file) {
            Ok(Some(a)) => break a,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Ok(None) => {
                eprintln!(
                    "benchkite agent-start: no GPU allocation in {} after {}s (the controller writes it once the \
                     scheduler has allocated the pod's claim)",
                    args.allocation_file.display(),
                    args.wait_seconds
                );
                return EXIT_NO_ALLOCATION;
            }
            Err(e) => {
                eprintln!("benchkite agent-start: {e}");
                return EXIT_NO_ALLOCATION;
            }
        }
    };
    let tags = std::env::var("BUILDKITE_AGENT_TAGS").ok();
    let env = agent_env(&allocation, tags.as_deref());
    let command = if args.command.is_empty() {
        vec!["buildkite-agent-entrypoint".to_string(), "start".to_string()]
    } else {
        args.command
    };
    let names: Vec<&str> = allocation.devices.iter().map(|d| d.name.as_str()).collect();
    eprintln!("benchkite agent-start: GPUs {} allocated; starting {}", names.join(", "), command.join(" "));
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]).envs(env);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let err = cmd.exec();
        eprintln!("benchkite agent-start: running {}: {err}", command[0]);
        127
    }
    #[cfg(not(unix))]
    match cmd.status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(err) => {
            eprintln!("benchkite agent-start: running {}: {err}", command[0]);
            127
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::dra::AllocatedDevice;

    fn allocation(devices: &[(&str, Option<&str>)]) -> Allocation {
        Allocation {
            driver: "gpu.nvidia.com".into(),
            devices: devices
                .iter()
                .map(|(n, u)| AllocatedDevice {
                    name: n.to_string(),
                    uuid: u.map(String::from),
                    product_name: Some("NVIDIA H100 80GB HBM3".into()),
                })
                .collect(),
        }
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn one_device_adds_its_name_and_uuid_to_tags_and_env() {
        let env = agent_env(&allocation(&[("gpu-3", Some("GPU-abc"))]), Some("queue=q,gpu=h100,slot=0"));
        assert_eq!(
            get(&env, "BUILDKITE_AGENT_TAGS"),
            Some("queue=q,gpu=h100,slot=0,gpu-device=gpu-3,gpu-uuid=GPU-abc")
        );
        assert_eq!(get(&env, "KERNELBOT_GPU_DEVICE"), Some("gpu-3"));
        assert_eq!(get(&env, "KERNELBOT_GPU_UUID"), Some("GPU-abc"));
    }

    #[test]
    fn several_devices_are_joined_without_breaking_the_tag_list() {
        let env = agent_env(&allocation(&[("gpu-3", Some("GPU-a")), ("gpu-4", Some("GPU-b"))]), Some("queue=q"));
        assert_eq!(get(&env, "BUILDKITE_AGENT_TAGS"), Some("queue=q,gpu-device=gpu-3+gpu-4,gpu-uuid=GPU-a+GPU-b"));
        assert_eq!(get(&env, "KERNELBOT_GPU_DEVICE"), Some("gpu-3,gpu-4"));
        assert_eq!(get(&env, "KERNELBOT_GPU_UUID"), Some("GPU-a,GPU-b"));
    }

    #[test]
    fn a_device_without_uuid_gives_no_uuid_and_a_pools_own_tag_wins() {
        let env = agent_env(&allocation(&[("gpu-1", None)]), Some("queue=q,gpu-device=mine"));
        assert_eq!(get(&env, "BUILDKITE_AGENT_TAGS"), Some("queue=q,gpu-device=mine"));
        assert_eq!(get(&env, "KERNELBOT_GPU_UUID"), None);
        let env = agent_env(&allocation(&[("gpu-1", None)]), None);
        assert_eq!(get(&env, "BUILDKITE_AGENT_TAGS"), Some("gpu-device=gpu-1"));
    }

    #[test]
    fn a_device_name_cannot_inject_tags() {
        let env = agent_env(&allocation(&[("gpu-1,queue=evil", Some("GPU=x"))]), Some("queue=q"));
        assert_eq!(get(&env, "BUILDKITE_AGENT_TAGS"), Some("queue=q,gpu-device=gpu-1_queue_evil,gpu-uuid=GPU_x"));
    }

    #[test]
    fn the_file_is_waited_for_until_it_holds_an_allocation() {
        let dir = std::env::temp_dir().join(format!("benchkite-agent-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("devices");
        let _ = std::fs::remove_file(&path);
        assert_eq!(read_allocation(&path), Ok(None), "absent: not written yet");
        std::fs::write(&path, "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_allocation(&path), Ok(None), "empty: the annotation is not there yet");
        std::fs::write(&path, "{\"driver\":\"d\",\"devices\":[]}").unwrap_or_else(|e| panic!("{e}"));
        assert!(read_allocation(&path).is_err(), "an allocation of nothing is an error");
        std::fs::write(&path, "not json").unwrap_or_else(|e| panic!("{e}"));
        assert!(read_allocation(&path).is_err());
        let a = allocation(&[("gpu-2", Some("GPU-z"))]);
        std::fs::write(&path, a.encode()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_allocation(&path), Ok(Some(a)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
