"""Types of the identity task (kernelbot's `examples/identity_py/task.py`, CPU edition:
a list of floats instead of a CUDA tensor)."""

from typing import List, TypedDict

input_t = List[float]
output_t = input_t


class TestSpec(TypedDict):
    size: int
    seed: int
