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
# Run from the repository root: bash benchmarks/serve_gpu.sh. A device call returns at most 8 files from $OUT
# (two folder levels), so everything lands in six, flat, under $OUT (default serve-gpu-out):
#   facts.txt           GPU, Python, numpy, torch, where libpython lies, what the 3.12 stub cannot link
#   tables.txt          the printed tables (seed, then stream, per INSTANCES value), this script's own lines,
#                       the end time
#   results.json        every level as `lstminfer loadtest --json` writes it ("loadtest", what `lstminfer
#                       report` reads) and the tables' rows ("tables": {"seed": ..., "stream": ...})
#   report.md + report-loadtest.png   `lstminfer report results.json`
#   server-logs.txt     per tritonserver log: its line count, tracebacks and error lines counted, the
#                       served model's own lines (how it answers, the batch buckets run at load), the first
#                       error lines, then its last 200 lines
# The whole logs, pip's output and the per-run JSON stay in a scratch folder on the machine ($WORK).
# Bounded: each benchmark by its own timeout (SEED_TIMEOUT, STREAM_TIMEOUT: 100 s each), the whole script
# well within 240 s per INSTANCES value. If the wheels do not install or the server cannot start, it says why (tables.txt)
# and still exits 0 with what it has.
# Optional: LEVELS (1,4,16,64), DURATION (3), WARMUP (0.5), BACKEND (fused-graph), DEVICE (cuda), WHEELS,
# SITE, PROTOCOLS (http,grpc; grpc is dropped when tritonclient.grpc does not import here), PROCESSES (auto:
# the load generator in one process up to concurrency 8, one process per 8 workers above and at most a
# quarter of the cores: 2 at level 16 and 4 at 64 on the 16-core H200 host, so those levels are not bounded
# by one Python process's GIL; 1: as before), LSTMINFER_SERVE_PROFILE (1: the served
# model logs per-piece medians of its execute per execution size at unload; server-logs.txt shows them),
# INSTANCES (auto: `serve --instances`, Python-backend instances per model, each its own stub and runner;
# auto is 2 with DEVICE=cuda, 1 on a CPU; tables.txt says how many Triton made, from its log; a list, e.g.
# 2,4, runs both benchmarks once per value, named seed-i2, stream-i2, seed-i4, ..., into the same six files).
# Each level is followed by the backend alone paced like the server (serve_triton.py's alone_paced_* and
# server_share_paced columns).
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
PROCESSES=${PROCESSES:-auto}
INSTANCES=${INSTANCES:-auto}
export LSTMINFER_SERVE_PROFILE=${LSTMINFER_SERVE_PROFILE:-1}
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d /tmp/serve-gpu.XXXXXX)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
begin=$(date +%s)
say() { echo "serve_gpu: $*" | tee -a "$OUT/tables.txt"; }

if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl >"$WORK/pip.txt" 2>&1; then
  say "the wheels in $WHEELS did not install: $(tail -1 "$WORK/pip.txt")"
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
if [[ $PROTOCOLS == *grpc* ]] && ! python3 -c "import tritonclient.grpc" >"$WORK/grpc-import.txt" 2>&1; then
  say "tritonclient.grpc does not import here ($(tail -1 "$WORK/grpc-import.txt")): HTTP only"
  PROTOCOLS=http
fi

bench() {  # NAME TIMEOUT INSTANCES ARGS...: one benchmarks/serve_triton.py run, its table appended to tables.txt
  local name=$1 limit=$2 instances=$3
  shift 3
  echo "== $name" >>"$OUT/tables.txt"
  timeout -k 5 "$limit" python3 benchmarks/serve_triton.py --backend "$BACKEND" --device "$DEVICE" \
    --protocols "$PROTOCOLS" --duration "$DURATION" --warmup "$WARMUP" --direct-calls 500 --processes "$PROCESSES" \
    --instances "$instances" \
    --out-json "$WORK/$name.json" --loadtest-json "$WORK/$name-loadtest.json" \
    --server-log "$WORK/$name-server.log" "$@" 2>&1 | tee -a "$OUT/tables.txt"
  local code=${PIPESTATUS[0]}
  # How many instances Triton made per model (--instances $INSTANCES): its log has a line per instance.
  [[ -f $WORK/$name-server.log ]] && say "$name: instances (--instances $instances): $(grep -o \
    'ModelInstanceInitialize: [A-Za-z0-9_-]*_[0-9]*_[0-9]*' "$WORK/$name-server.log" | sed -E 's/.*: (.*)_[0-9]+_[0-9]+$/\1/' \
    | sort | uniq -c | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}')"
  case $code in
    0) say "$name: done" ;;
    1) say "$name: done, with failed requests or wrong answers (the reasons are above)" ;;
    124|137) say "$name: stopped at its ${limit} s limit; the levels it finished are above" ;;
    *) say "$name: exit $code: $(grep -m1 -E 'serve_triton.py: |Error' "$OUT/tables.txt" || tail -1 "$OUT/tables.txt")" ;;
  esac
}

NAMES=()
for instances in ${INSTANCES//,/ }; do
  suffix=$([[ $INSTANCES == *,* ]] && echo "-i$instances")
  bench "seed$suffix" "${SEED_TIMEOUT:-100}" "$instances" --preset seed --concurrency "$LEVELS"
  bench "stream$suffix" "${STREAM_TIMEOUT:-100}" "$instances" --preset seed --no-bidirectional --num-layers 1 \
    --input-size 128 --hidden-size 128 --concurrency 0 --streams "$LEVELS"
  NAMES+=("seed$suffix" "stream$suffix")
done

python3 - "$WORK" "$OUT" "${NAMES[@]}" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
levels, machine, tables = [], {}, {}
for name in sys.argv[3:]:
    path = work / f"{name}-loadtest.json"
    if path.exists():
        data = json.loads(path.read_text())
        levels += data["loadtest"]
        machine = machine or data.get("machine") or {}
    if (work / f"{name}.json").exists():
        tables[name] = json.loads((work / f"{name}.json").read_text())
if levels or tables:
    (out / "results.json").write_text(json.dumps({"loadtest": levels, "machine": machine,
                                                   "server": "benchmarks/serve_gpu.sh", "tables": tables}, indent=2))
EOF
for name in "${NAMES[@]}"; do
  log=$WORK/$name-server.log
  [[ -f $log ]] || continue
  {
    echo "== $name-server.log: $(wc -l <"$log") lines, $(grep -c 'Traceback' "$log") tracebacks," \
      "$(grep -c -E '^E[0-9]{4} ' "$log") error lines (E...), $(grep -c -E '^W[0-9]{4} ' "$log") warnings (W...)"
    echo "-- the served model's own lines"
    grep 'lstminfer: ' "$log" | head -30
    echo "-- the first error lines"
    grep -m 10 -E '^E[0-9]{4} |Traceback|Error' "$log"
    echo "-- the last 200 lines"
    tail -200 "$log"
  } >>"$OUT/server-logs.txt"
done
if [[ -f $OUT/results.json ]]; then
  python3 -m lstminfer report "$OUT/results.json" --format md -o "$OUT/report.md" 2>&1 | tee -a "$OUT/tables.txt"
fi
say "finished in $(( $(date +%s) - begin )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')(whole logs in $WORK)"
exit 0
