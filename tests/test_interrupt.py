"""Ctrl-C in `lstminfer run` never touches the previous complete results (issue 14 item 7).

A real subprocess gets SIGINT at several moments of a second run into the same --out: the first run's
files must survive byte for byte, and the command must say where this run's partial results are.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

RUN = ["run", "--kind", "lstm", "--input-size", "4", "--hidden-size", "8", "--num-layers", "1",
       "--backends", "torch", "--warmup", "0", "--iterations", "3"]


def _lstminfer(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lstminfer", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """The first run, complete: in this process (no signal is sent to it, and a Python started for it would cost
    seconds per pytest-xdist worker); the interrupted runs are subprocesses."""
    from lstminfer.cli import main

    out = tmp_path_factory.mktemp("interrupt") / "out"
    assert main([*RUN, "--duration", "0.05", "--out", str(out)]) == 0
    files = _snapshot(out)
    assert {"model.onnx", "results.json", "report.md"} <= set(files)
    return out, files


@pytest.mark.parametrize("moment", ["export", "verify torch", "bench torch"])
def test_sigint_leaves_the_previous_results_byte_for_byte(complete, moment):
    out, before = complete
    proc = _lstminfer(*RUN, "--duration", "5", "--seed", "7", "--out", str(out))
    seen = []
    for line in proc.stderr:  # one progress line per step: stderr is not a terminal
        seen.append(line)
        if line.startswith(f"lstminfer: {moment}"):
            proc.send_signal(signal.SIGINT)
            break
    else:
        proc.kill()
        pytest.fail(f"never reached {moment!r}: {''.join(seen)}")
    rest, _ = proc.communicate(timeout=120)[::-1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    assert f"the previous results in {out} are untouched" in rest and str(out / ".lstminfer-partial") in rest
    assert _snapshot(out) == before  # model.onnx, results.json, report.md and the plots, byte for byte
