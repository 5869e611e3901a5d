# Never returns (no child processes, so kernelbot's subprocess.run can kill it cleanly).
import time


def custom_kernel(data):
    time.sleep(60)
