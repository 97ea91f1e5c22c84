#!/usr/bin/env bash
# A real MLflow tracking server (model registry on SQLite, artifacts in a
# folder) for the tests that follow an MLflow registry alias. The install
# is cached under $SWITCHYARD_ENGINES (default ~/.cache/switchyard/engines)
# and reused.
#
#   scripts/integrations/mlflow.sh install           the venv, once
#   scripts/integrations/mlflow.sh start PORT [LOG]  serves on PORT with a
#                                                    store of its own; waits
#                                                    until healthy; prints
#                                                    the pid
#   scripts/integrations/mlflow.sh stop PID
set -euo pipefail
source "$(cd "$(dirname "$0")/../engines" && pwd)/common.sh"
MLFLOW_VERSION=3.17.2
VENV="$ENGINES/mlflow-$MLFLOW_VERSION"

install() {
  if "$VENV/bin/mlflow" --version 2>/dev/null | grep -q "$MLFLOW_VERSION"; then
    return 0
  fi
  local t0=$SECONDS
  log "installing MLflow $MLFLOW_VERSION into $VENV, once"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "mlflow==$MLFLOW_VERSION"
  log "MLflow installed in $((SECONDS - t0)) s"
}

start() {
  local port="$1" logfile="${2:-$ENGINES/mlflow-$1.log}" store
  # Beside the log: a test's folder, removed with it.
  store="$(dirname "$logfile")/mlflow-store-$port"
  mkdir -p "$store"
  setsid "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$port" --workers 1 \
    --backend-store-uri "sqlite:///$store/mlflow.db" --default-artifact-root "$store/artifacts" \
    > "$logfile" 2>&1 < /dev/null &
  local pid=$!
  wait_serving "MLflow on :$port" "$pid" "$logfile" 120 \
    curl -sf -o /dev/null "http://127.0.0.1:$port/health"
  echo "$pid"
}

case "${1:-}" in
  install) install ;;
  start) install; start "${2:?port}" "${3:-}" ;;
  stop) stop_group "${2:?pid}" ;;
  *) echo "usage: $0 install | start PORT [LOG] | stop PID" >&2; exit 2 ;;
esac
