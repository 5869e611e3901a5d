"""Reference vector add for the test task: inputs, the expected output, the checker."""

import random


def generate_input(size, seed, **_):
    rng = random.Random(seed)
    return [rng.random() for _ in range(size)], [rng.random() for _ in range(size)]


def ref_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]


def check(got, expected):
    if len(got) != len(expected):
        return False, f"length mismatch: got {len(got)}, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        if abs(g - e) > 1e-9:
            return False, f"mismatch at index {i}: got {g}, expected {e}"
    return True, ""
