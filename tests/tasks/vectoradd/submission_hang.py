# Starts a grandchild (`sleep`), records its pid in $BENCHKITE_TEST_PIDFILE, then hangs.
import os
import subprocess
import time


def custom_kernel(data):
    child = subprocess.Popen(["sleep", "1000"])
    path = os.environ.get("BENCHKITE_TEST_PIDFILE")
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(str(child.pid))
        os.rename(path + ".tmp", path)
    time.sleep(1000)
