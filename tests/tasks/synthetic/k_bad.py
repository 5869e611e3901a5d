"""A broken declaration: test mode fails."""

KERNEL = "bad,name"
TRUE_TIME_NS = 0
