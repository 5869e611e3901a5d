# Hostile submission: a fork bomb. Every process forks until fork fails, then sleeps; only
# the first one goes on and returns correct results. Bounded by RLIMIT_NPROC (and, should
# that fail, by PATHS["max_forks"] so that the test host survives a broken sandbox).
import os
import time

PATHS = {}

_me = os.getpid()
_forks = 0
_limit = int(PATHS.get("max_forks", 400))
while _forks < _limit:
    try:
        pid = os.fork()
    except OSError as e:
        print("hostile: fork refused after", _forks, type(e).__name__) if os.getpid() == _me else None
        break
    if pid == 0:
        _forks = _limit  # children stop forking and hold their slot
        while True:
            time.sleep(3600)
    _forks += 1
if os.getpid() == _me:
    print("hostile: forked", _forks)


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
