# Correct, but leaves a process behind that leaves the process group (setsid) and records
# its pid in $BENCHKITE_TEST_PIDFILE.
import os

_started = False


def custom_kernel(data):
    global _started
    if not _started:
        _started = True
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.execvp("sleep", ["sleep", "1000"])
        path = os.environ.get("BENCHKITE_TEST_PIDFILE")
        if path:
            with open(path, "w") as f:
                f.write(str(pid))
    a, b = data
    return [x + y for x, y in zip(a, b)]
