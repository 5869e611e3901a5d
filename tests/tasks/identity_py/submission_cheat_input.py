#!POPCORN leaderboard identity_py-dev
# kernelbot's examples/identity_py/cheat-input.py: overwrite the input in place, return
# the same garbage; a harness that checks against the (now overwritten) input it passed
# in sees a match.
from task import input_t, output_t


def custom_kernel(data: input_t) -> output_t:
    data[:] = [0.0] * len(data)
    return [0.0] * len(data)
