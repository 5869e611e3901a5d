"""Checks the synthetic harness without pytest: `python3 tests/tasks/synthetic/selftest.py`.

Runs eval.py (as the runner would: submission copied to submission.py, a cases file, a
result pipe in POPCORN_FD) with several SIMGPU_* environments and compares every reported
key with the hand-computed value. Exits 1 on the first mismatch.
"""

import math
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = "scale: 1\nscale: 2\n"


def run(submission, mode, env_extra):
    with tempfile.TemporaryDirectory(prefix="synthetic-selftest-") as d:
        for f in ("eval.py", "reference.py"):
            shutil.copy(os.path.join(HERE, f), d)
        shutil.copy(os.path.join(HERE, submission), os.path.join(d, "submission.py"))
        with open(os.path.join(d, "cases.txt"), "w") as f:
            f.write(CASES)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIMGPU_")}
        env.update(env_extra)
        r, w = os.pipe()
        env["POPCORN_FD"] = str(w)
        proc = subprocess.run(
            [sys.executable, "eval.py", mode, "cases.txt"],
            cwd=d,
            env=env,
            pass_fds=(w,),
            capture_output=True,
            text=True,
            timeout=60,
        )
        os.close(w)
        with os.fdopen(r) as f:
            lines = f.read().splitlines()
    result = {}
    for line in lines:
        key, _, value = line.partition(": ")
        result[key] = value
    return proc.returncode, result, proc.stderr


failures = []


def expect(what, got, want):
    if isinstance(want, float):
        ok = got is not None and math.isclose(float(got), want, rel_tol=1e-12)
    else:
        ok = got == want
    if not ok:
        failures.append(f"{what}: got {got!r}, want {want!r}")


def bench(submission, env, want_means):
    code, res, err = run(submission, "benchmark", env)
    tag = f"{submission} {env}"
    expect(f"{tag} exit ({err.strip()})", code, 0)
    expect(f"{tag} check", res.get("check"), "pass")
    expect(f"{tag} count", res.get("benchmark-count"), str(len(want_means)))
    for i, mean in enumerate(want_means):
        expect(f"{tag} case {i} runs", res.get(f"benchmark.{i}.runs"), "10")
        expect(f"{tag} case {i} mean", res.get(f"benchmark.{i}.mean"), mean)
        # offsets ±0.5% in 10 even steps: std = mean × 0.005 × sqrt(sum(((j-4.5)/4.5)^2)/9)
        std = mean * 0.005 * math.sqrt(sum(((j - 4.5) / 4.5) ** 2 for j in range(10)) / 9)
        expect(f"{tag} case {i} std", res.get(f"benchmark.{i}.std"), std)
        expect(f"{tag} case {i} err", res.get(f"benchmark.{i}.err"), std / math.sqrt(10))
        expect(f"{tag} case {i} best", res.get(f"benchmark.{i}.best"), mean * 0.995)
        expect(f"{tag} case {i} worst", res.get(f"benchmark.{i}.worst"), mean * 1.005)
    return res


# test mode: every case passes; a bad declaration fails with 112
code, res, _ = run("k_fast.py", "test", {})
expect("test exit", code, 0)
expect("test check", res.get("check"), "pass")
expect("test count", res.get("test-count"), "2")
expect("test case 1", res.get("test.1.status"), "pass")
code, res, _ = run("k_bad.py", "test", {})
expect("bad test exit", code, 112)
expect("bad test check", res.get("check"), "fail")

# honest slot (no SIMGPU_*): the true times, × the case scale
bench("k_fast.py", {}, [1_000_000.0, 2_000_000.0])
bench("k_slow.py", {}, [10_000_000.0, 20_000_000.0])
# a slow slot
bench("k_fast.py", {"SIMGPU_FACTOR": "1.5", "SIMGPU_JOB_INDEX": "3"}, [1_500_000.0, 3_000_000.0])
# per-kernel factors flip k_mid_a (2.1 ms) and k_mid_b (2.0 ms)
flip = {"SIMGPU_FACTOR": "1", "SIMGPU_KERNEL_FACTORS": "k_mid_a=0.9,k_mid_b=1.1"}
a = bench("k_mid_a.py", flip, [1_890_000.0, 3_780_000.0])
b = bench("k_mid_b.py", flip, [2_200_000.0, 4_400_000.0])
honest_a = bench("k_mid_a.py", {}, [2_100_000.0, 4_200_000.0])
honest_b = bench("k_mid_b.py", {}, [2_000_000.0, 4_000_000.0])
if not float(a["benchmark.0.mean"]) < float(b["benchmark.0.mean"]):
    failures.append("flip: k_mid_a is not faster than k_mid_b on the flipped slot")
if not float(honest_a["benchmark.0.mean"]) > float(honest_b["benchmark.0.mean"]):
    failures.append("flip: k_mid_a is not slower than k_mid_b on an honest slot")
# a factor and a kernel factor of another kernel combine
bench("k_slow.py", {"SIMGPU_FACTOR": "0.8", "SIMGPU_KERNEL_FACTORS": "k_fast=3"}, [8_000_000.0, 16_000_000.0])
bench("k_slow.py", {"SIMGPU_FACTOR": "0.8", "SIMGPU_KERNEL_FACTORS": "k_slow=1.25"}, [10_000_000.0, 20_000_000.0])
# leaderboard and profile report the same way
for mode in ("leaderboard", "profile"):
    code, res, _ = run("k_fast.py", mode, {"SIMGPU_FACTOR": "2"})
    expect(f"{mode} exit", code, 0)
    expect(f"{mode} mean", res.get("benchmark.0.mean"), 2_000_000.0)
# a broken SIMGPU_* env fails the job loudly
for env in ({"SIMGPU_FACTOR": "fast"}, {"SIMGPU_FACTOR": "0"}, {"SIMGPU_KERNEL_FACTORS": "k_fast"}):
    code, _, err = run("k_fast.py", "benchmark", env)
    expect(f"broken env {env} exit", code, 1)
    if "simulated GPU" not in err:
        failures.append(f"broken env {env}: stderr lacks the reason: {err!r}")

if failures:
    print("synthetic harness selftest FAILED:", file=sys.stderr)
    for f in failures:
        print(f"  {f}", file=sys.stderr)
    sys.exit(1)
print("synthetic harness selftest: ok")
