#!/usr/bin/env bash
# `COND && ok ... || fail ...` is used throughout: ok always returns 0, so fail runs only when
# COND is false.
# shellcheck disable=SC2015
#
# Static check of images/agent/Dockerfile, runnable without a container engine.
#
#   images/agent/check.sh [DOCKERFILE]                 check (default: the Dockerfile next to this script)
#   images/agent/check.sh --upstream AGENT_GIT_DIR     also verify the facts below against buildkite/agent
#   images/agent/check.sh --ssh-env-config GIT_DIR     also verify them against buildkite/docker-ssh-env-config
#   images/agent/check.sh --self-test                  check, then prove each check fails on a broken copy
#
# It parses the Dockerfile into a model of every stage (files, ENV, USER, VOLUME, ENTRYPOINT,
# CMD), seeded for external base images with the facts below, and asserts for both targets
# (`agent`, `agent-cuda`): the entrypoint chain of the official image resolves to files that
# exist in the stage, `benchkite` is on PATH, BUILDKITE_SKIP_CHECKOUT=true, the agent version is
# the pinned published one, users, config and directories match the official image. Exit 1 on
# any failure. Needs bash >= 4, git (only for --upstream / --ssh-env-config), coreutils.
set -uo pipefail

# ---- Facts about the official image, each checked by --upstream / --ssh-env-config ----------
# buildkite/agent tag v3.137.0 (commit d312b88564052a9742f6c50e008c07e5d6035511).
PINNED_VERSION=3.137.0
OFFICIAL_IMAGE="buildkite/agent:${PINNED_VERSION}-ubuntu-22.04"
# packaging/docker/ubuntu-22.04/Dockerfile
OFFICIAL_ENTRYPOINT='["buildkite-agent-entrypoint"]'
OFFICIAL_CMD='["start"]'
OFFICIAL_CONFIG=/buildkite/buildkite-agent.cfg
OFFICIAL_FILES=(/usr/local/bin/buildkite-agent /usr/local/bin/buildkite-agent-entrypoint
  /usr/local/bin/ssh-env-config.sh "$OFFICIAL_CONFIG")
OFFICIAL_DIRS=(/buildkite/builds /buildkite/hooks /buildkite/plugins)
OFFICIAL_VOLUME=/buildkite
# packaging/docker/ubuntu-22.04/entrypoint.sh
ENTRYPOINT_SHEBANG='#!/usr/bin/env bash'
ENTRYPOINT_RUN_PARTS=/bin/run-parts
ENTRYPOINT_EXEC='exec /usr/bin/tini -- ssh-env-config.sh /usr/local/bin/buildkite-agent "$@"'
# buildkite/docker-ssh-env-config ssh-env-config.sh (commit 0b68179d): its interpreter and the
# programs it runs (it ends in `exec "$@"`).
SSH_ENV_CONFIG_SHEBANG='#!/bin/bash'
SSH_ENV_CONFIG_TOOLS=(mkdir chmod cp base64 tr touch)
# What public.ecr.aws/buildkite/agent-base:ubuntu-jammy provides: the packages the ubuntu-22.04
# Dockerfile installed itself before commit 96223f722 ("Switch to agent-base images"), and its
# /usr/sbin/tini link (.buildkite/steps/test-docker-image.sh: test_tini_old_path).
AGENT_BASE_SWITCH_COMMIT=96223f722d7c121d727b9c1553e9888ab7cf3bf0
AGENT_BASE_PACKAGES=(bash ca-certificates curl git openssh-client python3 python3-pip tini)

# ---- Package and base-image catalogue (Ubuntu 22.04 file lists, merged /usr) -----------------
declare -A PKG_FILES=(
  [bash]="/usr/bin/bash"
  [ca-certificates]="/etc/ssl/certs/ca-certificates.crt"
  [curl]="/usr/bin/curl"
  [git]="/usr/bin/git"
  [openssh-client]="/usr/bin/ssh /usr/bin/ssh-keyscan"
  [python3]="/usr/bin/python3"
  [python3-pip]="/usr/bin/pip3"
  [tini]="/usr/bin/tini /usr/bin/tini-static"
)
UBUNTU_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Essential packages of every ubuntu:22.04 image (coreutils, bash, debianutils).
UBUNTU_FILES=(/usr/bin/env /usr/bin/sh /usr/bin/bash /usr/bin/run-parts /usr/bin/mkdir
  /usr/bin/chmod /usr/bin/cp /usr/bin/ln /usr/bin/touch /usr/bin/base64 /usr/bin/tr)

# ---- Model -----------------------------------------------------------------------------------
declare -A FILES=()    # "stage|/path" -> f (file) | d (directory)
declare -A ORIGIN=()   # "stage|/path" -> where the file came from
declare -A ENVS=()     # "stage|NAME" -> value
declare -A META=()     # "stage|ENTRYPOINT" "stage|CMD" "stage|USER" "stage|VOLUME" "stage|IMAGE" "stage|PARENT"
declare -A GARGS=()    # global ARG defaults
STAGES=()
FAILS=0

ok() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; FAILS=$((FAILS + 1)); }

# Merged /usr (Ubuntu >= 20.04, the CUDA and agent bases): /bin, /sbin, /lib are links into /usr.
norm() {
  local p=$1
  case $p in
    /bin/*) p=/usr/bin/${p#/bin/} ;;
    /sbin/*) p=/usr/sbin/${p#/sbin/} ;;
    /lib/*) p=/usr/lib/${p#/lib/} ;;
  esac
  p=${p%/}
  printf '%s' "${p:-/}"
}

add_file() { # stage path kind origin
  local p
  p=$(norm "$2")
  FILES["$1|$p"]=$3
  ORIGIN["$1|$p"]=$4
  # Parent directories exist too.
  local d=${p%/*}
  while [[ -n $d ]]; do
    [[ -n ${FILES["$1|$d"]:-} ]] && break
    FILES["$1|$d"]=d
    d=${d%/*}
  done
}
has() { [[ -n ${FILES["$1|$(norm "$2")"]:-} ]]; }

# Expands ${NAME} and $NAME from an associative "prefix|NAME" lookup function.
expand() { # string lookup-fn
  local s=$1 fn=$2 out="" name
  while [[ $s =~ ^([^$]*)\$(\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))(.*)$ ]]; do
    name=${BASH_REMATCH[3]:-${BASH_REMATCH[4]}}
    out+=${BASH_REMATCH[1]}$($fn "$name")
    s=${BASH_REMATCH[5]}
  done
  printf '%s' "$out$s"
}
garg() { printf '%s' "${GARGS[$1]:-}"; }
CUR=""
senv() { printf '%s' "${ENVS["$CUR|$1"]:-}"; }

which_in() { # stage name -> path on the stage's PATH (or the name if absolute and present)
  local st=$1 n=$2 dir
  if [[ $n == /* ]]; then
    has "$st" "$n" && printf '%s' "$(norm "$n")"
    return
  fi
  local IFS=:
  for dir in ${ENVS["$st|PATH"]:-}; do
    if has "$st" "$dir/$n"; then printf '%s' "$(norm "$dir/$n")"; return; fi
  done
}

json_norm() { sed -E 's/[[:space:]]*([][,])[[:space:]]*/\1/g; s/^[[:space:]]+|[[:space:]]+$//g' <<<"$1"; }
json_argv() { grep -oE '"[^"]*"' <<<"$1" | sed -E 's/^"|"$//g'; }

seed_ubuntu() { # stage
  local f
  for f in "${UBUNTU_FILES[@]}"; do add_file "$1" "$f" f "base ubuntu:22.04"; done
  add_file "$1" /root d "base ubuntu:22.04"
  ENVS["$1|PATH"]=$UBUNTU_PATH
  META["$1|USER"]=""
  META["$1|CMD"]='["bash"]'
  META["$1|ENTRYPOINT"]=""
}

install_pkgs() { # stage origin pkg...
  local st=$1 origin=$2 pkg f
  shift 2
  for pkg in "$@"; do
    if [[ -z ${PKG_FILES[$pkg]+x} ]]; then continue; fi
    for f in ${PKG_FILES[$pkg]}; do add_file "$st" "$f" f "$origin (apt $pkg)"; done
  done
}

seed_external() { # stage image
  local st=$1 img=$2 f
  case $img in
    buildkite/agent:*-ubuntu-22.04)
      seed_ubuntu "$st"
      install_pkgs "$st" "agent-base:ubuntu-jammy" "${AGENT_BASE_PACKAGES[@]}"
      add_file "$st" /usr/sbin/tini f "agent-base:ubuntu-jammy (ln -s)"
      for f in "${OFFICIAL_FILES[@]}"; do add_file "$st" "$f" f "$img"; done
      for f in "${OFFICIAL_DIRS[@]}"; do add_file "$st" "$f" d "$img"; done
      ENVS["$st|BUILDKITE_AGENT_CONFIG"]=$OFFICIAL_CONFIG
      ENVS["$st|PATH"]=/usr/local/bin:$UBUNTU_PATH
      META["$st|ENTRYPOINT"]=$OFFICIAL_ENTRYPOINT
      META["$st|CMD"]=$OFFICIAL_CMD
      META["$st|VOLUME"]=$OFFICIAL_VOLUME
      ;;
    nvidia/cuda:*-ubuntu22.04)
      seed_ubuntu "$st"
      [[ $img == *-devel-* ]] && add_file "$st" /usr/local/cuda/bin/nvcc f "$img"
      add_file "$st" /opt/nvidia/nvidia_entrypoint.sh f "$img"
      ENVS["$st|PATH"]=/usr/local/nvidia/bin:/usr/local/cuda/bin:$UBUNTU_PATH
      META["$st|ENTRYPOINT"]='["/opt/nvidia/nvidia_entrypoint.sh"]'
      META["$st|CMD"]=""
      ;;
    rust:*-alpine)
      add_file "$st" /bin/sh f "$img"
      ENVS["$st|PATH"]=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      ;;
    *) fail "stage $st: base image $img is not in this script's catalogue" ;;
  esac
}

inherit() { # child parent
  local k
  for k in "${!FILES[@]}"; do
    [[ $k == "$2|"* ]] && FILES["$1|${k#"$2|"}"]=${FILES[$k]} && ORIGIN["$1|${k#"$2|"}"]=${ORIGIN[$k]:-}
  done
  for k in "${!ENVS[@]}"; do [[ $k == "$2|"* ]] && ENVS["$1|${k#"$2|"}"]=${ENVS[$k]}; done
  for k in ENTRYPOINT CMD USER VOLUME; do META["$1|$k"]=${META["$2|$k"]:-}; done
  META["$1|PARENT"]=$2
  META["$1|IMAGE"]=${META["$2|IMAGE"]:-}
}

is_stage() { local s; for s in "${STAGES[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

do_copy() { # stage args...
  local st=$1 from="" a
  shift
  local args=()
  for a in "$@"; do
    case $a in
      --from=*) from=${a#--from=} ;;
      --*) ;;
      *) args+=("$a") ;;
    esac
  done
  local dest=${args[-1]} src k rel
  unset 'args[-1]'
  for src in "${args[@]}"; do
    if [[ -z $from ]]; then
      # Build context: the repository root. `COPY . .` has nothing to resolve.
      [[ $src == . ]] && continue
      [[ -e $ROOT/$src ]] || fail "stage $st: COPY $src: not in the build context"
      add_file "$st" "$dest" f "context:$src"
      continue
    fi
    if ! is_stage "$from"; then
      fail "stage $st: COPY --from=$from: not a stage of this Dockerfile"
      continue
    fi
    if ! has "$from" "$src"; then
      fail "stage $st: COPY --from=$from $src: $src does not exist in stage $from"
      continue
    fi
    local target=$dest
    [[ $dest == */ ]] && target=${dest%/}/${src##*/}
    if [[ ${FILES["$from|$(norm "$src")"]} == d ]]; then
      local prefix
      prefix=$(norm "$src")
      for k in "${!FILES[@]}"; do
        [[ $k == "$from|$prefix" || $k == "$from|$prefix/"* ]] || continue
        rel=${k#"$from|$prefix"}
        add_file "$st" "$(norm "$target")$rel" "${FILES[$k]}" "from $from:$prefix$rel"
      done
    else
      add_file "$st" "$target" f "from $from:$(norm "$src")"
    fi
  done
}

do_run() { # stage command-string
  local st=$1 seg words w i
  local cmd=$2
  cmd=${cmd//&&/;}
  local IFS=';'
  read -ra segs <<<"$cmd"
  IFS=$' \t\n'
  for seg in "${segs[@]}"; do
    read -ra words <<<"$seg"
    # Drop leading VAR=value assignments and RUN --mount flags.
    while ((${#words[@]})) && [[ ${words[0]} == *=* || ${words[0]} == --* ]]; do words=("${words[@]:1}"); done
    ((${#words[@]})) || continue
    case ${words[0]} in
      apt-get | apt)
        if [[ ${words[*]} == *" install "* ]]; then
          local pkgs=() seen=0
          for w in "${words[@]:1}"; do
            [[ $w == install ]] && seen=1 && continue
            ((seen)) && [[ $w != -* ]] && pkgs+=("$w")
          done
          install_pkgs "$st" "RUN apt-get" "${pkgs[@]}"
        fi
        ;;
      ln) add_file "$st" "${words[-1]}" f "RUN ln" ;;
      mkdir) for w in "${words[@]:1}"; do [[ $w == -* ]] || add_file "$st" "$w" d "RUN mkdir"; done ;;
      install)
        [[ ${words[-1]} == /* ]] && add_file "$st" "${words[-1]}" f "RUN install"
        ;;
      curl)
        for ((i = 1; i < ${#words[@]} - 1; i++)); do
          [[ ${words[i]} == -o || ${words[i]} =~ ^-[A-Za-z]*o$ ]] && add_file "$st" "${words[i + 1]}" f "RUN curl"
        done
        ;;
    esac
  done
}

parse() { # dockerfile
  local line inst rest joined="" st=""
  local -a lines=()
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*# ]] && continue
    if [[ $line == *\\ ]]; then
      joined+="${line%\\} "
      continue
    fi
    joined+=$line
    [[ -n ${joined//[[:space:]]/} ]] && lines+=("$joined")
    joined=""
  done <"$1"
  [[ -n ${joined//[[:space:]]/} ]] && lines+=("$joined")

  for line in "${lines[@]}"; do
    read -r inst rest <<<"$line"
    inst=${inst^^}
    case $inst in
      ARG)
        if [[ -z $st ]]; then
          local n=${rest%%=*} v=""
          [[ $rest == *=* ]] && v=${rest#*=}
          GARGS[$n]=$v
        fi
        ;;
      FROM)
        local -a w
        read -ra w <<<"$rest"
        local img
        img=$(expand "${w[0]}" garg)
        st=${w[2]:-stage${#STAGES[@]}}
        CUR=$st
        if is_stage "$img"; then
          inherit "$st" "$img"
        else
          seed_external "$st" "$img"
          META["$st|IMAGE"]=$img
        fi
        STAGES+=("$st")
        META["$st|CMDSET"]=""
        ;;
      ENV)
        local -a w
        read -ra w <<<"$rest"
        if [[ ${w[0]} != *=* ]]; then
          ENVS["$st|${w[0]}"]=$(expand "${w[*]:1}" senv)
        else
          local kv
          # Docker expands all values against the environment before this instruction.
          local -A newv=()
          for kv in "${w[@]}"; do newv[${kv%%=*}]=$(expand "${kv#*=}" senv); done
          for kv in "${!newv[@]}"; do ENVS["$st|$kv"]=${newv[$kv]}; done
        fi
        ;;
      COPY | ADD)
        local -a w
        read -ra w <<<"$rest"
        do_copy "$st" "${w[@]}"
        ;;
      RUN) do_run "$st" "$rest" ;;
      USER) META["$st|USER"]=$rest ;;
      VOLUME) META["$st|VOLUME"]=$(json_norm "$rest") ;;
      ENTRYPOINT)
        META["$st|ENTRYPOINT"]=$(json_norm "$rest")
        # Setting ENTRYPOINT resets a CMD inherited from the base image.
        [[ -z ${META["$st|CMDSET"]} ]] && META["$st|CMD"]=""
        ;;
      CMD) META["$st|CMD"]=$(json_norm "$rest") META["$st|CMDSET"]=1 ;;
    esac
  done
}

# ---- Assertions ------------------------------------------------------------------------------
check_target() { # stage
  local t=$1 p
  if ! is_stage "$t"; then fail "target $t: no such stage"; return; fi

  # Entrypoint chain, exactly the official one.
  [[ ${META["$t|ENTRYPOINT"]} == "$OFFICIAL_ENTRYPOINT" ]] \
    && ok "$t: ENTRYPOINT $OFFICIAL_ENTRYPOINT (the official image's)" \
    || fail "$t: ENTRYPOINT is '${META["$t|ENTRYPOINT"]}', the official image's is $OFFICIAL_ENTRYPOINT"
  [[ ${META["$t|CMD"]} == "$OFFICIAL_CMD" ]] \
    && ok "$t: CMD $OFFICIAL_CMD" || fail "$t: CMD is '${META["$t|CMD"]}', expected $OFFICIAL_CMD"

  local -a argv
  mapfile -t argv < <(json_argv "${META["$t|ENTRYPOINT"]}")
  local entry a r script=""
  entry=$(which_in "$t" "${argv[0]:-}")
  if [[ -n $entry ]]; then ok "$t: entrypoint ${argv[0]} -> $entry (${ORIGIN["$t|$entry"]:-})"; else fail "$t: entrypoint ${argv[0]:-<none>} not found on PATH"; fi
  # Every path in the ENTRYPOINT (a wrapper's program argument too) must exist.
  for a in "${argv[@]:1}"; do
    [[ $a == /* ]] || continue
    has "$t" "$a" && ok "$t: ENTRYPOINT argument $a exists" || fail "$t: ENTRYPOINT argument $a does not exist"
  done
  for a in "${argv[@]}"; do
    r=$(which_in "$t" "$a")
    [[ $r == /usr/local/bin/buildkite-agent-entrypoint ]] && script=$r && break
  done

  # What buildkite-agent-entrypoint runs, wherever it sits in the ENTRYPOINT.
  if [[ -n $script ]]; then
    local -a need=()
    local -a sb
    read -ra sb <<<"${ENTRYPOINT_SHEBANG#\#!}"
    need+=("${sb[@]}" "$ENTRYPOINT_RUN_PARTS")
    local -a ex
    read -ra ex <<<"$ENTRYPOINT_EXEC"
    for p in "${ex[@]:1}"; do [[ $p == -* || $p == \"* ]] || need+=("$p"); done
    need+=("${SSH_ENV_CONFIG_SHEBANG#\#!}" "${SSH_ENV_CONFIG_TOOLS[@]}")
    for p in "${need[@]}"; do
      local r
      r=$(which_in "$t" "$p")
      if [[ -n $r ]]; then ok "$t: entrypoint chain needs $p -> $r"; else fail "$t: entrypoint chain needs $p, which is not in the image (or not on PATH)"; fi
    done
  fi

  # The step's `command: benchkite run`.
  local bk
  bk=$(which_in "$t" benchkite)
  if [[ -n $bk ]]; then
    ok "$t: benchkite on PATH -> $bk (${ORIGIN["$t|$bk"]:-})"
    [[ ${ORIGIN["$t|$bk"]:-} == "from build:/out/benchkite" ]] \
      || fail "$t: $bk is not the static binary of stage build (/out/benchkite)"
  else
    fail "$t: benchkite is not on PATH (${ENVS["$t|PATH"]:-})"
  fi

  # Environment and files of the official image.
  [[ ${ENVS["$t|BUILDKITE_SKIP_CHECKOUT"]:-} == true ]] \
    && ok "$t: ENV BUILDKITE_SKIP_CHECKOUT=true" || fail "$t: ENV BUILDKITE_SKIP_CHECKOUT is '${ENVS["$t|BUILDKITE_SKIP_CHECKOUT"]:-}', expected true"
  [[ ${ENVS["$t|BUILDKITE_AGENT_CONFIG"]:-} == "$OFFICIAL_CONFIG" ]] \
    && ok "$t: ENV BUILDKITE_AGENT_CONFIG=$OFFICIAL_CONFIG" || fail "$t: ENV BUILDKITE_AGENT_CONFIG is '${ENVS["$t|BUILDKITE_AGENT_CONFIG"]:-}'"
  for p in "${OFFICIAL_FILES[@]}"; do
    has "$t" "$p" && ok "$t: has $p (${ORIGIN["$t|$(norm "$p")"]:-})" || fail "$t: missing $p"
  done
  for p in "${OFFICIAL_DIRS[@]}"; do
    [[ ${FILES["$t|$p"]:-} == d ]] && ok "$t: has directory $p" || fail "$t: missing directory $p"
  done
  [[ ${META["$t|VOLUME"]:-} == "$OFFICIAL_VOLUME" ]] \
    && ok "$t: VOLUME $OFFICIAL_VOLUME" || fail "$t: VOLUME is '${META["$t|VOLUME"]:-}', the official image's is $OFFICIAL_VOLUME"
  local u=${META["$t|USER"]:-}
  [[ -z $u || $u == root || $u == 0 ]] \
    && ok "$t: runs as root, like the official image" || fail "$t: USER $u differs from the official image (root)"
  for p in /usr/bin/git /usr/bin/ssh /etc/ssl/certs/ca-certificates.crt /usr/bin/tini /sbin/tini; do
    has "$t" "$p" && ok "$t: has $p" || fail "$t: missing $p (the official image has it)"
  done
}

check_dockerfile() { # dockerfile
  local df=$1
  FILES=() ORIGIN=() ENVS=() META=() GARGS=() STAGES=()
  parse "$df"

  # Version: pinned, published tag format.
  [[ ${GARGS[BUILDKITE_AGENT_VERSION]:-} == "$PINNED_VERSION" ]] \
    && ok "ARG BUILDKITE_AGENT_VERSION=$PINNED_VERSION (pinned published release)" \
    || fail "ARG BUILDKITE_AGENT_VERSION is '${GARGS[BUILDKITE_AGENT_VERSION]:-}', expected the pinned published $PINNED_VERSION"
  local s official=""
  for s in "${STAGES[@]}"; do [[ ${META["$s|IMAGE"]} == buildkite/agent:* && -z ${META["$s|PARENT"]:-} ]] && official=$s; done
  if [[ -n $official && ${META["$official|IMAGE"]} == "$OFFICIAL_IMAGE" ]]; then
    ok "stage $official is $OFFICIAL_IMAGE"
  else
    fail "no stage is FROM $OFFICIAL_IMAGE (got '${official:+${META["$official|IMAGE"]}}')"
  fi
  [[ ${STAGES[-1]} == agent ]] && ok "default target (last stage) is agent" || fail "last stage is ${STAGES[-1]}, expected agent"
  [[ ${META["agent|PARENT"]:-} == "$official" ]] \
    && ok "agent is built FROM the official stage" || fail "agent is not built FROM the official stage"

  check_target agent
  check_target agent-cuda

  # Both targets start the same way.
  local k
  for k in ENTRYPOINT CMD USER VOLUME; do
    [[ ${META["agent|$k"]:-} == "${META["agent-cuda|$k"]:-}" ]] \
      && ok "agent and agent-cuda: same $k" || fail "agent and agent-cuda: $k differs ('${META["agent|$k"]:-}' vs '${META["agent-cuda|$k"]:-}')"
  done
  for k in /usr/local/bin/buildkite-agent /usr/local/bin/buildkite-agent-entrypoint /usr/local/bin/ssh-env-config.sh; do
    local o=${ORIGIN["agent-cuda|$k"]:-}
    [[ $o == "from $official:$k" ]] \
      && ok "agent-cuda: $k copied from the official image" || fail "agent-cuda: $k is not the official image's (origin '$o')"
  done
}

# ---- Upstream verification of the facts --------------------------------------------------------
check_upstream() { # git dir of buildkite/agent
  local g=$1 tag=v$PINNED_VERSION
  local G=(git -C "$g")
  local commit
  if ! commit=$("${G[@]}" rev-parse -q --verify "$tag^{commit}"); then
    fail "upstream: tag $tag does not exist"
    return
  fi
  ok "upstream: tag $tag -> $commit"
  [[ $("${G[@]}" show "$tag:version/VERSION" | tr -d '[:space:]') == "$PINNED_VERSION" ]] \
    && ok "upstream: version/VERSION at $tag is $PINNED_VERSION" || fail "upstream: version/VERSION at $tag differs"
  local newest
  newest=$("${G[@]}" tag -l 'v3.*' | grep -E '^v3\.[0-9]+\.[0-9]+$' | sort -V | tail -n1)
  [[ $newest == "$tag" ]] && ok "upstream: $tag is the newest stable 3.x tag" \
    || fail "upstream: newest stable 3.x tag is $newest, pinned $tag"

  local pub
  pub=$("${G[@]}" show "$tag:.buildkite/steps/publish-docker-images.sh")
  grep -qE 'for variant in .*"ubuntu-22.04"' <<<"$pub" \
    && ok "upstream: the release publishes variant ubuntu-22.04" || fail "upstream: ubuntu-22.04 not in publish-docker-images.sh"
  pub=$("${G[@]}" show "$tag:.buildkite/steps/publish-docker-image.sh")
  # shellcheck disable=SC2016 # literal text of the upstream script
  grep -qF 'release_image "${tag}${variant_suffix}"' <<<"$pub" && grep -qF 'variant_suffix="-${variant}"' <<<"$pub" \
    && ok "upstream: stable releases are tagged <version>-<variant> (buildkite/agent:$PINNED_VERSION-ubuntu-22.04)" \
    || fail "upstream: publish-docker-image.sh tag scheme changed"

  local df ep cfg
  df=$("${G[@]}" show "$tag:packaging/docker/ubuntu-22.04/Dockerfile")
  ep=$("${G[@]}" show "$tag:packaging/docker/ubuntu-22.04/entrypoint.sh")
  cfg=$("${G[@]}" show "$tag:packaging/docker/ubuntu-22.04/buildkite-agent.cfg")
  [[ $(json_norm "$(sed -n 's/^ENTRYPOINT //p' <<<"$df")") == "$OFFICIAL_ENTRYPOINT" ]] \
    && ok "upstream: ENTRYPOINT $OFFICIAL_ENTRYPOINT" || fail "upstream: ENTRYPOINT differs: $(grep '^ENTRYPOINT' <<<"$df")"
  [[ $(json_norm "$(sed -n 's/^CMD //p' <<<"$df")") == "$OFFICIAL_CMD" ]] \
    && ok "upstream: CMD $OFFICIAL_CMD" || fail "upstream: CMD differs: $(grep '^CMD' <<<"$df")"
  [[ $(sed -n 's/^VOLUME //p' <<<"$df") == "$OFFICIAL_VOLUME" ]] \
    && ok "upstream: VOLUME $OFFICIAL_VOLUME" || fail "upstream: VOLUME differs"
  grep -qF "BUILDKITE_AGENT_CONFIG=$OFFICIAL_CONFIG" <<<"$df" \
    && ok "upstream: ENV BUILDKITE_AGENT_CONFIG=$OFFICIAL_CONFIG" || fail "upstream: BUILDKITE_AGENT_CONFIG differs"
  ! grep -qE '^USER' <<<"$df" && ok "upstream: no USER (root)" || fail "upstream: the official image sets USER"
  local f d
  for f in $(awk '/^COPY/{print $NF}' <<<"$df") $(grep -oE -- '-o [^ ]+' <<<"$df" | cut -d' ' -f2); do
    [[ " ${OFFICIAL_FILES[*]} " == *" $f "* ]] && ok "upstream: official file $f is in this script's model" \
      || fail "upstream: official file $f is missing from this script's model"
  done
  # shellcheck disable=SC2013 # words: the directories of one mkdir
  for d in $(grep -oE 'mkdir -p [^&]+' <<<"$df" | cut -d' ' -f3-); do
    [[ $d == /* ]] || continue
    [[ " ${OFFICIAL_DIRS[*]} " == *" $d "* ]] && ok "upstream: official directory $d is in the model" \
      || fail "upstream: official directory $d is missing from the model"
  done
  for k in build-path hooks-path plugins-path; do
    d=$(sed -nE "s/^$k=\"?([^\"]*)\"?$/\1/p" <<<"$cfg")
    [[ " ${OFFICIAL_DIRS[*]} " == *" $d "* ]] && ok "upstream: buildkite-agent.cfg $k=$d exists in the image" \
      || fail "upstream: buildkite-agent.cfg $k='$d' is not a directory of the image"
  done
  [[ $(head -n1 <<<"$ep") == "$ENTRYPOINT_SHEBANG" ]] \
    && ok "upstream: entrypoint.sh shebang $ENTRYPOINT_SHEBANG" || fail "upstream: entrypoint.sh shebang is $(head -n1 <<<"$ep")"
  grep -qF "$ENTRYPOINT_EXEC" <<<"$ep" && ok "upstream: entrypoint.sh ends in: $ENTRYPOINT_EXEC" \
    || fail "upstream: entrypoint.sh exec line differs: $(grep -E '^exec' <<<"$ep")"
  grep -qF "$ENTRYPOINT_RUN_PARTS " <<<"$ep" && ok "upstream: entrypoint.sh runs $ENTRYPOINT_RUN_PARTS" \
    || fail "upstream: entrypoint.sh no longer runs $ENTRYPOINT_RUN_PARTS"
  local other
  other=$(grep -vE '^[[:space:]]*(#|$)' <<<"$ep" | grep -oE '(^|[[:space:]])/[A-Za-z0-9_./-]+' | tr -d ' ' | sort -u \
    | grep -vxF -e /usr/bin/tini -e /usr/local/bin/buildkite-agent -e "$ENTRYPOINT_RUN_PARTS" -e /docker-entrypoint.d || true)
  [[ -z $other ]] && ok "upstream: entrypoint.sh references no other path" || fail "upstream: entrypoint.sh references $other"

  local base
  base=$("${G[@]}" show "$AGENT_BASE_SWITCH_COMMIT^:packaging/docker/ubuntu-22.04/Dockerfile")
  local pkg
  for pkg in "${AGENT_BASE_PACKAGES[@]}"; do
    grep -qE "^[[:space:]]+$pkg( |\\\\|$)" <<<"$base" && ok "upstream: agent-base installs $pkg ($AGENT_BASE_SWITCH_COMMIT^)" \
      || fail "upstream: $pkg not in the pre-agent-base Dockerfile"
  done
  grep -qF 'ln -s /usr/bin/tini /usr/sbin/tini' <<<"$base" && ok "upstream: agent-base links /usr/sbin/tini" \
    || fail "upstream: /usr/sbin/tini link not found"

  local gl
  gl=$("${G[@]}" show "$tag:clicommand/global.go")
  grep -qF 'EnvVar: "BUILDKITE_SKIP_CHECKOUT"' <<<"$gl" && ok "upstream: clicommand/global.go reads BUILDKITE_SKIP_CHECKOUT (--skip-checkout)" \
    || fail "upstream: BUILDKITE_SKIP_CHECKOUT is not an agent flag env var at $tag"
  gl=$("${G[@]}" show "$tag:clicommand/agent_start.go")
  grep -qE '^[[:space:]]+SkipCheckoutFlag,' <<<"$gl" \
    && ok "upstream: agent start takes SkipCheckoutFlag" || fail "upstream: agent start does not take SkipCheckoutFlag"
}

check_ssh_env_config() { # git dir of buildkite/docker-ssh-env-config
  local s t
  s=$(git -C "$1" show HEAD:ssh-env-config.sh) || { fail "ssh-env-config: cannot read ssh-env-config.sh"; return; }
  ok "ssh-env-config: read at $(git -C "$1" rev-parse HEAD)"
  [[ $(head -n1 <<<"$s") == "$SSH_ENV_CONFIG_SHEBANG" ]] && ok "ssh-env-config: shebang $SSH_ENV_CONFIG_SHEBANG" \
    || fail "ssh-env-config: shebang is $(head -n1 <<<"$s")"
  grep -qF 'exec "$@"' <<<"$s" && ok 'ssh-env-config: ends in exec "$@"' || fail 'ssh-env-config: no exec "$@"'
  for t in "${SSH_ENV_CONFIG_TOOLS[@]}"; do
    grep -qE "(^|[[:space:]\$(])$t " <<<"$s" && ok "ssh-env-config: uses $t" || fail "ssh-env-config: no longer uses $t (update the model)"
  done
}

# ---- Self-test: each property fails on a copy that breaks it ------------------------------------
MUTATIONS=(
  "no ssh-env-config.sh in agent-cuda (the original bug)"
  "unpublished agent version 3.138.0"
  "no BUILDKITE_SKIP_CHECKOUT in agent-cuda"
  "no BUILDKITE_SKIP_CHECKOUT in agent"
  "tini -g wrapped around the entrypoint of agent-cuda"
  "no CMD after ENTRYPOINT in agent-cuda"
  "no benchkite in agent"
  "benchkite off PATH in agent-cuda"
  "no tini package in agent-cuda"
  "no /buildkite in agent-cuda"
  "non-root USER in agent-cuda"
)
mutate() { # index; Dockerfile on stdin, broken copy on stdout
  case $1 in
    0) sed '/^COPY --from=buildkite-agent \/usr\/local\/bin\/ssh-env-config.sh/d' ;;
    1) sed 's/^ARG BUILDKITE_AGENT_VERSION=.*/ARG BUILDKITE_AGENT_VERSION=3.138.0/' ;;
    2) sed '/^[[:space:]]*BUILDKITE_SKIP_CHECKOUT=true/d' ;;
    3) sed '/^ENV BUILDKITE_SKIP_CHECKOUT=true/d' ;;
    4) sed '0,/^ENTRYPOINT /s|^ENTRYPOINT .*|ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/buildkite-agent-entrypoint"]|' ;;
    5) sed '0,/^CMD /{/^CMD /d}' ;;
    6) tac | sed '0,/^COPY --from=build /{/^COPY --from=build /d}' | tac ;;
    7) sed '0,/^COPY --from=build /s|^COPY --from=build /out/benchkite .*|COPY --from=build /out/benchkite /opt/benchkite|' ;;
    8) sed 's/ openssh-client tini / openssh-client /' ;;
    9) sed '/^COPY --from=buildkite-agent \/buildkite \/buildkite/d' ;;
    10) sed '0,/^VOLUME /s|^VOLUME |USER 1000\nVOLUME |' ;;
  esac
}

self_test() { # dockerfile
  local df=$1 tmp i failed=0
  tmp=$(mktemp -d) || return 1
  for i in "${!MUTATIONS[@]}"; do
    mutate "$i" <"$df" >"$tmp/Dockerfile"
    if cmp -s "$df" "$tmp/Dockerfile"; then
      printf 'FAIL  self-test "%s": the mutation did not change the Dockerfile\n' "${MUTATIONS[i]}"
      failed=1
      continue
    fi
    # shellcheck disable=SC2030,SC2031 # the broken copy is checked in a subshell on purpose
    if (FAILS=0; check_dockerfile "$tmp/Dockerfile" >"$tmp/out"; ((FAILS > 0))); then
      printf 'ok    self-test "%s" is caught: %s\n' "${MUTATIONS[i]}" "$(grep -m1 '^FAIL' "$tmp/out" | cut -c7-)"
    else
      printf 'FAIL  self-test "%s" was not caught\n' "${MUTATIONS[i]}"
      failed=1
    fi
  done
  rm -rf "$tmp"
  return $failed
}

# ---- Main ------------------------------------------------------------------------------------
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DOCKERFILE=$HERE/Dockerfile
UPSTREAM="" SSHENV="" SELFTEST=0
while (($#)); do
  case $1 in
    --upstream) UPSTREAM=${2:?--upstream needs a git directory}; shift 2 ;;
    --ssh-env-config) SSHENV=${2:?--ssh-env-config needs a git directory}; shift 2 ;;
    --self-test) SELFTEST=1; shift ;;
    -h | --help) sed -n '/^# Static check/,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d'; exit 0 ;;
    *) DOCKERFILE=$1; shift ;;
  esac
done
[[ -r $DOCKERFILE ]] || { echo "check.sh: cannot read $DOCKERFILE" >&2; exit 2; }

echo "== $DOCKERFILE"
check_dockerfile "$DOCKERFILE"
if [[ -n $UPSTREAM ]]; then echo "== upstream buildkite/agent: $UPSTREAM"; check_upstream "$UPSTREAM"; fi
if [[ -n $SSHENV ]]; then echo "== upstream buildkite/docker-ssh-env-config: $SSHENV"; check_ssh_env_config "$SSHENV"; fi
if ((SELFTEST)); then
  echo "== self-test"
  # shellcheck disable=SC2031
  saved=$FAILS
  self_test "$DOCKERFILE" || FAILS=$((saved + 1))
fi
if ((FAILS > 0)); then
  echo "check.sh: $FAILS check(s) failed" >&2
  exit 1
fi
echo "check.sh: all checks passed"
