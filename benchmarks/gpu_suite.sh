#!/usr/bin/env bash
# Everything that needs a GPU, in one call: the gpu-marked tests, `lstminfer run` on the seed model, the
# fused-vs-cuDNN benchmark, the streaming targets (benchmarks/stream_gpu.py). Run from the repository root on a CUDA machine; logs go to $OUT (default gpu-out).
# Optional: TEST_TIMEOUT, RUN_TIMEOUT, BENCH_TIMEOUT, STREAM_TIMEOUT (seconds), RUN_ARGS (extra `lstminfer run` flags);
# arguments go to benchmarks/fused_vs_cudnn.py.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout "${TEST_TIMEOUT:-600}" python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu.txt" | tail -15
timeout "${RUN_TIMEOUT:-300}" python3 -m lstminfer run --out /tmp/lstminfer-gpu-run ${RUN_ARGS:-} >"$OUT/run.txt" 2>"$OUT/run.err"
echo "lstminfer run: exit $?"
cp /tmp/lstminfer-gpu-run/results.json /tmp/lstminfer-gpu-run/report.md "$OUT/"
timeout "${BENCH_TIMEOUT:-600}" python3 benchmarks/fused_vs_cudnn.py "$@" 2>&1 | tee "$OUT/fused_vs_cudnn.txt" | tail -14
timeout "${STREAM_TIMEOUT:-300}" python3 benchmarks/stream_gpu.py --json "$OUT/stream_gpu.json" 2>&1 | tee "$OUT/stream_gpu.txt"
