#!/usr/bin/env python3
"""Makes the kernelbot parity goldens in this directory with kernelbot's own runner.

    git clone https://github.com/gpu-mode/kernelbot /tmp/kernelbot
    git -C /tmp/kernelbot checkout 4bdd839ad76eaac0cdab986d30f8d77f989a289b
    python3 tests/kernelbot/generate.py --kernelbot /tmp/kernelbot

For every case below it builds the payload the way kernelbot does (the config dict of
`build_task_config` in `src/libkernelbot/task.py`, keys in that order, then
`base64(zlib(json.dumps(config)))` as its Buildkite launcher does), writes it to
`cases/<name>.payload.b64`, decodes that file again as `src/runners/buildkite-runner.py`
does, runs `libkernelbot.run_eval.run_config` on it in a fresh directory and writes the
result, serialised as the runners do (`json.dumps(asdict(result), default=isoformat)`), to
`cases/<name>.kernelbot.json`. `manifest.json` lists the cases with the directory each ran
in (its path appears in tracebacks) and the kernelbot commit.

Only the standard library is needed: the tasks are the pure-Python CPU harness in
`tests/tasks/vectoradd`, so no torch. What a CPU machine cannot have is stubbed, and only
that: `make_system_info` falls back to `nvidia-smi` and `rocm-smi` when torch is missing and
catches only `CalledProcessError`, so both are put on PATH as tools that fail the way they
do on a machine without a GPU driver (exit 9 / exit 1).

Profile mode cannot profile without a GPU: `run_config` raises `ValueError: Unknown runtime`.
kernelbot's Buildkite runner then dies without a result.json; its Modal runner reports
`FullResult(success=False, error="Error executing script:\\n<traceback>")`, which is what
is recorded here (the comparison is of success, runs and the reason).

It also runs kernelbot's `_filter_ncu_report` on the synthetic ncu reports in this
directory (`ncu_report*.txt`) and writes `*.filtered.txt` next to them.
"""

import argparse
import base64
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TASK = REPO / "tests" / "tasks" / "vectoradd"
KERNELBOT_COMMIT = "4bdd839ad76eaac0cdab986d30f8d77f989a289b"

# Environment both runners give the harness (see manifest.json "env").
HARNESS_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}

TESTS = [{"size": 16, "seed": 1}, {"size": 250, "seed": 2}, {"size": 1000, "seed": 3}]
BENCHMARKS = [{"size": 500, "seed": 11}, {"size": 1000, "seed": 12}, {"size": 2000, "seed": 13}]


def task_file(name):
    return (TASK / name).read_text()


def submission(name):
    """A submission: `vectoradd/submission_<name>.py`, or one of `submissions/<name>.py`."""
    own = HERE / "submissions" / f"{name}.py"
    if own.exists():
        return own.read_text()
    if name == "empty":
        return ""
    return task_file(f"submission_{name}.py")


def config(mode, sub, **task):
    """kernelbot's `build_task_config` for a Python task, keys in its order."""
    common = {
        "lang": "py",
        "arch": None,
        "benchmarks": task.get("benchmarks", BENCHMARKS),
        "tests": task.get("tests", TESTS),
        "mode": mode,
        "test_timeout": task.get("test_timeout", 60),
        "benchmark_timeout": task.get("benchmark_timeout", 60),
        "ranked_timeout": task.get("ranked_timeout", 60),
        "ranking_by": task.get("ranking_by", "last"),
        "seed": task.get("seed"),
        "multi_gpu": False,
    }
    return {
        "main": "eval.py",
        "sources": {
            "submission.py": submission(sub),
            "eval.py": task_file("eval.py"),
            "reference.py": task_file("reference.py"),
        },
        **common,
    }


# (name, description, config)
CASES = [
    ("test_pass", "test mode, correct kernel", config("test", "ok")),
    ("test_fail", "test mode, wrong kernel (exit 112, per-test messages)", config("test", "wrong")),
    ("test_crash", "test mode, kernel raises (traceback in stderr)", config("test", "crash")),
    ("test_segv", "test mode, kernel segfaults (exit -11)", config("test", "segv")),
    ("test_seed", "test mode with a seed (POPCORN_SEED reaches the harness)", config("test", "ok", seed=42)),
    (
        "test_key_order",
        "cases whose keys are not sorted, with string and float values",
        config(
            "test",
            "ok",
            tests=[{"size": 16, "seed": 1, "scale": 1.5, "name": "x y"}, {"seed": 2, "size": 250}],
        ),
    ),
    ("test_noisy", "test mode, 5,000 lines of stdout (kernelbot's _limit_length)", config("test", "noisy")),
    ("test_empty_submission", "an empty submission.py", config("test", "empty")),
    ("test_fractional_timeout_pass", "test_timeout 2.5", config("test", "ok", test_timeout=2.5)),
    ("test_fractional_timeout_hit", "test_timeout 1.5 and a kernel that never returns", config("test", "sleep", test_timeout=1.5)),
    ("test_zero_timeout", "test_timeout 0: subprocess.run times out at once", config("test", "ok", test_timeout=0)),
    ("benchmark_last", "benchmark mode ranked by last (only the last benchmark runs)", config("benchmark", "ok")),
    ("benchmark_mean", "benchmark mode ranked by mean (every benchmark runs)", config("benchmark", "ok", ranking_by="mean")),
    ("benchmark_wrong", "benchmark mode, wrong kernel", config("benchmark", "wrong")),
    ("leaderboard_pass", "leaderboard ranked by geom: test, benchmark, leaderboard", config("leaderboard", "ok", ranking_by="geom")),
    ("leaderboard_fail", "leaderboard with a wrong kernel: stops after test", config("leaderboard", "wrong")),
    ("private_pass", "private with the secret seed", config("private", "ok", seed=987654321, ranking_by="mean")),
    ("cheat_fd", "a submission that writes its own verdict to POPCORN_FD", config("leaderboard", "cheat_fd")),
    (
        "jit_compile",
        "a JIT-compiling submission: compiled by the pre-run outside test_timeout 1.5",
        config("leaderboard", "jit", test_timeout=1.5),
    ),
    ("profile_no_gpu", "profile mode on a machine without a GPU", config("profile", "ok")),
]


def encode(cfg):
    """kernelbot's BuildkiteLauncher: base64(zlib(json.dumps(config)))."""
    return base64.b64encode(zlib.compress(json.dumps(cfg).encode("utf-8"))).decode("ascii")


def serialize(obj):
    if isinstance(obj, datetime.datetime):
        return obj.isoformat()
    raise TypeError(f"Type {type(obj)} not serializable")


def stub_gpu_tools(bin_dir):
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, script in [
        (
            "nvidia-smi",
            "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n",
        ),
        ("rocm-smi", "#!/bin/sh\necho 'ERROR: No AMD GPUs found' >&2\nexit 1\n"),
    ]:
        p = bin_dir / name
        p.write_text(script)
        p.chmod(0o755)


def run_case(run_config, FullResult, SystemInfo, payload, cwd):
    """buildkite-runner.py's decode, then run_config in `cwd` (Modal's wrapper on exceptions)."""
    cfg = json.loads(zlib.decompress(base64.b64decode(payload)).decode("utf-8"))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = run_config(cfg)
    except Exception as e:  # noqa: BLE001 - recorded like modal_runner.modal_run_config
        result = FullResult(
            success=False,
            error=f"Error executing script:\n{''.join(traceback.format_exception(e))}",
            runs={},
            system=SystemInfo(),
        )
    finally:
        os.chdir(old)
    return json.dumps(dataclasses.asdict(result), default=serialize, indent=2) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernelbot", required=True, type=Path, help="a kernelbot checkout")
    ap.add_argument("--only", nargs="*", help="regenerate only these cases")
    args = ap.parse_args()

    run_eval_py = args.kernelbot / "src" / "libkernelbot" / "run_eval.py"
    if not run_eval_py.exists():
        sys.exit(f"{run_eval_py} not found: --kernelbot must be a kernelbot checkout")
    commit = subprocess.run(
        ["git", "-C", str(args.kernelbot), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if commit != KERNELBOT_COMMIT:
        print(f"warning: kernelbot is at {commit or 'an unknown commit'}, the goldens were made at {KERNELBOT_COMMIT}")

    work = Path(tempfile.mkdtemp(prefix="kernelbot-golden-"))
    stub_gpu_tools(work / "bin")
    os.environ["PATH"] = f"{work / 'bin'}:{os.environ.get('PATH', '')}"
    for k in list(os.environ):
        if k.startswith("POPCORN_") or k in ("KERNELBOT_PAYLOAD",):
            del os.environ[k]
    # Python's buffering decides what a killed run leaves in its stdout: pinned, and given to
    # `benchkite run` by the Rust test too.
    os.environ.update(HARNESS_ENV)
    sys.path.insert(0, str(args.kernelbot / "src"))
    from libkernelbot.run_eval import FullResult, SystemInfo, _filter_ncu_report, run_config

    cases_dir = HERE / "cases"
    cases_dir.mkdir(exist_ok=True)
    manifest_path = HERE / "manifest.json"
    old_manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"cases": []}
    old_cases = {c["name"]: c for c in old_manifest["cases"]}
    manifest = {
        "kernelbot_commit": commit or KERNELBOT_COMMIT,
        "python": sys.version.split()[0],
        "generator": "tests/kernelbot/generate.py",
        "env": HARNESS_ENV,
        "cases": [],
    }
    for name, description, cfg in CASES:
        if args.only and name not in args.only:
            if name in old_cases:
                manifest["cases"].append(old_cases[name])
            continue
        payload = encode(cfg)
        (cases_dir / f"{name}.payload.b64").write_text(payload + "\n")
        cwd = work / name
        cwd.mkdir()
        print(f"{name}: {description}", flush=True)
        golden = run_case(run_config, FullResult, SystemInfo, (cases_dir / f"{name}.payload.b64").read_text(), cwd)
        (cases_dir / f"{name}.kernelbot.json").write_text(golden)
        manifest["cases"].append({"name": name, "description": description, "cwd": str(cwd)})
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")

    tables = ["GPU Throughput", "Pipe Utilization (% of active cycles)", "Warp State (All Cycles)"]
    for report in sorted(HERE.glob("ncu_report*.txt")):
        if report.name.endswith(".filtered.txt"):
            continue
        out = report.with_name(report.name[: -len(".txt")] + ".filtered.txt")
        out.write_text(_filter_ncu_report(report.read_text(), tables))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
