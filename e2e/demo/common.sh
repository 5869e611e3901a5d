# shellcheck shell=bash
# Shared by e2e/demo/up and e2e/demo/down (sourced, not run). Expects $REPO.
#
# The demo runs on one of two clusters (e2e/demo/README.md):
#   own       its own local cluster benchkite-demo (e2e/cluster/up in target/demo), the
#             default when KUBECONFIG is unset;
#   existing  the cluster KUBECONFIG points at (kind, k3d, a real one): nothing of Kubernetes
#             is built, kubectl comes from PATH, and the demo keeps to a namespace of its own.
#
# Everything the demo writes lives in target/demo:
#   kubeconfig, kwok/, logs/       the demo cluster (own: e2e/cluster/up with BENCHKITE_E2E_DIR)
#   controller.log, simulator.log  the background processes' output
#   run/                           pid files, chosen ports, generated secrets (mode 600),
#                                  the simulator's config and its ready file; on an existing
#                                  cluster also its pinned kubeconfig (run/kubeconfig) and
#                                  what the demo created there (run/created-*)
#   jobs/                          the simulator's per-job directories

DEMO_DIR=$REPO/target/demo
RUN_DIR=$DEMO_DIR/run
export BENCHKITE_E2E_DIR=$DEMO_DIR
export BENCHKITE_E2E_CLUSTER=benchkite-demo
BENCHKITE=$REPO/target/debug/benchkite
SIMULATOR=$REPO/target/debug/buildkite-sim
# shellcheck disable=SC2034 # used by up and down
{
  KUBECONFIG_PATH=$DEMO_DIR/kubeconfig
  NAMESPACE=default
  POOL=h100
  QUEUE=nvidia-h100
  JOB=vectoradd-leaderboard
  # On an existing cluster: the demo's namespace, the label on everything it creates there
  # (demo-down deletes only objects that carry it), the file naming the cluster it uses
  # (mode, context, server) and its kubeconfig, pinned to that context.
  EXISTING_NAMESPACE=benchkite-demo
  DEMO_LABEL_KEY=app.kubernetes.io/managed-by
  DEMO_LABEL_VALUE=benchkite-demo
  DEMO_LABEL_JSONPATH='jsonpath={.metadata.labels.app\.kubernetes\.io/managed-by}'
  TARGET_FILE=$RUN_DIR/target
  EXISTING_KUBECONFIG=$RUN_DIR/kubeconfig
  CREATED_NAMESPACE_FILE=$RUN_DIR/created-namespace
  CREATED_CRDS_FILE=$RUN_DIR/created-crds
}
DEMO_STARTED=$SECONDS

# say MESSAGE: a progress line with the time and the seconds since the start.
say() { printf '%s [+%3ds] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - DEMO_STARTED))" "$*"; }
die() {
  trap - ERR
  say "error: $*" >&2
  exit 1
}

# progress MESSAGE: like say, but only when MESSAGE changed or 10 s passed since the last one.
_last_progress=
_last_progress_at=0
progress() {
  if [[ $1 != "$_last_progress" ]] || ((SECONDS - _last_progress_at >= 10)); then
    say "  $1"
    _last_progress=$1
    _last_progress_at=$SECONDS
  fi
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every second until it succeeds; fails after
# SECONDS, saying what it waited for.
wait_for() {
  local timeout=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      say "gave up after ${timeout}s waiting for $what" >&2
      return 1
    fi
    sleep 1
  done
}

# with_heartbeat WHAT COMMAND...: runs COMMAND, saying "still WHAT" every 30 s meanwhile (cargo
# and the cluster build print nothing for minutes when stdout is not a terminal).
with_heartbeat() {
  local what=$1 beat rc=0
  shift
  (while sleep 30 >/dev/null 2>&1; do say "  ... still $what"; done) &
  beat=$!
  "$@" || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  return "$rc"
}

# last_error LOG: the last error line of a log, without colour codes.
last_error() {
  local line
  line=$(sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null | grep -E '^Error|ERROR|WARN' | tail -n 1) || true
  echo "${line:-no error logged}"
}

# Identity of a demo process: its command line names the binary, and its environment or
# command line names a file under target/demo (a recycled pid is never taken for ours).
is_ours() { # is_ours PID NAME
  local pid=$1 name=$2 bin cmd env
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  case $name in
    controller) bin=$BENCHKITE ;;
    simulator) bin=$SIMULATOR ;;
    *) return 1 ;;
  esac
  # (No `| grep -q` here: under pipefail an early exit of grep can fail the pipeline.)
  cmd=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ ${cmd%%$'\n'*} == "$bin" ]] || return 1
  env=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ") || true
  [[ $cmd == *"$DEMO_DIR/"* || $env == *"$DEMO_DIR/"* ]]
}

# running_pid NAME: the pid from run/NAME.pid when that process is alive and ours.
running_pid() {
  local f=$RUN_DIR/$1.pid pid
  [[ -s $f ]] || return 0
  pid=$(<"$f")
  if is_ours "$pid" "$1"; then echo "$pid"; fi
  return 0
}

# start_background NAME LOG COMMAND...: starts COMMAND in its own session (Ctrl-C on make
# does not reach it), output appended to LOG, pid in run/NAME.pid.
start_background() {
  local name=$1 log=$2
  shift 2
  # The simulator prints its tokens when it starts: logs are private (mode 600).
  (umask 077 && printf '\n==== %s starting %s\n' "$(date -u +%FT%TZ)" "$name" >>"$log")
  setsid "$@" </dev/null >>"$log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

# stop NAME: SIGTERM the process of run/NAME.pid (if it is ours), SIGKILL after 10 s.
stop() {
  local name=$1 pid i
  pid=$(running_pid "$name")
  if [[ -n $pid ]]; then
    say "stopping the $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      is_ours "$pid" "$name" || break
      sleep 0.1
    done
    if is_ours "$pid" "$name"; then
      say "the $name did not stop within 10s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$RUN_DIR/$name.pid"
}

# target_field NAME: a field (mode, kubeconfig, context, server) of run/target, empty if unset.
target_field() {
  [[ -s $TARGET_FILE ]] || return 0
  sed -n "s/^$1=//p" "$TARGET_FILE" | head -n 1
}
