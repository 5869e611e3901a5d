"""A naive harness for the identity task, to show what the infrastructure alone gives: it
imports the submission into its own process (the submission can write to `POPCORN_FD`),
passes the very input it later checks against (in-place writes go unnoticed) and uses the
public seeds as they are (`POPCORN_SEED` ignored). Same protocol and exit codes as
eval.py. Never use it for a real task.
"""

import os
import sys
import time

from reference import check_implementation, generate_input
from submission import custom_kernel


def main():
    out = os.fdopen(int(os.environ["POPCORN_FD"]), "w")

    def log(key, value):
        out.write(f"{key}: {value}\n")
        out.flush()

    mode, path = sys.argv[1], sys.argv[2]
    cases = []
    with open(path) as f:
        for line in f:
            if line.strip():
                case = {k.strip(): int(v) for k, v in (p.split(":") for p in line.strip().split(";"))}
                cases.append((line.strip(), case))
    kind = "benchmark" if mode in ("benchmark", "leaderboard", "profile") else "test"
    log(f"{kind}-count", len(cases))
    ok = True
    for i, (spec, case) in enumerate(cases):
        log(f"{kind}.{i}.spec", spec)
        data = generate_input(**case)
        start = time.perf_counter_ns()
        output = custom_kernel(data)
        elapsed = time.perf_counter_ns() - start
        good, message = check_implementation(data, output)
        if not good:
            ok = False
            log(f"{kind}.{i}.status", "fail")
            log(f"{kind}.{i}.{'error' if kind == 'benchmark' else 'message'}", message)
        elif kind == "benchmark":
            for k, v in (("runs", 1), ("mean", elapsed), ("std", 0.0), ("err", 0.0)):
                log(f"{kind}.{i}.{k}", v)
        else:
            log(f"{kind}.{i}.status", "pass")
    log("check", "pass" if ok else "fail")
    return 0 if ok else 112


if __name__ == "__main__":
    sys.exit(main())
