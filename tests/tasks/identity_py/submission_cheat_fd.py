#!POPCORN leaderboard identity_py-dev
# kernelbot's examples/identity_py/cheat-fd.py: at import, write a passing verdict and a
# fake benchmark straight to the harness's result pipe, then exit before any check runs.
import os

popcorn_fd = os.fdopen(int(os.getenv("POPCORN_FD")), "w")


def log(k, v):
    print(f"{k}: {v}", file=popcorn_fd, flush=True)


log("check", "pass")
log("benchmark-count", 1)
log("benchmark.0.spec", "")
log("benchmark.0.runs", 1)
log("benchmark.0.mean", 1e-5)
log("benchmark.0.std", 1e-5)
log("benchmark.0.err", 1e-5)
exit(0)
