#!POPCORN leaderboard identity_py-dev
# kernelbot's examples/identity_py/cheat-rng.py: the benchmark seeds are public (task.yml),
# so the largest case's "answer" is regenerated from its public seed without reading the
# input. Only a secret seed (POPCORN_SEED, which the harness must keep from the
# submission) defeats it.
import os
import random

from task import input_t, output_t

PUBLIC_SIZE, PUBLIC_SEED = 4096, 125432


def custom_kernel(data: input_t) -> output_t:
    if len(data) == PUBLIC_SIZE:
        assert "POPCORN_SEED" not in os.environ
        rng = random.Random(PUBLIC_SEED)
        return [rng.random() for _ in range(PUBLIC_SIZE)]
    return list(data)
