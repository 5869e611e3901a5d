"""See k_mid_a.py."""

KERNEL = "k_mid_b"
TRUE_TIME_NS = 2_000_000
