"""The identity task's harness, after kernelbot's `examples/eval.py`, on the CPU with the
standard library only.

    python3 eval.py <test|benchmark|leaderboard|profile> <casesfile>

What it does that the infrastructure cannot do for it (see README.md):
- the result pipe (`POPCORN_FD`) is made non-inheritable and the submission runs in a
  worker process started without it and without `POPCORN_*` in its environment
  (kernelbot: a `spawn` pool, `os.set_inheritable(fd, False)`);
- the worker gets a copy of each input; the check uses the harness's own copy
  (kernelbot: `_clone_data`);
- a secret seed (`POPCORN_SEED`) is combined into every case's public seed (kernelbot:
  `_combine`) and unset before the submission runs;
- the harness makes itself non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`) so that the worker,
  running as the same user, cannot read `/proc/<harness>/environ` (the seed) or open
  `/proc/<harness>/fd/*` (the result pipe). kernelbot does not do this.

Exit codes: 0 ok, 111 no result pipe, 112 validation failure, 113 bad test spec.
"""

import json
import math
import os
import subprocess
import sys
import time

BENCH_RUNS = 10


def combine(a, b):
    # kernelbot's `_combine` (Cantor pairing): large secret seed, large case seed.
    return int(a + (a + b) * (a + b + 1) // 2)


def parse_cases(path, seed):
    cases = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            case = {}
            for part in line.split(";"):
                key, sep, value = part.partition(":")
                if not sep:
                    raise ValueError(f"bad case line {line!r}")
                case[key.strip()] = int(value.strip())
            if seed is not None and "seed" in case:
                case["seed"] = combine(case["seed"], seed)
            cases.append((line, case))
    return cases


def harden():
    """PR_SET_DUMPABLE=0: /proc/<this pid>/{environ,fd,mem} become root's."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(4, 0, 0, 0, 0) != 0:
            print(f"prctl(PR_SET_DUMPABLE) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    except (OSError, AttributeError) as e:
        print(f"prctl unavailable: {e}", file=sys.stderr)


def run_worker(inputs, runs):
    """Runs the submission on copies of `inputs` in a fresh process; returns (outputs,
    times) or raises RuntimeError with what went wrong."""
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPCORN_")}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", str(w), str(runs)],
        stdin=subprocess.PIPE,
        env=env,
        pass_fds=(w,),
    )
    os.close(w)
    proc.stdin.write(json.dumps(inputs).encode())
    proc.stdin.close()
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    code = proc.wait()
    if code != 0:
        raise RuntimeError(f"submission worker exited with {code}")
    try:
        got = json.loads(raw)
        return got["outputs"], got["times"]
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"submission worker gave no result: {e}") from None


def worker(fd, runs):
    out = os.fdopen(fd, "w")
    inputs = json.loads(sys.stdin.read())
    from submission import custom_kernel

    outputs, times = [], []
    for data in inputs:
        outputs.append(custom_kernel(list(data)))
        t = []
        for _ in range(runs):
            copy = list(data)
            start = time.perf_counter_ns()
            custom_kernel(copy)
            t.append(time.perf_counter_ns() - start)
        times.append(t)
    out.write(json.dumps({"outputs": outputs, "times": times}))
    out.close()
    return 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        return worker(int(sys.argv[2]), int(sys.argv[3]))
    harden()
    fd = os.getenv("POPCORN_FD")
    if not fd:
        return 111
    if len(sys.argv) != 3:
        return 2
    mode, path = sys.argv[1], sys.argv[2]
    seed = os.getenv("POPCORN_SEED")
    os.unsetenv("POPCORN_SEED")
    os.environ.pop("POPCORN_SEED", None)
    seed = int(seed) if seed else None
    os.set_inheritable(int(fd), False)
    out = os.fdopen(int(fd), "w")

    def log(key, value):
        out.write(f"{key}: {value}\n")
        out.flush()

    try:
        cases = parse_cases(path, seed)
    except (OSError, ValueError) as e:
        print(f"bad test spec: {e}", file=sys.stderr)
        return 113

    from reference import check_implementation, generate_input

    inputs = [generate_input(**case) for _, case in cases]
    bench = mode in ("benchmark", "leaderboard", "profile")
    kind = "benchmark" if bench else "test"
    log(f"{kind}-count", len(cases))
    try:
        outputs, times = run_worker(inputs, BENCH_RUNS if bench else 0)
    except RuntimeError as e:
        log(f"{kind}.0.status", "fail")
        log(f"{kind}.0.{'error' if bench else 'message'}", str(e))
        log("check", "fail")
        return 112
    ok = True
    for i, ((spec, _), data, output) in enumerate(zip(cases, inputs, outputs)):
        log(f"{kind}.{i}.spec", spec)
        good, message = check_implementation(data, output)
        if not good:
            ok = False
            log(f"{kind}.{i}.status", "fail")
            log(f"{kind}.{i}.{'error' if bench else 'message'}", message)
            if bench:
                break
            continue
        if bench:
            t = times[i]
            mean = sum(t) / len(t)
            std = math.sqrt(sum((x - mean) ** 2 for x in t) / (len(t) - 1))
            log(f"{kind}.{i}.runs", len(t))
            log(f"{kind}.{i}.mean", mean)
            log(f"{kind}.{i}.std", std)
            log(f"{kind}.{i}.err", std / math.sqrt(len(t)))
        else:
            log(f"{kind}.{i}.status", "pass")
    log("check", "pass" if ok else "fail")
    return 0 if ok else 112


if __name__ == "__main__":
    sys.exit(main())
