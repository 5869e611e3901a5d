import sys

for i in range(5000):
    print(f"debug line {i}: " + "x" * 40)
print("END OF NOISE", file=sys.stderr)


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
