# Hostile submission: read the agent token file and the queue's result key (root-only files
# of the agent pod) and print them.
PATHS = {}

_targets = [
    PATHS.get("token_file", "/var/run/benchkite/agent-token/token"),
    PATHS.get("key_file", "/var/run/benchkite/result-key/key"),
    "/buildkite/buildkite-agent.cfg",
]
for path in _targets:
    try:
        with open(path) as f:
            print("hostile: read", path, f.read())
    except OSError as e:
        print("hostile: refused", path, type(e).__name__)


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
