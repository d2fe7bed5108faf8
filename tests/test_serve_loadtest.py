"""The load generator's and the served model's bookkeeping, without a server: several processes' counts merged
exactly, how many processes a level gets, the execute profile's per-size medians (hand-computed), and the
benchmark's pause between executions for its paced baseline."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from lstminfer.serve.loadtest import AUTO_WORKERS_PER_PROCESS, Counted, processes_for
from lstminfer.serve.pymodel import Profile


def test_counts_of_several_processes_merge_exactly():
    a = Counted(latencies=[1.0, 3.0], failed=1, errors=["timeout", "refused"], count_from=10.0, last_done=12.5)
    b = Counted(latencies=[2.0], failed=2, errors=["refused", "reset", "empty", "late"], count_from=10.0,
                last_done=13.0)
    c = Counted(latencies=[], failed=0, errors=[], count_from=10.0, last_done=10.0)  # a process that counted none
    merged = Counted.merge([a, b, c])
    assert sorted(merged.latencies) == [1.0, 2.0, 3.0]
    assert merged.failed == 3
    assert merged.errors == ["timeout", "refused", "reset"]  # first three distinct, in order
    assert (merged.count_from, merged.last_done) == (10.0, 13.0)


def test_processes_for_a_level():
    assert processes_for(8, 1) == 1
    assert processes_for(8, 4) == 4
    assert processes_for(3, 8) == 3  # never more processes than workers
    most = max(1, (os.cpu_count() or 1) // 4)  # auto leaves three quarters of the cores to the server
    assert processes_for(AUTO_WORKERS_PER_PROCESS, "auto") == 1
    assert processes_for(AUTO_WORKERS_PER_PROCESS + 1, "auto") == min(2, most)
    assert processes_for(64, "auto") == min(64 // AUTO_WORKERS_PER_PROCESS, most)
    assert processes_for(1, "auto") == 1


def test_profile_medians_per_size_class():
    profile = Profile()
    for seconds in (1e-4, 3e-4, 2e-4):  # executions of 1 request: median 200 us
        profile.add(1, {"inputs": seconds / 10, "execute": seconds})
    for requests, seconds in ((4, 8e-4), (6, 1.2e-3)):  # class 4-7: 5 requests each, median 1000 us
        profile.add(requests, {"execute": seconds})
    lines = profile.summary()
    assert lines[0] == ("profile: executions of 1-1 requests: 3, 1.0 requests each; median us an execution "
                        "(a request): inputs 20 (20), execute 200 (200)")
    assert lines[1] == ("profile: executions of 4-7 requests: 2, 5.0 requests each; median us an execution "
                        "(a request): execute 1000 (200)")
    assert Profile().summary() == ["profile: no execution"]


def test_profile_keeps_bounded_samples():
    profile = Profile(keep=10)
    for k in range(25):
        profile.add(1, {"execute": float(k)})
    kept = profile.samples[1]["execute"]
    assert len(kept) <= 10 and kept[-1] == 24.0  # the latest samples
    assert profile.counts[1] == [25, 25]


def test_processes_flag_is_checked(cli):
    code, out, err = cli("loadtest", "127.0.0.1:1", "--processes", "0")
    assert code == 2 and "--processes" in err and "a positive integer or auto" in err


class _Unpicklable:
    """Pickles in the parent, fails to unpickle in a spawned child: a load-generator process that dies before
    it starts."""

    def __reduce__(self):
        return int, ("not a number",)


def test_a_process_that_dies_before_the_start_is_one_line_at_once():
    import time

    from lstminfer.errors import UserError
    from lstminfer.serve.loadtest import PROCESS_START_S, _Level, _run_processes

    level = _Level(url="127.0.0.1:1", protocol="http", model="m", mode="stateless", arrays={"x": _Unpicklable()},
                   expected={}, warmup_s=0.0, duration_s=1.0, timeout_s=1.0, chunks=1, first_sequence_id=1)
    begin = time.monotonic()
    with pytest.raises(UserError, match="^a load-generator process exited with code 1$"):
        _run_processes(level, concurrency=2, processes=2, max_requests=10)
    assert time.monotonic() - begin < PROCESS_START_S / 2  # not after the start timeout


class _FirstOnly:
    """Unpickles in the first spawned child only (its mkdir makes the folder), fails in any later one (the folder
    exists): one load-generator process dies while the other waits, ready, for the start."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __reduce__(self):
        return os.mkdir, (self.folder,)


def test_the_other_processes_are_stopped_at_once_when_one_fails(tmp_path):
    import time

    from lstminfer.errors import UserError
    from lstminfer.serve.loadtest import _Level, _run_processes

    level = _Level(url="127.0.0.1:1", protocol="http", model="m", mode="stateless",
                   arrays={"x": _FirstOnly(tmp_path / "first")}, expected={}, warmup_s=0.0, duration_s=1.0,
                   timeout_s=1.0, chunks=1, first_sequence_id=1)
    failed_at = []
    begin = time.monotonic()
    with pytest.raises(UserError, match="^a load-generator process exited with code 1$"):
        try:
            _run_processes(level, concurrency=2, processes=2, max_requests=10)
        finally:
            failed_at.append(time.monotonic())
    assert (tmp_path / "first").is_dir()  # one process did start, and waited for the start
    # the waiting process is ended, not joined for seconds (it would wait PROCESS_START_S for a start that never comes)
    assert failed_at[0] - begin < 4.0


def _serve_triton():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_triton.py"
    spec = importlib.util.spec_from_file_location("serve_triton", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pause_between_executions_is_the_gap_less_the_backend():
    bench = _serve_triton()
    # 800 requests a second, 2 an execution: an execution every 2.5 ms, the backend 0.5 ms of it -> 2 ms idle
    assert bench.pause_between_executions(800.0, {"requests_per_exec": 2.0}, 0.5) == pytest.approx(2e-3)
    # saturated: executions back to back, no pause
    assert bench.pause_between_executions(4000.0, {"requests_per_exec": 2.0}, 0.6) == 0.0
    # a slow level is capped at 50 ms; nothing counted: no pause
    assert bench.pause_between_executions(1.0, {"requests_per_exec": 1.0}, 0.1) == 0.05
    assert bench.pause_between_executions(0.0, {"requests_per_exec": 1.0}, 0.1) == 0.0
    assert bench.pause_between_executions(100.0, {}, 0.1) == 0.0
    # two instances share the executions: each instance's backend waits twice the server's interval, less its call
    assert bench.pause_between_executions(800.0, {"requests_per_exec": 2.0}, 0.5, 2) == pytest.approx(4.5e-3)
