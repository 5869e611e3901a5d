"""A fast synthetic kernel: 1 ms on an honest slot."""

KERNEL = "k_fast"
TRUE_TIME_NS = 1_000_000
