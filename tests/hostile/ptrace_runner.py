# Hostile submission: attach to the runner (its parent) with ptrace, to read its memory (the
# payload, the job token) or rewrite the result it is about to write.
import ctypes
import os

PATHS = {}

PTRACE_ATTACH = 16
PTRACE_DETACH = 17
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
for name, pid in (("parent", os.getppid()), ("init", 1)):
    r = _libc.ptrace(PTRACE_ATTACH, pid, None, None)
    err = ctypes.get_errno()
    if r == 0:
        print("hostile: attached to", name, pid)
        _libc.ptrace(PTRACE_DETACH, pid, None, None)
    else:
        print("hostile: refused", name, os.strerror(err))
# What it holds to try with: its credentials and limits.
with open("/proc/self/status") as f:
    for line in f:
        if line.split(":")[0] in ("Uid", "Groups", "CapEff", "CapPrm", "NoNewPrivs"):
            print("hostile: self", " ".join(line.split()))
with open("/proc/self/limits") as f:
    for line in f:
        if line.startswith(("Max processes", "Max open files", "Max file size", "Max core file size")):
            print("hostile: limit", " ".join(line.split()))
try:
    with open("/proc/%d/mem" % os.getppid(), "rb") as f:
        f.read(1)
    print("hostile: read parent memory")
except OSError as e:
    print("hostile: refused parent memory", type(e).__name__)


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
