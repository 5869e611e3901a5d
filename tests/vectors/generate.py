#!/usr/bin/env python3
"""Regenerates the contract test vectors the way the seeds' Python platform writes them.

- Payloads: base64.b64encode(zlib.compress(json.dumps(config).encode())) (the launcher).
- result.json: json.dumps(dataclasses.asdict(FullResult), default=isoformat, indent=2)
  (the Buildkite runner), with the dataclasses of the contract.
- expected.json: values derived here, independently of the Rust code: the score per the
  contract's formula (Python's own arithmetic), test counts, the kernel's verdict.

Deterministic: fixed times and numbers. Run from anywhere: python3 tests/vectors/generate.py
"""

import base64
import dataclasses
import datetime
import json
import math
import zlib
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent


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
    gpu: str = ""
    device_count: int = 1
    cpu: str = ""
    runtime: str = ""
    platform: str = ""
    torch: str = ""
    hostname: str = ""


@dataclasses.dataclass
class EvalResult:
    start: datetime.datetime
    end: datetime.datetime
    compilation: Optional[CompileResult]
    run: Optional[RunResult]
    profile: Optional[ProfileResult]


@dataclasses.dataclass
class FullResult:
    success: bool
    error: str
    system: SystemInfo
    runs: dict = dataclasses.field(default_factory=dict)


def serialize(obj):
    if isinstance(obj, datetime.datetime):
        return obj.isoformat()
    raise TypeError(f"Type {type(obj)} not serializable")


def write_result(name, result):
    text = json.dumps(dataclasses.asdict(result), default=serialize, indent=2)
    (HERE / name).write_text(text)


def encode_payload(config):
    return base64.b64encode(zlib.compress(json.dumps(config).encode("utf-8"))).decode("ascii")


def write_payload(stem, config):
    (HERE / f"{stem}.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (HERE / f"{stem}.b64").write_text(encode_payload(config) + "\n")


def harness_lines(pairs):
    """What run_program does with the POPCORN_FD lines: `key: value`, split at the first
    colon, both sides stripped."""
    out = {}
    for key, value in pairs:
        line = f"{key}: {value}"
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def stats(durations):
    runs = len(durations)
    avg = sum(durations) / runs
    std = math.sqrt(sum((x - avg) ** 2 for x in durations) / (runs - 1))
    return dict(runs=runs, mean=avg, std=std, err=std / math.sqrt(runs),
                best=float(min(durations)), worst=float(max(durations)))


def benchmark_pairs(specs, base_ns):
    pairs = [("benchmark-count", len(specs))]
    for i, spec in enumerate(specs):
        pairs.append((f"benchmark.{i}.spec", spec))
        durations = [base_ns[i] + (j * 37) % 1000 for j in range(100)]
        for k, v in stats(durations).items():
            pairs.append((f"benchmark.{i}.{k}", v))
    return pairs


def contract_score(result_map, ranking_by):
    """The contract's formula, written the way the seeds' platform computes it."""
    if ranking_by == "last":
        return float(result_map["benchmark.0.mean"]) / 1e9
    n = int(result_map["benchmark-count"])
    scores = [float(result_map[f"benchmark.{i}.mean"]) / 1e9 for i in range(n)]
    if ranking_by == "mean":
        return sum(scores) / len(scores)
    return math.pow(math.prod(scores), 1.0 / n)


T0 = datetime.datetime(2025, 2, 4, 10, 11, 12, 123456)


def t(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


H100 = SystemInfo(
    gpu="NVIDIA H100 80GB HBM3",
    device_count=1,
    cpu="AMD EPYC 9254 24-Core Processor",
    runtime="CUDA",
    platform="Linux-5.15.0-164-generic-x86_64-with-glibc2.35",
    torch="2.6.0+cu124",
    hostname="nvidia-h100-0-agent-7f9c4.gpu-a.internal",
)

L40S = SystemInfo(
    gpu="NVIDIA L40S",
    device_count=1,
    cpu="AMD EPYC 9254 24-Core Processor",
    runtime="CUDA",
    platform="Linux-5.15.0-164-generic-x86_64-with-glibc2.35",
    torch="2.6.0+cu124",
    hostname="test-agent-1",
)

NVCC_VERSION = (
    "nvcc: NVIDIA (R) Cuda compiler driver\n"
    "Copyright (c) 2005-2024 NVIDIA Corporation\n"
    "Built on Tue_Feb_27_16:19:38_PST_2024\n"
    "Cuda compilation tools, release 12.4, V12.4.99\n"
    "Build cuda_12.4.r12.4/compiler.33961263_0\n"
)

TESTS = [{"size": 127, "seed": 4242}, {"size": 128, "seed": 5236}, {"size": 129, "seed": 1001},
         {"size": 256, "seed": 5531}, {"size": 512, "seed": 9173}]
BENCHMARKS = [{"size": 1024, "seed": 54352}, {"size": 2048, "seed": 93246},
              {"size": 4096, "seed": 6256}]


def spec(case):
    return "; ".join(f"{k}: {v}" for k, v in case.items())


def main():
    expected = {}

    # ---- payloads ----
    eval_py = 'import os\nprint("eval", os.environ.get("POPCORN_FD"))\n'
    py_config = {
        "main": "eval.py",
        "sources": {
            "eval.py": eval_py,
            "reference.py": "import torch\n\ndef ref_kernel(data):\n    return data\n",
            "submission.py": "# ünïcode ✓ — custom kernel\ndef custom_kernel(data):\n    return data\n",
            "utils.py": "def set_seed(seed=42):\n    pass\n",
        },
        "lang": "py",
        "arch": None,
        "benchmarks": BENCHMARKS,
        "tests": TESTS,
        "mode": "test",
        "test_timeout": 180,
        "benchmark_timeout": 180,
        "ranked_timeout": 180,
        "ranking_by": "last",
        "seed": None,
        "multi_gpu": False,
    }
    write_payload("payload_py_test", py_config)

    cu_config = {
        "sources": {
            "eval.cu": '#include "task.h"\nint main(int argc, char** argv) { return 0; }\n',
            "submission.cu": '#include "task.h"\n__global__ void kernel(float* x) { x[0] = 1.f; }\n',
        },
        "headers": {"task.h": "#pragma once\n#define N 1024\n", "utils.h": "#pragma once\n"},
        "include_dirs": [],
        "defines": {"NDEBUG": None, "BLOCK": 128},
        "compile_flags": ["-O3", "--use_fast_math", "-std=c++17"],
        "libraries": ["cublas"],
        "lang": "cu",
        "arch": "90a",
        "benchmarks": BENCHMARKS,
        "tests": TESTS,
        "mode": "leaderboard",
        "test_timeout": 120,
        "benchmark_timeout": 240,
        "ranked_timeout": 360,
        "ranking_by": "geom",
        "seed": 39421,
        "multi_gpu": False,
        "submission_id": 8815,
    }
    write_payload("payload_cu_leaderboard", cu_config)

    # The proof of concept's local container test (seed 002): uses `files`, not `sources`.
    poc = {"lang": "py", "mode": "test",
           "files": {"main.py": "import torch; print(torch.cuda.get_device_name(0))"},
           "tests": [], "benchmarks": [], "test_timeout": 60, "benchmark_timeout": 60,
           "ranked_timeout": 60}
    write_payload("payload_poc_files", poc)

    # ---- result: a passing CUDA leaderboard submission ----
    compile_ok = CompileResult(
        nvcc_found=True, nvcc_version=NVCC_VERSION, success=True,
        command="/usr/local/cuda/bin/nvcc --std=c++20 -DNDEBUG -Xcompiler=-Wno-psabi "
                "-Xcompiler=-fno-strict-aliasing --expt-extended-lambda --expt-relaxed-constexpr "
                "-forward-unknown-to-host-compiler --use_fast_math -O3 -Xptxas=-v -lineinfo "
                "-lcuda eval.cu submission.cu -gencode=arch=compute_90a,code=sm_90a -o eval.out",
        stdout="", stderr="ptxas info    : Used 8 registers, 360 bytes cmem[0]\n", exit_code=0)
    test_pairs = [("test-count", len(TESTS))]
    for i, case in enumerate(TESTS):
        test_pairs += [(f"test.{i}.spec", spec(case)), (f"test.{i}.status", "pass")]
    test_pairs.append(("check", "pass"))
    test_map = harness_lines(test_pairs)
    bench_map = harness_lines(benchmark_pairs([spec(b) for b in BENCHMARKS],
                                              [4_070_000, 15_800_000, 61_900_000])
                              + [("check", "pass")])
    ranked_map = harness_lines(benchmark_pairs([spec(b) for b in BENCHMARKS],
                                               [4_071_000, 15_790_000, 61_950_000])
                               + [("check", "pass")])
    lb = FullResult(success=True, error="", system=H100, runs={
        "test": EvalResult(t(0), t(4.5), compile_ok, RunResult(
            True, True, "./eval.out test /tmp/tmpa1b2c3", "Running in mode test\n", "", 0,
            3.1846512, test_map), None),
        "benchmark": EvalResult(t(5), t(19), compile_ok, RunResult(
            True, True, "./eval.out benchmark /tmp/tmpd4e5f6", "Running in mode benchmark\n", "",
            0, 12.503, bench_map), None),
        "leaderboard": EvalResult(t(20), t(61), compile_ok, RunResult(
            True, True, "./eval.out leaderboard /tmp/tmpg7h8i9", "Running in mode leaderboard\n",
            "", 0, 40.98, ranked_map), None),
    })
    write_result("result_leaderboard_pass.json", lb)
    expected["result_leaderboard_pass.json"] = {
        "success": True, "passed": True,
        "tests": {"total": 5, "passed": 5, "failed": 0},
        # repr() strings: the exact shortest decimal, parsed exactly on the Rust side.
        "score": {rb: repr(contract_score(ranked_map, rb)) for rb in ("last", "mean", "geom")},
        "ranked_means_ns": [ranked_map[f"benchmark.{i}.mean"] for i in range(3)],
    }

    # ---- result: a Python submission that fails two tests ----
    fail_pairs = [("test-count", len(TESTS))]
    fail_msgs = {
        1: "mismatch found! custom implementation doesn't match reference: "
           "Number of mismatched elements: 3 ERROR AT (0, 1): 0.5 1.0",
        3: "output has shape (256,) but expected (256, 256)",
    }
    for i, case in enumerate(TESTS):
        fail_pairs.append((f"test.{i}.spec", spec(case)))
        if i in fail_msgs:
            fail_pairs += [(f"test.{i}.status", "fail"), (f"test.{i}.error", fail_msgs[i])]
        else:
            fail_pairs += [(f"test.{i}.status", "pass")]
    fail_pairs.append(("check", "fail"))
    fail_map = harness_lines(fail_pairs)
    tf = FullResult(success=True, error="", system=L40S, runs={
        "test": EvalResult(t(0), t(3.4), None, RunResult(
            True, False, "python eval.py test /tmp/tmpj1k2l3", "Running in mode test\n", "", 112,
            3.375, fail_map), None),
    })
    write_result("result_test_fail.json", tf)
    expected["result_test_fail.json"] = {
        "success": True, "passed": False,
        "tests": {"total": 5, "passed": 3, "failed": 2},
        "failures": [{"index": i, "spec": spec(TESTS[i]), "message": m}
                     for i, m in sorted(fail_msgs.items())],
        "score": {"last": None, "mean": None, "geom": None},
    }

    # ---- result: infrastructure failure ----
    infra = FullResult(success=False, error="Buildkite job failed: agent lost (exit status -1)",
                       system=SystemInfo(), runs={})
    write_result("result_infra_failure.json", infra)
    expected["result_infra_failure.json"] = {
        "success": False, "passed": None, "tests": None,
        "score": {"last": None, "mean": None, "geom": None},
    }

    # ---- result: a CUDA submission that does not compile ----
    compile_err = CompileResult(
        nvcc_found=True, nvcc_version=NVCC_VERSION, success=False,
        command=compile_ok.command,
        stdout="",
        stderr='submission.cu(2): error: identifier "y" is undefined\n'
               "1 error detected in the compilation of \"submission.cu\".\n",
        exit_code=2)
    ce = FullResult(success=True, error="", system=H100, runs={
        "test": EvalResult(t(0), t(2), compile_err, None, None),
    })
    write_result("result_compile_error.json", ce)
    expected["result_compile_error.json"] = {
        "success": True, "passed": False, "tests": None,
        "score": {"last": None, "mean": None, "geom": None},
    }

    # ---- result: what the seeds' artifact test uploads (not the dataclass shape) ----
    (HERE / "result_seed_artifact_test.json").write_text(json.dumps({
        "success": True, "error": "", "runs": {},
        "system": {"gpu_name": "0", "cuda_version": "test", "python_version": "3.11"},
    }, indent=2))
    expected["result_seed_artifact_test.json"] = {
        "success": True, "passed": None, "tests": None,
        "score": {"last": None, "mean": None, "geom": None},
    }

    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
