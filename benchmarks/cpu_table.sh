#!/usr/bin/env bash
# The CPU table of docs/cpu.md in one command: presets x CPU backends (torch, onnxruntime, openvino
# latency/throughput) x threads, then the ONNX Runtime probe; prints markdown on stdout, progress on stderr.
# Run from the repository root. Arguments go to benchmarks/cpu_table.py (--threads, --rounds, --duration, --json).
# On a machine without OpenVINO and without network (the GPU machine), carry its wheels in $WHEELS
# (default .whl-cpu/, kept out of git by .git/info/exclude; 57 MiB):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl-cpu openvino==2026.4.1 openvino-telemetry
# About 100 s on the 2-core CPU machine, about 2-3 minutes expected on 16 cores, with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import openvino" 2>/dev/null; then
  WHEELS=${WHEELS:-.whl-cpu}
  if compgen -G "$WHEELS/openvino-*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/cpu-table-site \
      "$WHEELS"/openvino*.whl >&2
    export PYTHONPATH="/tmp/cpu-table-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "openvino is not installed and $WHEELS has no wheel: the table runs without it" >&2
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/cpu_table.py "$@"
