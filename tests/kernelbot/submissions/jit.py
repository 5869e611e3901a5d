# Behaves like a submission that builds a torch extension with load_inline(verbose=True):
# the first import in a directory "compiles" for 2 s and prints the compiler line (with
# -DTORCH_EXTENSION_NAME), later imports find the build cache and print nothing.
import os
import sys
import time

if not os.path.exists("build.cache"):
    print("c++ -MMD -MF main.o.d -DTORCH_EXTENSION_NAME=jit_ext -DTORCH_API_INCLUDE_EXTENSION_H -c main.cpp")
    print("compile warning", file=sys.stderr)
    time.sleep(2)
    open("build.cache", "w").close()


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
