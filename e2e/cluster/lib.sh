# shellcheck shell=bash
# Shared settings for e2e/cluster/up and e2e/cluster/down (sourced, not run).
#
# Everything the cluster writes lives in one directory, $E2E_DIR
# (BENCHKITE_E2E_DIR, default <repo>/target/e2e; a relative path is taken
# relative to the repo root):
#   $E2E_DIR/kubeconfig                        admin kubeconfig (self-contained)
#   $E2E_DIR/kwok/                             kwokctl's workdir (KWOK_WORKDIR)
#   $E2E_DIR/kwok/clusters/<name>/{pids,logs}  component pid files and logs
#   $E2E_DIR/logs/                             logs of up/down steps

CLUSTER_DIR_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_DIR_SCRIPTS/../.." && pwd)

E2E_DIR=${BENCHKITE_E2E_DIR:-target/e2e}
[[ $E2E_DIR == /* ]] || E2E_DIR="$REPO_ROOT/$E2E_DIR"
CLUSTER_NAME=${BENCHKITE_E2E_CLUSTER:-benchkite-e2e}
KUBECONFIG_PATH="$E2E_DIR/kubeconfig"
LOG_DIR="$E2E_DIR/logs"

# kwokctl reads its config and keeps its clusters under KWOK_WORKDIR (default
# ~/.kwok): keep ours apart from any other kwok user on the machine.
export KWOK_WORKDIR="$E2E_DIR/kwok"
KWOK_CLUSTER_DIR="$KWOK_WORKDIR/clusters/$CLUSTER_NAME"

# Label on every node `up` manages; value "default" or "extra".
# shellcheck disable=SC2034 # used by up
FLEET_LABEL=e2e.benchkite.dev/fleet

# Set by the calling script for its messages.
SCRIPT_NAME=${SCRIPT_NAME:-cluster}

log() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }

# The directory holding already built cluster binaries (with or without helm), or empty
# when there is none. Builds nothing.
cached_bin_dir() {
  "$CLUSTER_DIR_SCRIPTS/build-binaries" --cached 2>/dev/null || true
}

# Pids of the cluster's component processes that are still alive, from the
# pid files kwokctl writes. A pid only counts if its command line mentions the
# cluster dir, so a recycled pid never gets another process killed.
cluster_pids() {
  local f
  [[ -d $KWOK_CLUSTER_DIR/pids ]] || return 0
  for f in "$KWOK_CLUSTER_DIR"/pids/*.pid; do
    [[ -f $f ]] && alive_pids "$(<"$f")"
  done
  return 0
}

# alive_pids PID...: those PIDs still running a process of this cluster.
alive_pids() {
  local pid
  for pid in "$@"; do
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || continue
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$KWOK_CLUSTER_DIR" && echo "$pid"
  done
  return 0
}

# Stops the cluster: kwokctl first (when it is built), then whatever the pid
# files named (TERM, then KILL after 10 s), then removes its state. Fails, and
# keeps the state, if a process survives.
stop_cluster() {
  local bin pids i
  pids=$(cluster_pids)
  bin=$(cached_bin_dir)
  if [[ -n $bin && -f $KWOK_CLUSTER_DIR/kwok.yaml ]]; then
    mkdir -p "$LOG_DIR"
    "$bin/kwokctl" delete cluster --name "$CLUSTER_NAME" --kubeconfig "" \
      >>"$LOG_DIR/kwokctl-delete.log" 2>&1 8>&- || true
  fi
  # shellcheck disable=SC2086 # one pid per word
  pids=$(alive_pids $pids)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      # shellcheck disable=SC2086
      pids=$(alive_pids $pids)
      [[ -z $pids ]] && break
      sleep 0.1
    done
    if [[ -n $pids ]]; then
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      sleep 0.5
      # shellcheck disable=SC2086
      pids=$(alive_pids $pids)
    fi
  fi
  if [[ -n $pids ]]; then
    log "processes of cluster $CLUSTER_NAME survived: ${pids//$'\n'/ }"
    return 1
  fi
  rm -rf "$KWOK_CLUSTER_DIR" "$KUBECONFIG_PATH"
}
