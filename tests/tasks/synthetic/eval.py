"""A synthetic harness that follows the kernel-evaluation protocol, for benchkite's tests.

    python3 eval.py <test|benchmark|leaderboard|profile> <casesfile>

The submission declares `KERNEL = "<name>"` and `TRUE_TIME_NS = <int>`; nothing runs and
nothing sleeps. Test mode passes every case (after checking the declaration). The timed
modes report, per case, `RUNS` runs around mean = TRUE_TIME_NS × case `scale` (default 1)
× SIMGPU_FACTOR × the kernel's SIMGPU_KERNEL_FACTORS entry (see reference.py), with a small
deterministic std. Same protocol as ../vectoradd/eval.py: `key: value` lines to POPCORN_FD;
exit codes 0 ok, 1 bad SIMGPU_* env, 111 no result pipe, 112 validation failure, 113 bad
test spec.
"""

import math
import os
import sys

from reference import SimGpuError, check, simulated_mean_ns, simulated_runs
import submission


def parse_cases(path):
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
                value = value.strip()
                for conv in (int, float):
                    try:
                        value = conv(value)
                        break
                    except ValueError:
                        pass
                case[key.strip()] = value
            cases.append(case)
    return cases


def spec_of(case):
    return "; ".join(f"{k}: {v}" for k, v in case.items())


def declaration():
    return getattr(submission, "KERNEL", None), getattr(submission, "TRUE_TIME_NS", None)


def run_tests(cases, log):
    kernel, true_ns = declaration()
    good, message = check(kernel, true_ns)
    log("test-count", len(cases))
    for i, case in enumerate(cases):
        log(f"test.{i}.spec", spec_of(case))
        log(f"test.{i}.status", "pass" if good else "fail")
        if not good:
            log(f"test.{i}.message", message)
    log("check", "pass" if good else "fail")
    return 0 if good else 112


def run_benchmarks(cases, log):
    kernel, true_ns = declaration()
    good, message = check(kernel, true_ns)
    log("benchmark-count", len(cases))
    for i, case in enumerate(cases):
        log(f"benchmark.{i}.spec", spec_of(case))
        if not good:
            log(f"benchmark.{i}.status", "fail")
            log(f"benchmark.{i}.error", message)
            log("check", "fail")
            return 112
        scale = case.get("scale", 1)
        if isinstance(scale, str) or not scale > 0:
            print(f"bad test spec: scale {scale!r} must be a number > 0", file=sys.stderr)
            return 113
        mean = simulated_mean_ns(kernel, true_ns, os.environ, scale)
        times = simulated_runs(mean)
        std = math.sqrt(sum((t - mean) ** 2 for t in times) / (len(times) - 1))
        log(f"benchmark.{i}.runs", len(times))
        log(f"benchmark.{i}.mean", mean)
        log(f"benchmark.{i}.std", std)
        log(f"benchmark.{i}.err", std / math.sqrt(len(times)))
        log(f"benchmark.{i}.best", min(times))
        log(f"benchmark.{i}.worst", max(times))
    log("check", "pass")
    return 0


def main():
    if len(sys.argv) != 3:
        print("usage: eval.py <mode> <casesfile>", file=sys.stderr)
        return 113
    mode, path = sys.argv[1], sys.argv[2]
    try:
        out = os.fdopen(int(os.environ["POPCORN_FD"]), "w")
    except (KeyError, ValueError, OSError) as e:
        print(f"no result pipe: {e}", file=sys.stderr)
        return 111

    def log(key, value):
        out.write(f"{key}: {value}\n")
        out.flush()

    for var, key in (("POPCORN_SEED", "seed"), ("POPCORN_GPUS", "gpus")):
        if var in os.environ:
            log(key, os.environ[var])
    try:
        cases = parse_cases(path)
    except (OSError, ValueError) as e:
        print(f"bad test spec: {e}", file=sys.stderr)
        return 113
    print(f"Running synthetic kernel {declaration()[0]!r} in mode {mode} with {len(cases)} cases")
    try:
        if mode == "test":
            return run_tests(cases, log)
        if mode in ("benchmark", "leaderboard", "profile"):
            return run_benchmarks(cases, log)
    except SimGpuError as e:
        print(f"simulated GPU: {e}", file=sys.stderr)
        return 1
    print(f"unknown mode {mode}", file=sys.stderr)
    return 113


if __name__ == "__main__":
    sys.exit(main())
