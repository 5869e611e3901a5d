# The smallest harness: reports a pass and exits. Used to measure the runner's overhead.
import os

os.write(int(os.environ["POPCORN_FD"]), b"check: pass\n")
