#!POPCORN leaderboard identity_py-dev
# A wrong identity (kernelbot's examples name theirs wrong.py): from index 100 on, every
# element is off by one, so the 64-element test passes and the 256-element test fails.
from task import input_t, output_t


def custom_kernel(data: input_t) -> output_t:
    return [x if i < 100 else x + 1.0 for i, x in enumerate(data)]
