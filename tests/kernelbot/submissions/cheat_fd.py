# A cheat in the spirit of kernelbot's examples/identity_py/cheat-fd.py: instead of being a
# kernel, it writes a passing verdict and a tiny benchmark time straight to the result file
# descriptor when the harness imports it, then exits before the harness can check anything.
import os

_out = os.fdopen(int(os.environ["POPCORN_FD"]), "w")
for key, value in [
    ("check", "pass"),
    ("benchmark-count", 1),
    ("benchmark.0.spec", ""),
    ("benchmark.0.runs", 1),
    ("benchmark.0.mean", 1e-5),
    ("benchmark.0.std", 1e-5),
    ("benchmark.0.err", 1e-5),
]:
    print(f"{key}: {value}", file=_out, flush=True)
exit(0)
