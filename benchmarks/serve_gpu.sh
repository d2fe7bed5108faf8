#!/usr/bin/env bash
# Issue 16's H200 targets, in one bounded call: the fused kernel (fused-graph) behind Triton Inference Server
# (`lstminfer serve`'s code path) against the backend alone, for the seed model's stateless requests and a
# 1-layer LSTM 128->128's streaming steps, concurrency 1-64 (benchmarks/serve_triton.py, whose docstring
# has the two commands).
#
# The GPU machine has no network and no serve extra: the wheels travel in .whl-serve/ (built by
# benchmarks/make_serve_wheels.sh; carry=[".whl-serve"]) and are installed into $SITE. lstminfer itself
# runs from src/ (PYTHONPATH); the served model finds it through the path its model.py names.
#
# Run from the repository root: bash benchmarks/serve_gpu.sh. Writes under $OUT (default serve-gpu-out):
#   facts.txt           GPU, Python, numpy, where libpython lies, what the 3.12 stub cannot link
#   seed.txt/.json      the seed model's table (and rows); stream.txt/.json the 1-layer LSTM's
#   loadtest.json       every level as `lstminfer loadtest --json` writes it; report.md + report-*.png
#   *-server.log        tritonserver's logs
# Bounded: each benchmark by its own timeout (SEED_TIMEOUT, STREAM_TIMEOUT: 85 s each), the whole script
# well within 200 s. If the wheels do not install or the server cannot start, it says why (serve_gpu.log)
# and still exits 0 with what it has.
# Optional: LEVELS (1,4,16,64), DURATION (3), WARMUP (0.5), BACKEND (fused-graph), DEVICE (cuda), WHEELS,
# SITE, PROTOCOLS (http,grpc; grpc is dropped when tritonclient.grpc does not import here).
set -uo pipefail
OUT=${OUT:-serve-gpu-out}
WHEELS=${WHEELS:-.whl-serve}
SITE=${SITE:-/tmp/site}
LEVELS=${LEVELS:-1,4,16,64}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
BACKEND=${BACKEND:-fused-graph}
DEVICE=${DEVICE:-cuda}
PROTOCOLS=${PROTOCOLS:-http,grpc}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
begin=$(date +%s)
say() { echo "serve_gpu: $*" | tee -a "$OUT/serve_gpu.log"; }

if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl >"$OUT/pip.txt" 2>&1; then
  say "the wheels in $WHEELS did not install: $(tail -1 "$OUT/pip.txt")"
  exit 0
fi

python3 - >"$OUT/facts.txt" 2>&1 <<'EOF'
import glob, os, subprocess, sys, sysconfig
import numpy
print("python", sys.version.split()[0], sys.executable, "base", sys.base_prefix)
print("numpy", numpy.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
except Exception as err:
    print("torch:", err)
libdir = sysconfig.get_config_var("LIBDIR")
print("LIBDIR", libdir, "Py_ENABLE_SHARED", sysconfig.get_config_var("Py_ENABLE_SHARED"),
      "libpython here:", sorted(glob.glob(os.path.join(libdir or "/", "libpython3*.so*"))))
from lstminfer.serve.server import find_tritonserver, server_env
install = find_tritonserver()
print("tritonserver", install.binary, "pytriton", install.version, "stub", install.stub)
ldd = subprocess.run(["ldd", str(install.stub)], capture_output=True, text=True, env=server_env(install)).stdout
print("stub links:", " ".join(l.split()[0] for l in ldd.splitlines() if "not found" not in l) or "-")
print("stub cannot link:", " ".join(l.split()[0] for l in ldd.splitlines() if "not found" in l) or "nothing")
EOF
cat "$OUT/facts.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tee -a "$OUT/facts.txt"
if [[ $PROTOCOLS == *grpc* ]] && ! python3 -c "import tritonclient.grpc" >"$OUT/grpc-import.txt" 2>&1; then
  say "tritonclient.grpc does not import here ($(tail -1 "$OUT/grpc-import.txt")): HTTP only"
  PROTOCOLS=http
fi

bench() {  # NAME TIMEOUT ARGS...: one benchmarks/serve_triton.py run, its table in NAME.txt
  local name=$1 limit=$2
  shift 2
  timeout -k 5 "$limit" python3 benchmarks/serve_triton.py --backend "$BACKEND" --device "$DEVICE" \
    --protocols "$PROTOCOLS" --duration "$DURATION" --warmup "$WARMUP" --direct-calls 500 \
    --out-json "$OUT/$name.json" --loadtest-json "$OUT/$name-loadtest.json" --server-log "$OUT/$name-server.log" \
    "$@" 2>&1 | tee "$OUT/$name.txt"
  local code=${PIPESTATUS[0]}
  case $code in
    0) say "$name: done" ;;
    124|137) say "$name: stopped at its ${limit} s limit; $OUT/$name.txt has the levels it finished" ;;
    *) say "$name: exit $code: $(grep -m1 -E 'serve_triton.py: |Error' "$OUT/$name.txt" || tail -1 "$OUT/$name.txt")" ;;
  esac
}

bench seed "${SEED_TIMEOUT:-85}" --preset seed --concurrency "$LEVELS"
bench stream "${STREAM_TIMEOUT:-85}" --preset seed --no-bidirectional --num-layers 1 --input-size 128 \
  --hidden-size 128 --concurrency 0 --streams "$LEVELS"

python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
levels, machine = [], {}
for name in ("seed", "stream"):
    path = out / f"{name}-loadtest.json"
    if path.exists():
        data = json.loads(path.read_text())
        levels += data["loadtest"]
        machine = machine or data.get("machine") or {}
if levels:
    (out / "loadtest.json").write_text(json.dumps({"loadtest": levels, "machine": machine}, indent=2))
EOF
if [[ -f $OUT/loadtest.json ]]; then
  python3 -m lstminfer report "$OUT/loadtest.json" --format md -o "$OUT/report.md" 2>&1 | tee -a "$OUT/serve_gpu.log"
fi
say "finished in $(( $(date +%s) - begin )) s; files in $OUT"
exit 0
