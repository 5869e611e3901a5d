"""The simulated GPU's timing model for the synthetic task (see eval.py).

A synthetic kernel has a known true time (`TRUE_TIME_NS` of the submission). The simulated
agent that runs the job is one GPU slot: the Buildkite simulator hands it `SIMGPU_FACTOR`
(the slot's factor for this job: slow slot, noise, drift) and `SIMGPU_KERNEL_FACTORS`
(`name=factor,...`: per-kernel distortions). Without them the slot is honest (factor 1).
"""

import math

RUNS = 10
# Relative spread of the reported runs around the mean (deterministic, symmetric).
SPREAD = 0.005


class SimGpuError(ValueError):
    pass


def job_factor(env):
    raw = env.get("SIMGPU_FACTOR", "1")
    try:
        f = float(raw)
    except ValueError:
        raise SimGpuError(f"SIMGPU_FACTOR={raw!r} is not a number") from None
    if not (math.isfinite(f) and f > 0):
        raise SimGpuError(f"SIMGPU_FACTOR={raw!r} must be a finite number > 0")
    return f


def kernel_factors(env):
    raw = env.get("SIMGPU_KERNEL_FACTORS", "")
    out = {}
    for item in filter(None, raw.split(",")):
        name, sep, value = item.partition("=")
        try:
            f = float(value)
        except ValueError:
            f = float("nan")
        if not sep or not name or not (math.isfinite(f) and f > 0):
            raise SimGpuError(f"SIMGPU_KERNEL_FACTORS: bad item {item!r} (want name=factor, factor > 0)")
        out[name] = f
    return out


def simulated_mean_ns(kernel, true_time_ns, env, scale=1):
    """The mean time the simulated slot reports for `kernel`."""
    return true_time_ns * scale * job_factor(env) * kernel_factors(env).get(kernel, 1.0)


def simulated_runs(mean):
    """RUNS deterministic run times around `mean`: offsets -1..1 × SPREAD, mean zero."""
    half = (RUNS - 1) / 2
    return [mean * (1 + SPREAD * (j - half) / half) for j in range(RUNS)]


def check(kernel, true_time_ns):
    """A synthetic kernel is always correct; its declaration must be sane."""
    if not isinstance(kernel, str) or not kernel or any(c in kernel for c in ",= \t\n"):
        return False, f"KERNEL must be a non-empty name without ',', '=' or whitespace (got {kernel!r})"
    if not isinstance(true_time_ns, int) or isinstance(true_time_ns, bool) or true_time_ns <= 0:
        return False, f"TRUE_TIME_NS must be a positive int (got {true_time_ns!r})"
    return True, ""
