//! Compatibility with the seeds' Python platform, checked against Python itself: payloads
//! encoded by `base64.b64encode(zlib.compress(json.dumps(cfg).encode()))` decode here, ours
//! decode there, and our `result.json` loads into the platform's dataclasses.

use std::io::Write;
use std::process::{Command, Stdio};

use benchkite::contract::{
    Arch, Case, CompileResult, EvalConfig, EvalResult, FullResult, Lang, Mode, ProfileResult, RankingBy, RunResult,
    SystemInfo, decode_payload, encode_payload, parse_result_json,
};
use serde_json::{Value, json};

/// Runs `python3 -c script` with `stdin`, returning stdout; fails the test on any error.
fn python(script: &str, stdin: &str) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed to run the compatibility tests");
    child.stdin.take().expect("stdin is piped").write_all(stdin.as_bytes()).expect("write to python");
    let out = child.wait_with_output().expect("python3 runs");
    assert!(out.status.success(), "python failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

const PY_ENCODE: &str = r##"
import base64, json, sys, zlib
configs = [
    {"main": "eval.py", "sources": {"eval.py": "print('hi')\n", "submission.py": "x = 'ünïcode ✓ 🚀'\n"},
     "lang": "py", "arch": None, "benchmarks": [{"size": 1024, "seed": 5}], "tests": [{"size": 128, "seed": "42"}],
     "mode": "test", "test_timeout": 180, "benchmark_timeout": 180, "ranked_timeout": 180,
     "ranking_by": "last", "seed": None, "multi_gpu": False},
    {"sources": {"eval.cu": "int main() {}\n", "submission.cu": "__global__ void k() {}\n"},
     "headers": {"task.h": "#pragma once\n"}, "include_dirs": ["/opt/cutlass/include"],
     "defines": {"N": 128, "FAST": None, "NAME": "x"}, "compile_flags": ["-O3"], "libraries": [],
     "lang": "cu", "arch": "90a", "benchmarks": [], "tests": [], "mode": "leaderboard",
     "test_timeout": 60, "benchmark_timeout": 120, "ranked_timeout": 240, "ranking_by": "geom",
     "seed": 123456789012, "multi_gpu": True, "submission_id": 77, "user": {"name": "a", "tags": [1, 2.5, None]}},
    {"main": "m.py", "sources": {"m.py": "pass\n"}, "lang": "py", "arch": 80, "mode": "private",
     "tests": [], "benchmarks": [], "test_timeout": 1, "benchmark_timeout": 2, "ranked_timeout": 3,
     "ranking_by": "mean", "seed": -3, "multi_gpu": False},
    {"main": "m.py", "sources": {"m.py": "a" * 200000}, "lang": "py", "arch": None, "mode": "profile",
     "tests": [], "benchmarks": [{"k": "v"}], "test_timeout": 180, "benchmark_timeout": 180,
     "ranked_timeout": 180, "ranking_by": "median", "seed": None, "multi_gpu": False},
]
for cfg in configs:
    payload = base64.b64encode(zlib.compress(json.dumps(cfg).encode())).decode()
    print(json.dumps({"config": cfg, "payload": payload}))
"##;

#[test]
fn payloads_encoded_by_python_decode_here() {
    let out = python(PY_ENCODE, "");
    let mut n = 0;
    for line in out.lines() {
        let item: Value = serde_json::from_str(line).unwrap();
        let payload = item["payload"].as_str().unwrap();
        let decoded = decode_payload(payload).unwrap_or_else(|e| panic!("{e} for {}", item["config"]));
        // Nothing dropped, nothing changed.
        assert_eq!(serde_json::to_value(&decoded).unwrap(), item["config"]);
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn python_payload_fields_map_to_the_right_types() {
    let out = python(PY_ENCODE, "");
    let configs: Vec<EvalConfig> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            decode_payload(v["payload"].as_str().unwrap()).unwrap()
        })
        .collect();
    assert_eq!(configs[0].lang, Lang::Py);
    assert_eq!(configs[0].main.as_deref(), Some("eval.py"));
    assert_eq!(configs[0].sources["submission.py"], "x = 'ünïcode ✓ 🚀'\n");
    assert_eq!(configs[0].arch, None);
    assert_eq!(configs[0].tests[0]["seed"], "42");
    assert_eq!(configs[1].lang, Lang::Cu);
    assert_eq!(configs[1].arch, Some(Arch::Name("90a".into())));
    assert_eq!(configs[1].mode, Mode::Leaderboard);
    assert_eq!(configs[1].ranking_by, RankingBy::Geom);
    assert_eq!(configs[1].seed, Some(123_456_789_012));
    assert!(configs[1].multi_gpu);
    assert_eq!(configs[1].extra["submission_id"], 77);
    assert_eq!(configs[1].defines.as_ref().unwrap()["FAST"], Value::Null);
    assert_eq!(
        (configs[1].test_timeout, configs[1].benchmark_timeout, configs[1].ranked_timeout),
        (60.0, 120.0, 240.0)
    );
    assert_eq!(configs[2].arch, Some(Arch::Number(80)));
    assert_eq!(configs[2].seed, Some(-3));
    assert_eq!(configs[2].mode, Mode::Private);
    assert_eq!(configs[3].ranking_by, RankingBy::Other("median".into()));
}

fn rust_configs() -> Vec<EvalConfig> {
    let mut py = EvalConfig::new(Lang::Py, Mode::Leaderboard);
    py.main = Some("eval.py".into());
    py.sources.insert("eval.py".into(), "print('ok')\n".into());
    py.sources.insert("submission.py".into(), "s = \"quotes \\\\ and ünïcode 🚀\"\n".into());
    // Keys not in sorted order: Python must see them in this order.
    py.tests = vec![Case::parse_line("size: 1; seed: 2").expect("case")];
    py.benchmarks = vec![json!({"size": "big"}).as_object().expect("object").clone().into()];
    py.ranking_by = RankingBy::Mean;
    py.seed = Some(42);

    let mut cu = EvalConfig::new(Lang::Cu, Mode::Benchmark);
    cu.arch = Some(Arch::Number(100));
    cu.sources.insert("eval.cu".into(), "int main(){}\n".into());
    cu.headers = Some([("a.h".to_owned(), "#pragma once\n".to_owned())].into());
    cu.defines = Some(json!({"N": 4, "X": null}).as_object().unwrap().clone());
    cu.compile_flags = Some(vec!["-O3".into()]);
    cu.include_dirs = Some(vec![]);
    cu.libraries = Some(vec!["cublas".into()]);
    cu.multi_gpu = true;
    cu.extra.insert("submission_id".into(), json!(9));

    let mut big = EvalConfig::new(Lang::Cu, Mode::Test);
    big.sources.insert("k.cu".into(), "€".repeat(300_000)); // 900,000 bytes
    vec![py, cu, big]
}

#[test]
fn payloads_encoded_here_decode_in_python() {
    let configs = rust_configs();
    let payloads: Vec<String> = configs.iter().map(|c| encode_payload(c).unwrap()).collect();
    let script = r#"
import base64, json, sys, zlib
out = []
for line in sys.stdin.read().split():
    out.append(json.loads(zlib.decompress(base64.b64decode(line, validate=True)).decode("utf-8")))
print(json.dumps(out))
"#;
    let out = python(script, &payloads.join("\n"));
    let decoded: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(decoded.len(), configs.len());
    for (c, d) in configs.iter().zip(&decoded) {
        assert_eq!(&serde_json::to_value(c).unwrap(), d);
    }
    // The seeds' runner reads these fields with config[...] / config.get(...).
    assert_eq!(decoded[0]["main"], "eval.py");
    assert_eq!(decoded[1]["arch"], 100);
    assert!(decoded[1].get("main").is_none());
}

#[test]
fn python_reads_case_keys_in_the_payloads_order() {
    let payload = encode_payload(&rust_configs()[0]).unwrap();
    // kernelbot's `build_test_string`, run on what Python decodes.
    let script = r#"
import base64, json, sys, zlib
cfg = json.loads(zlib.decompress(base64.b64decode(sys.stdin.read().strip())).decode("utf-8"))
for test in cfg["tests"] + cfg["benchmarks"]:
    print("; ".join(f"{k}: {v}" for k, v in test.items()))
"#;
    assert_eq!(python(script, &payload), "size: 1; seed: 2\nsize: big\n");
}

fn rust_result() -> FullResult {
    let mut r = FullResult::infrastructure_failure("", SystemInfo::default());
    r.success = true;
    r.system = SystemInfo {
        gpu: "NVIDIA B200".into(),
        device_count: 8,
        cpu: "Intel(R) Xeon(R) Platinum 8570".into(),
        runtime: "CUDA".into(),
        platform: "Linux-6.8.0-x86_64".into(),
        torch: "".into(),
        hostname: "b200-3".into(),
    };
    let run = RunResult {
        success: true,
        passed: true,
        command: "./eval.out test /tmp/cases".into(),
        stdout: "ünïcode ✓\n".into(),
        stderr: "".into(),
        exit_code: 0,
        duration: 2.25,
        result: [("check", "pass"), ("test-count", "1"), ("test.0.status", "pass")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    r.runs.insert(
        "test".into(),
        EvalResult {
            start: "2025-02-04T10:11:12.123456".into(),
            end: "2025-02-04T10:11:14".into(),
            compilation: Some(CompileResult {
                nvcc_found: true,
                nvcc_version: "release 12.8".into(),
                success: true,
                command: "nvcc".into(),
                stdout: "".into(),
                stderr: "".into(),
                exit_code: 0,
            }),
            run: Some(run.clone()),
            profile: None,
        },
    );
    r.runs.insert(
        "profile.0".into(),
        EvalResult {
            start: "2025-02-04T10:11:15".into(),
            end: "2025-02-04T10:11:16.5".into(),
            compilation: None,
            run: Some(run),
            profile: Some(ProfileResult { profiler: "nsight".into(), trace: "UEsDBA==".into(), download_url: None }),
        },
    );
    r
}

#[test]
fn our_result_json_loads_into_the_platforms_dataclasses() {
    let r = rust_result();
    let text = serde_json::to_string_pretty(&r).unwrap();
    // The seeds' launcher: CompileResult(**v["compilation"]), RunResult(**v["run"]), …,
    // datetime.fromisoformat(v["start"]), SystemInfo(**data["system"]).
    let script = r#"
import dataclasses, datetime, json, sys
from typing import Optional

@dataclasses.dataclass
class ProfileResult:
    profiler: str
    trace: str
    download_url: Optional[str]

@dataclasses.dataclass
class CompileResult:
    nvcc_found: bool
    nvcc_version: str
    success: bool
    command: str
    stdout: str
    stderr: str
    exit_code: int

@dataclasses.dataclass
class RunResult:
    success: bool
    passed: bool
    command: str
    stdout: str
    stderr: str
    exit_code: int
    duration: float
    result: dict

@dataclasses.dataclass
class SystemInfo:
    gpu: str = ''
    device_count: int = 1
    cpu: str = ''
    runtime: str = ''
    platform: str = ''
    torch: str = ''
    hostname: str = ''

data = json.load(sys.stdin)
runs = {}
for k, v in data["runs"].items():
    comp = None if v.get("compilation") is None else CompileResult(**v["compilation"])
    run = None if v.get("run") is None else RunResult(**v["run"])
    prof = None if v.get("profile") is None else ProfileResult(**v["profile"])
    start = datetime.datetime.fromisoformat(v["start"])
    end = datetime.datetime.fromisoformat(v["end"])
    assert end >= start
    runs[k] = (comp, run, prof)
system = SystemInfo(**data.get("system", {}))
assert isinstance(data["success"], bool)
print(json.dumps({
    "runs": sorted(runs),
    "gpu": system.gpu,
    "passed": runs["test"][1].passed,
    "duration": runs["test"][1].duration,
    "stdout": runs["test"][1].stdout,
    "profiler": runs["profile.0"][2].profiler,
    "start": datetime.datetime.fromisoformat(data["runs"]["test"]["start"]).isoformat(),
}))
"#;
    let out: Value = serde_json::from_str(&python(script, &text)).unwrap();
    assert_eq!(
        out,
        json!({
            "runs": ["profile.0", "test"],
            "gpu": "NVIDIA B200",
            "passed": true,
            "duration": 2.25,
            "stdout": "ünïcode ✓\n",
            "profiler": "nsight",
            "start": "2025-02-04T10:11:12.123456",
        })
    );
}

#[test]
fn python_result_json_parses_here() {
    // The seeds' runner: json.dumps(asdict(result), default=isoformat, indent=2).
    let script = r#"
import dataclasses, datetime, json
@dataclasses.dataclass
class RunResult:
    success: bool
    passed: bool
    command: str
    stdout: str
    stderr: str
    exit_code: int
    duration: float
    result: dict
@dataclasses.dataclass
class EvalResult:
    start: datetime.datetime
    end: datetime.datetime
    compilation: object
    run: object
    profile: object
@dataclasses.dataclass
class SystemInfo:
    gpu: str = ''
    device_count: int = 1
    cpu: str = ''
    runtime: str = ''
    platform: str = ''
    torch: str = ''
@dataclasses.dataclass
class FullResult:
    success: bool
    error: str
    system: SystemInfo
    runs: dict
t = datetime.datetime(2025, 1, 2, 3, 4, 5)
r = FullResult(True, "", SystemInfo(gpu="MI300X", runtime="ROCm"), {
    "test": EvalResult(t, t + datetime.timedelta(microseconds=1500), None,
        RunResult(False, False, "python eval.py test x", "", "Traceback…\nKilled", 114, 180,
                  {}), None)})
def ser(o):
    if isinstance(o, datetime.datetime):
        return o.isoformat()
    raise TypeError
print(json.dumps(dataclasses.asdict(r), default=ser, indent=2))
"#;
    let out = python(script, "");
    let r = parse_result_json(out.as_bytes()).unwrap();
    assert!(r.success);
    assert_eq!(r.system.gpu, "MI300X");
    assert_eq!(r.system.runtime, "ROCm");
    assert_eq!(r.system.hostname, "", "older SystemInfo without hostname");
    let t = &r.runs["test"];
    assert_eq!(t.start, "2025-01-02T03:04:05");
    assert_eq!(t.end, "2025-01-02T03:04:05.001500");
    assert!(t.end_time().unwrap() > t.start_time().unwrap());
    let run = t.run.as_ref().unwrap();
    assert_eq!((run.exit_code, run.duration), (114, 180.0));
    assert_eq!(run.stderr, "Traceback…\nKilled");
}
