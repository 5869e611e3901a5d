"""A tiny CPU harness that follows the kernel-evaluation protocol, for benchkite's tests.

    python3 eval.py <test|benchmark|leaderboard|profile> <casesfile>

Each line of the cases file is `k: v; k: v`. Results go to the file descriptor named by
POPCORN_FD as `key: value` lines. Exit codes: 0 ok, 111 no result pipe, 112 validation
failure, 113 bad test spec.
"""

import math
import os
import sys
import time

from reference import check, generate_input, ref_kernel
from submission import custom_kernel

BENCH_RUNS = 20


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
                try:
                    value = int(value)
                except ValueError:
                    pass
                case[key.strip()] = value
            cases.append(case)
    return cases


def spec_of(case):
    return "; ".join(f"{k}: {v}" for k, v in case.items())


def run_tests(cases, log):
    ok = True
    log("test-count", len(cases))
    for i, case in enumerate(cases):
        log(f"test.{i}.spec", spec_of(case))
        data = generate_input(**case)
        good, message = check(custom_kernel(data), ref_kernel(data))
        log(f"test.{i}.status", "pass" if good else "fail")
        if not good:
            log(f"test.{i}.message", message)
            ok = False
    log("check", "pass" if ok else "fail")
    return 0 if ok else 112


def run_benchmarks(cases, log):
    log("benchmark-count", len(cases))
    for i, case in enumerate(cases):
        log(f"benchmark.{i}.spec", spec_of(case))
        data = generate_input(**case)
        good, message = check(custom_kernel(data), ref_kernel(data))
        if not good:
            log(f"benchmark.{i}.status", "fail")
            log(f"benchmark.{i}.error", message)
            log("check", "fail")
            return 112
        times = []
        for _ in range(BENCH_RUNS):
            start = time.perf_counter_ns()
            custom_kernel(data)
            times.append(time.perf_counter_ns() - start)
        mean = sum(times) / len(times)
        std = math.sqrt(sum((t - mean) ** 2 for t in times) / (len(times) - 1))
        log(f"benchmark.{i}.runs", len(times))
        log(f"benchmark.{i}.mean", mean)
        log(f"benchmark.{i}.std", std)
        log(f"benchmark.{i}.err", std / math.sqrt(len(times)))
        log(f"benchmark.{i}.best", float(min(times)))
        log(f"benchmark.{i}.worst", float(max(times)))
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
    print(f"Running in mode {mode} with {len(cases)} cases")
    if mode == "test":
        return run_tests(cases, log)
    if mode in ("benchmark", "leaderboard", "profile"):
        return run_benchmarks(cases, log)
    print(f"unknown mode {mode}", file=sys.stderr)
    return 113


if __name__ == "__main__":
    sys.exit(main())
