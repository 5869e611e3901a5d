"""A slow synthetic kernel: 10 ms on an honest slot."""

KERNEL = "k_slow"
TRUE_TIME_NS = 10_000_000
