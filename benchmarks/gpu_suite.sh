#!/usr/bin/env bash
# Everything that needs a GPU, in one call: the gpu-marked tests, `lstminfer run` on the seed model, the
# fused-vs-cuDNN benchmark, the streaming targets (benchmarks/stream_gpu.py) and, where .whl-serve/ holds the
# serve wheels (benchmarks/make_serve_wheels.sh; carry it), the serving measurement (benchmarks/serve_gpu.sh).
# Run from the repository root on a CUDA machine. Logs are written to a work folder and packed into one file,
# $OUT/gpu-suite.tgz (the device tool returns at most 8 files), with the summaries printed on stdout.
# Where ncu is on the PATH, benchmarks/kernel_profile.py places a step of the persistent kernel (P, R, U).
# Optional: TEST_TIMEOUT, RUN_TIMEOUT, BENCH_TIMEOUT, STREAM_TIMEOUT, PROFILE_TIMEOUT, SERVE_TIMEOUT (seconds),
# RUN_ARGS (extra `lstminfer run` flags), TESTS (pytest paths, default tests); arguments go to
# benchmarks/fused_vs_cudnn.py.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
W=$(mktemp -d /tmp/gpu-suite.XXXXXX)
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
pack() { tar czf "$OUT/gpu-suite.tgz" -C "$W" . && echo "logs: $OUT/gpu-suite.tgz"; }
trap pack EXIT
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee "$W/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)" | tee -a "$W/gpu.txt"
# shellcheck disable=SC2086
timeout "${TEST_TIMEOUT:-600}" python3 -m pytest -q -m gpu -n 0 ${TESTS:-tests} -p no:cacheprovider 2>&1 | tee "$W/pytest-gpu.txt" | tail -15
# shellcheck disable=SC2086
timeout "${RUN_TIMEOUT:-300}" python3 -m lstminfer run --out "$W/run" ${RUN_ARGS:-} >"$W/run.txt" 2>"$W/run.err"
echo "lstminfer run: exit $?"; grep -A12 '^Summary' "$W/run.txt"
timeout "${BENCH_TIMEOUT:-600}" python3 benchmarks/fused_vs_cudnn.py "$@" 2>&1 | tee "$W/fused_vs_cudnn.txt" | tail -14
timeout "${STREAM_TIMEOUT:-300}" python3 benchmarks/stream_gpu.py --json "$W/stream_gpu.json" 2>&1 | tee "$W/stream_gpu.txt"
if command -v ncu >/dev/null; then  # where a step of the persistent kernel goes (Nsight Compute's samples)
  timeout "${PROFILE_TIMEOUT:-200}" python3 benchmarks/kernel_profile.py --csv-dir "$W/profile" 2>&1 \
    | tee "$W/kernel_profile.txt"
fi
if compgen -G ".whl-serve/*.whl" >/dev/null; then
  OUT="$W/serve" timeout "${SERVE_TIMEOUT:-300}" bash benchmarks/serve_gpu.sh >"$W/serve.log" 2>&1
  echo "serve_gpu: exit $?"; cat "$W/serve/tables.txt" 2>/dev/null | tail -30
fi
