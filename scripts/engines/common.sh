# Shared by the engine scripts: where installs are cached, waiting for a
# started server, and stopping its process group.
# shellcheck shell=bash

ENGINES="${SWITCHYARD_ENGINES:-$HOME/.cache/switchyard/engines}"
PY="${PYTHON:-python3}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# wait_serving NAME PID LOG LIMIT CHECK...: runs CHECK until it succeeds;
# fails, showing the log, if the server exits or LIMIT seconds pass.
wait_serving() {
  local name="$1" pid="$2" logfile="$3" limit="$4" t0=$SECONDS
  shift 4
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; its log:" >&2
      tail -40 "$logfile" >&2
      exit 1
    fi
    if [ $((SECONDS - t0)) -gt "$limit" ]; then
      echo "$name not serving after $limit s" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true
      exit 1
    fi
    sleep 0.25
  done
  log "$name serving after $((SECONDS - t0)) s (pid $pid)"
}

# stop_group PID: SIGTERM, then, after 20 s, SIGKILL to its process group
# (the servers are started with setsid, so the pid names the group).
stop_group() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
