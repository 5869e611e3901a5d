"""Reference of the identity task (kernelbot's `examples/identity_py/reference.py` on the
CPU): inputs from a seeded generator, the identity as reference, an exact checker."""

import random
from typing import Tuple

from task import input_t, output_t


def generate_input(size: int, seed: int) -> input_t:
    rng = random.Random(seed)
    return [rng.random() for _ in range(size)]


def ref_kernel(data: input_t) -> output_t:
    return list(data)


def check_implementation(data: input_t, output: output_t) -> Tuple[bool, str]:
    expected = ref_kernel(data)
    if not isinstance(output, list) or len(output) != len(expected):
        got = len(output) if isinstance(output, list) else type(output).__name__
        return False, f"mismatch found! size: got {got}, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(output, expected)):
        if g != e:
            return False, f"mismatch found! custom implementation doesn't match reference: at {i}: {g} != {e}"
    return True, ""
