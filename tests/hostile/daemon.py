# Hostile submission: fork a daemon (double fork, setsid, closed descriptors) that outlives
# the stage and keeps running on the agent after the job (to spy on the next one). Prints
# the daemon's pid so the test can check that it is dead.
import os
import time

PATHS = {}


def _daemonize():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        pid2 = os.fork()
        if pid2 == 0:
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            for fd in range(0, 256):
                if fd != r:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            while True:
                time.sleep(3600)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    got = os.read(r, 32).decode()
    os.close(r)
    return got


print("hostile: daemon pid", _daemonize())


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
