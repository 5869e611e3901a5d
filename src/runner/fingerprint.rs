//! The environment fingerprint of a result (see [`Fingerprint`]): the GPU of this slot as
//! `nvidia-smi` (else `rocm-smi`) reports it, its temperature before the first timed stage
//! (gathered by the system probe, see [`super::sysinfo::Probe`]) and after the last one, and
//! what the pod knows of itself from its environment. Nothing here fails the job: a missing
//! tool, a timeout or output that does not parse leaves fields empty.

use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::sysinfo::run_tool_for;
use crate::contract::Fingerprint;

/// What `nvidia-smi --query-gpu` is asked, in this order (`nvidia-smi --help-query-gpu`).
const NVIDIA_FIELDS: &str = "index,uuid,name,driver_version,clocks.applications.graphics,clocks.applications.memory,\
clocks.gr,clocks.mem,power.limit,temperature.gpu,ecc.mode.current,mig.mode.current";
/// The fields every driver knows, asked when the full query is refused (a driver that
/// dropped a field fails the whole query).
const NVIDIA_FALLBACK_FIELDS: &str = "index,uuid,name,driver_version,temperature.gpu";
/// The temperature after the run.
const NVIDIA_TEMPERATURE_FIELDS: &str = "index,uuid,temperature.gpu";
/// How long the GPU tools may take in all, before the run (after the system probe's own
/// query) and again after it: a wedged driver must neither hold up the first timed stage
/// past the probe's wait nor leave a tool running beside it.
pub(crate) const BUDGET: Duration = Duration::from_secs(4);

/// Tool calls within one deadline.
struct Deadline(Instant);

impl Deadline {
    fn run(&self, name: &str, args: &[&str]) -> Option<String> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        run_tool_for(name, args, left)
    }
}

/// Where a ROCm install records its version.
const ROCM_VERSION_FILE: &str = "/opt/rocm/.info/version";

/// The device this runner's evaluation uses, as the environment names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Device {
    /// The first entry of `CUDA_VISIBLE_DEVICES` / `HIP_VISIBLE_DEVICES` /
    /// `ROCR_VISIBLE_DEVICES`: an index or a UUID; empty when unset (device 0 is used).
    pub visible: String,
}

impl Device {
    /// From the process environment.
    pub(crate) fn from_env() -> Device {
        Device::from_lookup(|k| std::env::var(k).ok())
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Device {
        let visible = ["CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"]
            .iter()
            .find_map(|k| get(k).map(|v| v.split(',').next().unwrap_or_default().trim().to_owned()))
            .unwrap_or_default();
        Device { visible }
    }

    /// Of one row per GPU (`index`, `uuid`, …), the one the evaluation uses: the visible
    /// device by UUID or index, else the only GPU, else index 0.
    fn pick<'a>(&self, rows: &'a [Vec<String>]) -> Option<&'a Vec<String>> {
        let by = |col: usize, want: &str| rows.iter().find(|r| r.get(col).is_some_and(|v| v == want));
        if !self.visible.is_empty() {
            return if self.visible.parse::<u32>().is_ok() { by(0, &self.visible) } else { by(1, &self.visible) };
        }
        if rows.len() == 1 {
            return rows.first();
        }
        by(0, "0").or_else(|| rows.first())
    }
}

/// A value as nvidia-smi prints it, or empty for its "no value" spellings.
fn value(raw: &str) -> String {
    let v = raw.trim();
    let none = v.is_empty()
        || v.starts_with('[') && v.ends_with(']') // [N/A], [Not Supported], [Unknown Error]
        || v.eq_ignore_ascii_case("N/A")
        || v.eq_ignore_ascii_case("Not Supported");
    if none { String::new() } else { v.to_owned() }
}

/// `--format=csv,noheader,nounits` rows: each line split on commas (no field we ask for
/// holds one).
fn csv_rows(out: &str, columns: usize) -> Vec<Vec<String>> {
    out.lines().map(|l| l.split(',').map(value).collect::<Vec<_>>()).filter(|r| r.len() == columns).collect()
}

/// The GPU part of the fingerprint from `nvidia-smi --query-gpu=<NVIDIA_FIELDS>` output.
pub(crate) fn parse_nvidia_query(out: &str, device: &Device) -> Option<Fingerprint> {
    let rows = csv_rows(out, NVIDIA_FIELDS.split(',').count());
    let r = device.pick(&rows)?;
    let at = |i: usize| r.get(i).cloned().unwrap_or_default();
    Some(Fingerprint {
        gpu_uuid: at(1),
        gpu_model: at(2),
        driver_version: at(3),
        app_clock_graphics_mhz: at(4),
        app_clock_memory_mhz: at(5),
        clock_graphics_mhz: at(6),
        clock_memory_mhz: at(7),
        power_limit_w: at(8),
        temperature_before_c: at(9),
        ecc_mode: at(10),
        mig_mode: at(11),
        ..Fingerprint::default()
    })
}

/// The same from the fallback query ([`NVIDIA_FALLBACK_FIELDS`]).
pub(crate) fn parse_nvidia_fallback(out: &str, device: &Device) -> Option<Fingerprint> {
    let rows = csv_rows(out, NVIDIA_FALLBACK_FIELDS.split(',').count());
    let r = device.pick(&rows)?;
    let at = |i: usize| r.get(i).cloned().unwrap_or_default();
    Some(Fingerprint {
        gpu_uuid: at(1),
        gpu_model: at(2),
        driver_version: at(3),
        temperature_before_c: at(4),
        ..Fingerprint::default()
    })
}

/// The temperature from `--query-gpu=index,uuid,temperature.gpu`.
pub(crate) fn parse_nvidia_temperature(out: &str, device: &Device) -> Option<String> {
    let rows = csv_rows(out, 3);
    device.pick(&rows).and_then(|r| r.get(2).cloned()).filter(|t| !t.is_empty())
}

/// `CUDA Version: 12.4` from nvidia-smi's banner or `-q` header (`CUDA Version : 12.4`).
pub(crate) fn parse_cuda_version(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let (_, rest) = l.split_once("CUDA Version")?;
        let rest = rest.trim_start().strip_prefix(':')?;
        let v = rest.split_whitespace().next()?.trim_matches('|');
        (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')).then(|| v.to_owned())
    })
}

/// `rocm-smi … --json`: `{"card0": {"Card Series": …}, "system": {"Driver version": …}}`.
/// The card the evaluation uses (by visible index, else the first), its cards sorted by
/// number.
pub(crate) fn parse_rocm(out: &str, device: &Device) -> Option<Fingerprint> {
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    let obj = v.as_object()?;
    let mut cards: Vec<(u32, &serde_json::Map<String, serde_json::Value>)> = obj
        .iter()
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase().strip_prefix("card")?.parse().ok()?, v.as_object()?)))
        .collect();
    cards.sort_by_key(|(n, _)| *n);
    let card = match device.visible.parse::<usize>() {
        Ok(i) => cards.get(i)?.1,
        Err(_) => cards.first()?.1,
    };
    let field = |m: &serde_json::Map<String, serde_json::Value>, pred: &dyn Fn(&str) -> bool| {
        m.iter()
            .find(|(k, _)| pred(&k.to_ascii_lowercase()))
            .and_then(|(_, v)| match v {
                serde_json::Value::String(s) => Some(value(s)),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or_default()
    };
    // "(1700Mhz)" → "1700".
    let mhz =
        |s: String| s.trim_matches(|c| c == '(' || c == ')').trim_end_matches("Mhz").trim_end_matches("MHz").to_owned();
    let system = obj.get("system").and_then(|s| s.as_object());
    let driver = field(card, &|k| k.starts_with("driver version"));
    Some(Fingerprint {
        gpu_uuid: field(card, &|k| k == "unique id"),
        gpu_model: field(card, &|k| k == "card series"),
        driver_version: if driver.is_empty() {
            system.map(|s| field(s, &|k| k.starts_with("driver version"))).unwrap_or_default()
        } else {
            driver
        },
        clock_graphics_mhz: mhz(field(card, &|k| k.starts_with("sclk clock speed"))),
        clock_memory_mhz: mhz(field(card, &|k| k.starts_with("mclk clock speed"))),
        power_limit_w: field(card, &|k| k.starts_with("max graphics package power")),
        temperature_before_c: rocm_temperature(card),
        ..Fingerprint::default()
    })
}

/// The edge sensor, else the junction sensor, else any temperature.
fn rocm_temperature(card: &serde_json::Map<String, serde_json::Value>) -> String {
    let temps: Vec<(String, String)> = card
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("temperature"))
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), value(v.as_str()?))))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    ["edge", "junction", ""]
        .iter()
        .find_map(|s| temps.iter().find(|(k, _)| k.contains(s)).map(|(_, v)| v.clone()))
        .unwrap_or_default()
}

/// The temperature of the card from `rocm-smi --showtemp --json`.
pub(crate) fn parse_rocm_temperature(out: &str, device: &Device) -> Option<String> {
    parse_rocm(out, device).map(|f| f.temperature_before_c).filter(|t| !t.is_empty())
}

/// Which vendor tool answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tool {
    Nvidia,
    Rocm,
}

/// The GPU part of the fingerprint before the evaluation, and the tool that gave it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Before {
    pub fingerprint: Fingerprint,
    pub tool: Option<Tool>,
}

/// The GPU part before the evaluation (runs the tools; on the probe's thread): the tool of
/// the `runtime` the system probe found (`CUDA`: nvidia-smi, `ROCm`: rocm-smi), none when
/// it found no GPU, all within `budget`.
pub(crate) fn gpu_before(device: &Device, runtime: &str, budget: Duration) -> Before {
    let deadline = Deadline(Instant::now() + budget);
    let run_tool = |name: &str, args: &[&str]| deadline.run(name, args);
    let fields = format!("--query-gpu={NVIDIA_FIELDS}");
    let fallback = format!("--query-gpu={NVIDIA_FALLBACK_FIELDS}");
    let csv = "--format=csv,noheader,nounits";
    if runtime == "CUDA" {
        let nvidia = run_tool("nvidia-smi", &[&fields, csv])
            .and_then(|o| parse_nvidia_query(&o, device))
            .or_else(|| run_tool("nvidia-smi", &[&fallback, csv]).and_then(|o| parse_nvidia_fallback(&o, device)));
        let Some(mut f) = nvidia else {
            return Before::default();
        };
        f.cuda_version =
            run_tool("nvidia-smi", &["-q", "-d", "COMPUTE"]).and_then(|o| parse_cuda_version(&o)).unwrap_or_default();
        return Before { fingerprint: f, tool: Some(Tool::Nvidia) };
    }
    if runtime != "ROCm" {
        return Before::default();
    }
    let args = [
        "--showproductname",
        "--showuniqueid",
        "--showdriverversion",
        "--showclocks",
        "--showtemp",
        "--showmaxpower",
        "--json",
    ];
    if let Some(mut f) = run_tool("rocm-smi", &args).and_then(|o| parse_rocm(&o, device)) {
        f.rocm_version = std::fs::read_to_string(ROCM_VERSION_FILE)
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
            .unwrap_or_default();
        return Before { fingerprint: f, tool: Some(Tool::Rocm) };
    }
    Before::default()
}

/// The temperature once the last timed stage ended, with the tool that answered before.
pub(crate) fn temperature_after(tool: Option<Tool>, device: &Device) -> String {
    let deadline = Deadline(Instant::now() + BUDGET);
    let run_tool = |name: &str, args: &[&str]| deadline.run(name, args);
    let found = match tool {
        Some(Tool::Nvidia) => {
            let fields = format!("--query-gpu={NVIDIA_TEMPERATURE_FIELDS}");
            run_tool("nvidia-smi", &[&fields, "--format=csv,noheader,nounits"])
                .and_then(|o| parse_nvidia_temperature(&o, device))
        }
        Some(Tool::Rocm) => {
            run_tool("rocm-smi", &["--showtemp", "--json"]).and_then(|o| parse_rocm_temperature(&o, device))
        }
        None => None,
    };
    found.unwrap_or_default()
}

/// What the pod knows of itself: image digest, node, slot, certification epoch.
pub(crate) fn from_env(fp: &mut Fingerprint, get: impl Fn(&str) -> Option<String>, device: &Device) {
    let get = |k: &str| get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    fp.image_digest = get("BENCHKITE_IMAGE_DIGEST");
    fp.node = get("BENCHKITE_NODE_NAME");
    fp.certification_epoch = get("BENCHKITE_CERTIFICATION_EPOCH");
    fp.slot = Some(get("KERNELBOT_GPU_INDEX")).filter(|s| !s.is_empty()).unwrap_or_else(|| device.visible.clone());
}

/// sha256 (hex) of the harness's main file.
pub(crate) fn harness_sha256(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

#[cfg(test)]
mod tests;
