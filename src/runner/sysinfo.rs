//! What the machine is: GPU name and count (`nvidia-smi`, else `rocm-smi`), CPU model
//! (`/proc/cpuinfo`), platform and host name (`uname`), torch version (read from the
//! installed package, without importing it). Nothing here fails: a missing tool leaves its
//! field empty.
//!
//! The probe runs on a thread beside the evaluation (the runner joins it before the first
//! timed stage, so `nvidia-smi` never runs during a benchmark). It also takes the GPU part of
//! the environment fingerprint (see [`super::fingerprint`]), temperature before the run
//! included.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::fingerprint::{self, Before, Device};
use super::process::{self, Ending, Spec};
use crate::contract::SystemInfo;

/// How long a GPU tool may take before it is killed and ignored.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// A probe running on its own thread.
pub(crate) struct Probe {
    rx: mpsc::Receiver<(SystemInfo, Before)>,
    done: Option<(SystemInfo, Before)>,
}

impl Probe {
    /// Starts probing; `gpu` false skips the GPU tools.
    pub(crate) fn start(python: String, gpu: bool) -> Probe {
        // Found now, before any submitted code runs (the probe may still be running when the
        // sandboxed programs start).
        GPU_TOOLS.get_or_init(|| GPU_TOOL_NAMES.map(|n| (n, process::which(n))).to_vec());
        let (tx, rx) = mpsc::channel();
        let python_for_thread = python.clone();
        let device = Device::from_env();
        let both = move |python: &str| {
            let info = probe(python, gpu);
            // Only the tool that just answered, within a budget of its own: the probe must be
            // done before the first timed stage (see `PROBE_WAIT`).
            let before = fingerprint::gpu_before(&device, &info.runtime, fingerprint::BUDGET);
            (info, before)
        };
        let spawned = std::thread::Builder::new().name("sysinfo".into()).spawn({
            let both = both.clone();
            move || {
                let _ = tx.send(both(&python_for_thread));
            }
        });
        match spawned {
            Ok(_) => Probe { rx, done: None },
            // No thread: probe inline (slower start, same answer).
            Err(_) => Probe { rx, done: Some(both(&python)) },
        }
    }

    /// The answer, waiting at most `limit` for it (defaults when it does not come).
    pub(crate) fn get(&mut self, limit: Duration) -> &SystemInfo {
        &self.wait(limit).0
    }

    /// The GPU part of the fingerprint, taken before the first timed stage (empty when the
    /// probe did not answer within `limit`).
    pub(crate) fn fingerprint(&mut self, limit: Duration) -> &Before {
        &self.wait(limit).1
    }

    fn wait(&mut self, limit: Duration) -> &(SystemInfo, Before) {
        if self.done.is_none() {
            let answer = self.rx.recv_timeout(limit).unwrap_or_else(|_| (basic(), Before::default()));
            self.done = Some(answer);
        }
        self.done.get_or_insert_with(|| (basic(), Before::default()))
    }
}

/// The full probe, on the calling thread.
pub(crate) fn probe(python: &str, gpu: bool) -> SystemInfo {
    let mut info = basic();
    if gpu {
        if let Some((name, count)) = nvidia_smi() {
            info.gpu = name;
            info.device_count = count;
            info.runtime = "CUDA".into();
        } else if let Some((name, count)) = rocm_smi() {
            info.gpu = name;
            info.device_count = count;
            info.runtime = "ROCm".into();
        }
    }
    info.torch = torch_version(python).unwrap_or_default();
    info
}

/// CPU, platform and host name: no processes spawned.
pub(crate) fn basic() -> SystemInfo {
    let (platform, hostname) = uname();
    SystemInfo { cpu: cpu_model().unwrap_or_default(), platform, hostname, ..SystemInfo::default() }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    Some(cpu_model_from(&text))
}

/// `model name` of the first CPU; `vendor_id` when the model is `unknown` (as the seeds do).
pub(crate) fn cpu_model_from(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    match field("model name") {
        Some(m) if m != "unknown" => m,
        Some(_) => field("vendor_id").unwrap_or_default(),
        None => String::new(),
    }
}

fn cstr_field(raw: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Python's `platform.platform()` shape (`Linux-<release>-<machine>-with-glibc<ver>`) and
/// the host name.
fn uname() -> (String, String) {
    // SAFETY: uname fills the zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let mut platform = format!("{}-{}-{}", cstr_field(&u.sysname), cstr_field(&u.release), cstr_field(&u.machine));
    if let Some(v) = glibc_version() {
        platform.push_str("-with-glibc");
        platform.push_str(&v);
    }
    (platform, cstr_field(&u.nodename))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_version() -> Option<String> {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let p = unsafe { libc::gnu_get_libc_version() };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null, static and NUL-terminated per glibc's documentation.
    Some(unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_version() -> Option<String> {
    None
}

/// The GPU tools the probe runs.
const GPU_TOOL_NAMES: [&str; 2] = ["nvidia-smi", "rocm-smi"];
/// Where they were when the probe started (see [`Probe::start`]).
static GPU_TOOLS: std::sync::OnceLock<Vec<(&'static str, Option<std::path::PathBuf>)>> = std::sync::OnceLock::new();

fn run_tool(name: &str, args: &[&str]) -> Option<String> {
    run_tool_for(name, args, TOOL_TIMEOUT)
}

/// Runs a GPU tool (found when the probe started), killed after `timeout`; its stdout when
/// it exited 0.
pub(super) fn run_tool_for(name: &str, args: &[&str], timeout: Duration) -> Option<String> {
    let resolved = GPU_TOOLS.get().and_then(|t| t.iter().find(|(n, _)| *n == name)).map(|(_, p)| p.clone());
    let path = match resolved {
        Some(p) => p?,
        None => process::which(name)?,
    };
    let mut spec = Spec::new(path).args(args.iter().copied());
    spec.timeout = Some(timeout);
    spec.cancellable = false;
    let out = process::run(&spec).ok()?;
    (out.ending == Ending::Exited(0)).then(|| String::from_utf8_lossy(&out.stdout.bytes).into_owned())
}

fn nvidia_smi() -> Option<(String, i64)> {
    parse_nvidia_smi(&run_tool("nvidia-smi", &["--query-gpu=name", "--format=csv,noheader"])?)
}

/// One GPU name per line: the first one, and how many lines.
pub(crate) fn parse_nvidia_smi(out: &str) -> Option<(String, i64)> {
    let names: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let first = names.first()?;
    Some(((*first).to_owned(), names.len() as i64))
}

fn rocm_smi() -> Option<(String, i64)> {
    parse_rocm_smi(&run_tool("rocm-smi", &["--showproductname", "--json"])?)
}

/// `{"card0": {"Card Series": "…", …}, …}`: the first card's series, and how many cards.
pub(crate) fn parse_rocm_smi(out: &str) -> Option<(String, i64)> {
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    let cards: Vec<&serde_json::Map<String, serde_json::Value>> = v
        .as_object()?
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("card"))
        .filter_map(|(_, v)| v.as_object())
        .collect();
    let first = cards.first()?;
    let name = first
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("card series"))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default()
        .to_owned();
    Some((name, cards.len() as i64))
}

/// The installed torch's `__version__`, read from `torch/version.py` in the site-packages
/// directories the interpreter would search. No Python is started.
pub(crate) fn torch_version(python: &str) -> Option<String> {
    site_dirs(python).iter().find_map(|d| {
        let text = std::fs::read_to_string(d.join("torch/version.py")).ok()?;
        parse_torch_version_py(&text)
    })
}

/// `__version__ = '2.6.0+cu124'` (either quote, optional type annotation).
pub(crate) fn parse_torch_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix("__version__")?;
        let (_, value) = rest.split_once('=')?;
        let value = value.trim();
        let q = value.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let inner = &value[1..];
        Some(inner[..inner.find(q)?].to_owned())
    })
}

fn python_lib_dirs(prefix: &Path, out: &mut Vec<PathBuf>) {
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else {
            continue;
        };
        let mut versions: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("python3")))
            .map(|e| e.path())
            .collect();
        versions.sort();
        for v in versions.into_iter().rev() {
            out.push(v.join("site-packages"));
            out.push(v.join("dist-packages"));
        }
    }
}

fn site_dirs(python: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(pp) = std::env::var_os("PYTHONPATH") {
        out.extend(std::env::split_paths(&pp));
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            python_lib_dirs(Path::new(&p), &mut out);
        }
    }
    if let Some(exe) = process::which(python) {
        // A venv's bin/python3 is a symlink: the venv's own prefix comes first.
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            python_lib_dirs(prefix, &mut out);
        }
        if let Ok(real) = std::fs::canonicalize(&exe)
            && let Some(prefix) = real.parent().and_then(Path::parent)
        {
            python_lib_dirs(prefix, &mut out);
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        python_lib_dirs(&Path::new(&home).join(".local"), &mut out);
    }
    python_lib_dirs(Path::new("/usr/local"), &mut out);
    python_lib_dirs(Path::new("/usr"), &mut out);
    out.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_and_fallback() {
        assert_eq!(
            cpu_model_from("processor\t: 0\nmodel name\t: AMD EPYC 9254 24-Core Processor\n"),
            "AMD EPYC 9254 24-Core Processor"
        );
        assert_eq!(cpu_model_from("vendor_id\t: GenuineIntel\nmodel name\t: unknown\n"), "GenuineIntel");
        assert_eq!(cpu_model_from("CPU implementer\t: 0x41\n"), "");
    }

    #[test]
    fn gpu_tool_outputs() {
        assert_eq!(
            parse_nvidia_smi("NVIDIA H100 80GB HBM3\nNVIDIA H100 80GB HBM3\n"),
            Some(("NVIDIA H100 80GB HBM3".into(), 2))
        );
        assert_eq!(parse_nvidia_smi("\n"), None);
        let rocm = r#"{"card0": {"Card Series": "AMD Instinct MI300X", "Card Vendor": "AMD"},
                       "card1": {"Card Series": "AMD Instinct MI300X"}, "system": {"x": 1}}"#;
        assert_eq!(parse_rocm_smi(rocm), Some(("AMD Instinct MI300X".into(), 2)));
        assert_eq!(parse_rocm_smi("not json"), None);
        assert_eq!(parse_rocm_smi("{}"), None);
    }

    #[test]
    fn torch_version_file() {
        let text = "from typing import Optional\n__all__ = ['__version__']\n__version__ = '2.6.0+cu124'\ngit_version = 'abc'\n";
        assert_eq!(parse_torch_version_py(text).as_deref(), Some("2.6.0+cu124"));
        assert_eq!(parse_torch_version_py("__version__: str = \"2.5.1\"\n").as_deref(), Some("2.5.1"));
        assert_eq!(parse_torch_version_py("version = '1'\n"), None);
    }

    #[test]
    fn basic_info_is_filled_without_tools() {
        let info = basic();
        assert!(info.platform.starts_with("Linux-"), "{}", info.platform);
        assert!(!info.hostname.is_empty());
        assert_eq!(info.device_count, 1);
    }
}
