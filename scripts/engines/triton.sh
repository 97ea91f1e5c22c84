#!/usr/bin/env bash
# A real NVIDIA Triton Inference Server 2.51 (the `tritonserver` binary that
# PyPI's `nvidia-pytriton` ships) on CPU, serving a model repository of two
# tiny Python-backend models made here, in explicit model-control mode:
# `tiny-linear` is loaded at start, `tiny-linear-b` only when asked. The
# install is cached under $SWITCHYARD_ENGINES (default
# ~/.cache/switchyard/engines) and reused.
#
#   scripts/engines/triton.sh install          venv, backends, model repository
#   scripts/engines/triton.sh start PORT [LOG] HTTP on PORT (gRPC and metrics on
#                                               the next two); waits until ready;
#                                               prints the pid
#   scripts/engines/triton.sh run PORT         the same, in the foreground
#   scripts/engines/triton.sh stop PID
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/common.sh"
PYTRITON_VERSION=0.7.0
VENV="$ENGINES/triton-$PYTRITON_VERSION"
BACKENDS="$VENV/backends"
REPO="$ENGINES/triton-models"

server_dir() {
  "$VENV/bin/python" -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")'
}

# The libraries the wheel bundles, and the one holding libpython (the Python
# backend's stub embeds the interpreter).
lib_path() {
  local dir
  dir="$(server_dir)"
  echo "$(cd "$dir/../.." && pwd)/nvidia_pytriton.libs:$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')"
}

# Writes stdin to $1 unless it already holds that: a running Triton may be
# reading it.
put() {
  local tmp
  tmp="$(mktemp "$1.XXXXXX")"
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

# A tiny Python-backend model: y = x @ W + b, weights from a fixed seed, b
# offset by $2 so that two models' answers differ.
make_model() {
  local name="$1" offset="$2"
  mkdir -p "$REPO/$name/1"
  put "$REPO/$name/config.pbtxt" <<PBTXT
name: "$name"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 3 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
PBTXT
  put "$REPO/$name/1/model.py" <<PYTHON
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        rng = np.random.default_rng(0)
        self.w = rng.normal(size=(4, 3)).astype(np.float32)
        self.b = np.arange(3, dtype=np.float32) + $offset

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = (x @ self.w + self.b).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", y)]))
        return responses
PYTHON
}

install() {
  # The repository is a few small files: written every time, so it follows
  # this script.
  make_model tiny-linear 0
  make_model tiny-linear-b 10
  if [ -x "$BACKENDS/python/triton_python_backend_stub" ]; then
    return 0
  fi
  local t0=$SECONDS
  log "installing nvidia-pytriton $PYTRITON_VERSION (Triton 2.51) into $VENV, once"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -U pip
  "$VENV/bin/pip" install -q --disable-pip-version-check "nvidia-pytriton==$PYTRITON_VERSION"
  local dir pyver
  dir="$(server_dir)"
  # The Python backend needs the stub built for this interpreter beside it.
  cp -r "$dir/backends" "$BACKENDS"
  pyver="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  cp "$dir/python_backend_stubs/$pyver/triton_python_backend_stub" "$BACKENDS/python/"
  # A stub that cannot start makes Triton hang in "loading" instead of
  # failing: check its libraries now.
  if LD_LIBRARY_PATH="$(lib_path)" ldd "$BACKENDS/python/triton_python_backend_stub" | grep -q 'not found'; then
    echo "the Python backend stub has unresolved libraries:" >&2
    LD_LIBRARY_PATH="$(lib_path)" ldd "$BACKENDS/python/triton_python_backend_stub" | grep 'not found' >&2
    exit 1
  fi
  log "Triton installed in $((SECONDS - t0)) s"
}

# Becomes tritonserver, in the foreground: for a supervisor (such as the
# agent's `process:`) that runs it and sees it exit.
run() {
  local port="$1" dir libs
  dir="$(server_dir)"
  libs="$(lib_path)"
  # The venv first on PATH: the stub's interpreter then finds numpy.
  export PATH="$VENV/bin:$PATH" LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  exec "$dir/bin/tritonserver" --model-repository="$REPO" --backend-directory="$BACKENDS" \
    --model-control-mode=explicit --load-model=tiny-linear \
    --http-address=127.0.0.1 --http-port="$port" \
    --grpc-address=127.0.0.1 --grpc-port="$((port + 1))" --metrics-port="$((port + 2))" \
    --allow-gpu-metrics=false --exit-timeout-secs=5
}

start() {
  local port="$1" logfile="${2:-$ENGINES/triton-$1.log}"
  setsid "$0" run "$port" > "$logfile" 2>&1 < /dev/null &
  local pid=$!
  wait_serving "Triton on :$port" "$pid" "$logfile" 120 \
    curl -sf -o /dev/null "http://127.0.0.1:$port/v2/models/tiny-linear/ready"
  echo "$pid"
}

case "${1:-}" in
  install) install ;;
  start) install; start "${2:?port}" "${3:-}" ;;
  run) install; run "${2:?port}" ;;
  stop) stop_group "${2:?pid}" ;;
  *) echo "usage: $0 install | start PORT [LOG] | run PORT | stop PID" >&2; exit 2 ;;
esac
