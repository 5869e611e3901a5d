"""A synthetic kernel 5% slower than k_mid_b: their order flips on a slot with
`kernel_factors: {k_mid_a: 0.9, k_mid_b: 1.1}`."""

KERNEL = "k_mid_a"
TRUE_TIME_NS = 2_100_000
