# Hostile submission: fill the scratch disk (the work directory) until something stops it.
# Bounded by PATHS["max_mib"] so that a broken sandbox cannot fill the test host.
import os

PATHS = {}

_chunk = b"\0" * (1024 * 1024)
_written = 0
try:
    os.makedirs("fill", exist_ok=True)
    for i in range(int(PATHS.get("max_mib", 64))):
        with open("fill/%d" % i, "wb") as f:
            f.write(_chunk)
            f.flush()
            os.fsync(f.fileno())
        _written += 1
except OSError as e:
    print("hostile: stopped", type(e).__name__)
print("hostile: wrote MiB", _written)


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
