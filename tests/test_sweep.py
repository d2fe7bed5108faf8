"""The sweep: every grid point measured once, lines on disk as each point ends, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstminfer.measure.run as run_mod
from lstminfer.backends.base import BackendChoice
from lstminfer.backends.pytorch import TorchRunner
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import BenchRecord, Point
from lstminfer.measure.store import load_results
from lstminfer.measure.sweep import Grid, done_points, run_sweep, trim_unfinished
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module

TINY = ["--kind", "lstm", "--input-size", "4", "--hidden-size", "8", "--num-layers", "1"]
FAST = ["--duration", "0.02", "--warmup", "0", "--iterations", "3"]
TIMING = BenchConfig(warmup_ms=0, duration_s=0.01, iterations=3)
TORCH = BackendChoice("torch", "cpu", True, "", "")
REAL_TIMING = run_mod.time_queries  # the timing loop of every point: what the fakes below stand in for


@pytest.fixture(scope="module")
def tiny_model() -> Model:
    spec = ModelSpec(kind="lstm", input_size=4, hidden_size=8, num_layers=1)
    return Model(name="tiny", spec=spec, module=build_module(spec, seed=0), seq_len=4, batch=2)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bench_points(path: Path) -> list[tuple]:
    return [(r["precision"], r["seq_len"], r["batch"], r["backend"]) for r in lines_of(path) if r["kind"] == "bench"]


def grid(seq_lens=(1, 3), batches=(1, 2), precisions=("fp32",), choices=(TORCH,)) -> Grid:
    return Grid(tuple(seq_lens), tuple(batches), tuple(precisions), tuple(choices))


# ---- the grid -----------------------------------------------------------------------------------

def test_grid_is_the_product_in_order_without_duplicates() -> None:
    g = grid(seq_lens=(1, 3, 1), batches=(2,), precisions=("fp32", "bf16"))
    assert [(p.precision, p.seq_len, p.batch) for p in g.points()] == [
        ("fp32", 1, 2), ("fp32", 3, 2), ("bf16", 1, 2), ("bf16", 3, 2)]


@pytest.mark.parametrize("kwargs", [{"seq_lens": (0, 4)}, {"batches": (-1,)}, {"seq_lens": ()},
                                    {"precisions": ("fp8",)}, {"choices": ()}])
def test_grid_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(UserError):
        grid(**kwargs)


@pytest.mark.parametrize("flag,value", [("--seq-len", "0,16"), ("--batch", "1,-8"), ("--batch", "1,x"),
                                        ("--precision", "fp32,fp8")])
def test_cli_bad_grid_is_one_line_exit_2(cli, tmp_path: Path, flag: str, value: str) -> None:
    code, out, err = cli("sweep", *TINY, *FAST, flag, value, "--out", tmp_path / "o")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and flag in err
    assert not (tmp_path / "o" / "sweep.jsonl").exists()


# ---- a sweep on the CPU -------------------------------------------------------------------------

def test_cli_sweep_measures_every_point_once(cli, tmp_path: Path) -> None:
    code, out, err = cli("sweep", *TINY, *FAST, "--seq-len", "1,5", "--batch", "1,3", "--precision", "fp32,fp16",
                         "--backends", "torch,onnxruntime", "--out", tmp_path)
    assert code == 0, err
    lines = lines_of(tmp_path / "sweep.jsonl")
    assert lines[0]["kind"] == "machine" and "cpu" in lines[0]["machine"]
    assert lines[0]["model"]["spec"]["hidden_size"] == 8
    assert sum(r["kind"] == "machine" for r in lines) == 1
    expected = {(p, s, b, k) for p in ("fp32", "fp16") for s in (1, 5) for b in (1, 3)
                for k in ("torch", "onnxruntime")}
    points = bench_points(tmp_path / "sweep.jsonl")
    assert sorted(points) == sorted(expected)  # 16 points, each exactly once
    for r in lines:
        if r["kind"] == "bench" and r["precision"] == "fp32":
            assert r["latency_ms"]["count"] >= 3 and r["seq_len"] in (1, 5)
        if r["kind"] == "bench" and r["precision"] == "fp16":  # neither runs fp16 on a CPU: recorded, not fatal
            assert "latency_ms" not in r and r["skipped"]
    verified = [r for r in lines if r["kind"] == "verify" and r.get("max_abs_err") is not None]
    assert {(r["seq_len"], r["batch"], r["output"]) for r in verified} == {
        (s, b, o) for s in (1, 5) for b in (1, 3) for o in ("output", "hn", "cn")}
    assert all(r["passed"] for r in verified)
    results = load_results(tmp_path / "sweep.jsonl")  # what `lstminfer report` reads
    assert len(results["bench"]) == 16 and results["model"]["name"].startswith("seed with")  # size flags modify seed
    assert "Fastest backend per point" in out


def test_failed_point_is_recorded_and_the_sweep_goes_on(tiny_model: Model, tmp_path: Path, monkeypatch) -> None:
    def flaky(runner, inputs, config, on_query=None):
        if config.seq_len == 3 and config.batch == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return REAL_TIMING(runner, inputs, config, on_query)

    monkeypatch.setattr(run_mod, "time_queries", flaky)
    path = tmp_path / "sweep.jsonl"
    result = run_sweep(tiny_model, grid(), path, TIMING)
    errors = [r for r in lines_of(path) if r["kind"] == "error"]
    assert len(errors) == 1 and len(result.errors) == 1
    assert errors[0]["seq_len"] == 3 and errors[0]["batch"] == 2 and "out of memory" in errors[0]["error"]
    assert errors[0]["error_type"] == "RuntimeError"
    assert sorted(bench_points(path)) == [("fp32", 1, 1, "torch"), ("fp32", 1, 2, "torch"), ("fp32", 3, 1, "torch")]
    assert load_results(path)["errors"][0]["error"] == errors[0]["error"]

    # --retry-errors measures only the failed point again
    monkeypatch.setattr(run_mod, "time_queries", REAL_TIMING)
    again = run_sweep(tiny_model, grid(), path, TIMING, resume=True, retry_errors=True)
    assert [r for r in again.measured if isinstance(r, BenchRecord)][0].point.seq_len == 3
    assert len(bench_points(path)) == 4


def test_user_error_in_verify_is_recorded(tiny_model: Model, tmp_path: Path, monkeypatch) -> None:
    def refuse(self):
        raise UserError("backend torch cannot run this model: no")

    monkeypatch.setattr(TorchRunner, "prepare_impl", refuse)
    run_sweep(tiny_model, grid(seq_lens=(1,), batches=(1,)), tmp_path / "s.jsonl", TIMING)
    (error,) = [r for r in lines_of(tmp_path / "s.jsonl") if r["kind"] == "error"]
    assert error["error_type"] == "UserError" and "cannot run" in error["error"]


def test_each_backend_is_prepared_once_for_the_whole_grid(tiny_model: Model, tmp_path: Path, monkeypatch) -> None:
    prepared: list[tuple] = []
    real = TorchRunner.prepare_impl

    def counting(self):
        prepared.append((self.name, self.device, self.precision, self.shapes))
        real(self)

    monkeypatch.setattr(TorchRunner, "prepare_impl", counting)
    onnxruntime = BackendChoice("onnxruntime", "cpu", True, "", "")
    g = grid(seq_lens=(1, 3), batches=(1, 2), precisions=("fp32", "bf16"), choices=(TORCH, onnxruntime))
    run_sweep(tiny_model, g, tmp_path / "s.jsonl", TIMING)
    # one prepare per (backend, device, precision), given every shape of the grid; 16 points measured
    assert [p[:3] for p in prepared] == [("torch", "cpu", "fp32"), ("torch", "cpu", "bf16")]
    assert all(set(p[3]) == {(1, 1), (1, 2), (3, 1), (3, 2)} for p in prepared)
    assert len(bench_points(tmp_path / "s.jsonl")) == 16


# ---- interruption and resume --------------------------------------------------------------------

class Interrupt:
    """The timing loop: lets `n` points through, then acts as Ctrl-C; counts every point it measured."""

    def __init__(self, n: int | None) -> None:
        self.n, self.measured = n, []

    def __call__(self, runner, inputs, config, on_query=None):
        if self.n is not None and len(self.measured) >= self.n:
            raise KeyboardInterrupt
        self.measured.append((config.precision, config.seq_len, config.batch))
        return REAL_TIMING(runner, inputs, config, on_query)


def test_ctrl_c_then_resume_measures_each_point_once(tiny_model: Model, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sweep.jsonl"
    g = grid(seq_lens=(1, 2, 3), batches=(1, 2))
    first = Interrupt(4)
    monkeypatch.setattr(run_mod, "time_queries", first)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny_model, g, path, TIMING)
    assert len(bench_points(path)) == 4  # every finished point is on disk

    second = Interrupt(None)
    monkeypatch.setattr(run_mod, "time_queries", second)
    result = run_sweep(tiny_model, g, path, TIMING, resume=True)
    assert result.skipped == 4 and len(second.measured) == 2
    assert not set(first.measured) & set(second.measured)  # no point measured twice
    assert sorted(bench_points(path)) == sorted(("fp32", p.seq_len, p.batch, "torch") for p in g.points())
    assert sum(r["kind"] == "machine" for r in lines_of(path)) == 1


def test_killed_writer_tail_is_dropped_and_remeasured(tiny_model: Model, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sweep.jsonl"
    g = grid()
    run_sweep(tiny_model, g, path, TIMING)
    full = path.read_text().splitlines(keepends=True)
    # a kill in the middle of the last point: its verify lines are written, its bench line half written
    path.write_text("".join(full[:-1]) + full[-1][: len(full[-1]) // 2])
    assert load_results(path)["bench"].__len__() == 3  # readers tolerate the truncated last line

    counter = Interrupt(None)
    monkeypatch.setattr(run_mod, "time_queries", counter)
    run_sweep(tiny_model, g, path, TIMING, resume=True)
    assert counter.measured == [("fp32", 3, 2)]
    lines = lines_of(path)  # every line parses again: the partial one is gone
    assert sorted(bench_points(path)) == sorted(("fp32", p.seq_len, p.batch, "torch") for p in g.points())
    verify_last = [r for r in lines if r["kind"] == "verify" and (r["seq_len"], r["batch"]) == (3, 2)]
    assert sorted(r["output"] for r in verify_last) == ["cn", "hn", "output"]  # the orphans did not stay


def test_existing_sweep_needs_resume_and_is_left_untouched(cli, tmp_path: Path) -> None:
    path = tmp_path / "sweep.jsonl"
    path.write_text('{"kind": "machine", "machine": {}}\n')
    before = path.read_bytes()
    code, _, err = cli("sweep", *TINY, *FAST, "--seq-len", "1", "--batch", "1", "--out", tmp_path)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    assert path.read_bytes() == before


def test_corrupt_middle_line_refuses_resume_and_keeps_the_file(tiny_model: Model, tmp_path: Path) -> None:
    path = tmp_path / "sweep.jsonl"
    run_sweep(tiny_model, grid(seq_lens=(1,)), path, TIMING)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:10] + "\n"
    path.write_text("".join(lines))
    before = path.read_bytes()
    with pytest.raises(UserError, match="corrupt"):
        run_sweep(tiny_model, grid(seq_lens=(1,)), path, TIMING, resume=True)
    assert path.read_bytes() == before


def test_resume_with_another_model_is_refused(tiny_model: Model, tmp_path: Path) -> None:
    path = tmp_path / "sweep.jsonl"
    run_sweep(tiny_model, grid(seq_lens=(1,), batches=(1,)), path, TIMING)
    spec = ModelSpec(kind="gru", input_size=4, hidden_size=8)
    other = Model(name="tiny", spec=spec, module=build_module(spec), seq_len=4, batch=2)
    with pytest.raises(UserError, match="another model"):
        run_sweep(other, grid(seq_lens=(1,), batches=(1,)), path, TIMING, resume=True)


def test_cli_interrupt_exit_130_then_resume(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(run_mod, "time_queries", Interrupt(1))
    args = ["sweep", *TINY, *FAST, "--seq-len", "1,2", "--batch", "1", "--backends", "torch", "--out", tmp_path]
    code, _, err = cli(*args)
    assert code == 130 and "--resume" in err
    assert len(bench_points(tmp_path / "sweep.jsonl")) == 1
    monkeypatch.setattr(run_mod, "time_queries", Interrupt(None))
    code, out, err = cli(*args, "--resume")
    assert code == 0, err
    assert sorted(bench_points(tmp_path / "sweep.jsonl")) == [("fp32", 1, 1, "torch"), ("fp32", 2, 1, "torch")]


def test_unwritable_out_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = cli("sweep", *TINY, *FAST, "--seq-len", "1", "--batch", "1", "--out", blocker / "sub")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a directory"


def test_point_of_record_round_trips() -> None:
    p = Point("onnxruntime", "cuda", "fp16", 8, 2)
    assert Point.from_dict(p.to_dict()) == p
    shapeless = {"kind": "bench", "backend": "torch", "device": "cpu", "precision": "fp32", "seq_len": None,
                 "batch": None}
    assert done_points([shapeless]) == set()  # a backend skipped outright closes no point


def synthetic_sweep() -> tuple[bytes, list[int]]:
    """A sweep file of 4 points (3 verify lines and a bench line each); and where each point's bench line ends."""
    lines = [{"kind": "machine", "machine": {"cpu": "x"}, "model": {}}]
    for seq_len in (1, 2, 3, 4):
        point = {"backend": "torch", "device": "cpu", "precision": "fp32", "seq_len": seq_len, "batch": 1}
        lines += [{"kind": "verify", **point, "output": o, "max_abs_err": 1e-7} for o in ("output", "hn", "cn")]
        lines.append({"kind": "bench", **point, "latency_ms": {"median": 0.1 * seq_len}})
    data, ends = b"", []
    for line in lines:
        data += (json.dumps(line) + "\n").encode()
        if line["kind"] == "bench":
            ends.append(len(data))
    return data, ends


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=2000))
def test_a_kill_at_any_byte_keeps_exactly_the_finished_points(tmp_path_factory, cut: int) -> None:
    data, ends = synthetic_sweep()
    cut = min(cut * len(data) // 2000, len(data))
    path = tmp_path_factory.mktemp("kill") / "sweep.jsonl"
    path.write_bytes(data[:cut])
    records = trim_unfinished(path)
    finished = [end for end in ends if end <= cut]
    machine_end = data.index(b"\n") + 1
    keep = finished[-1] if finished else (machine_end if cut >= machine_end else 0)
    assert path.read_bytes() == data[:keep]  # cut back to the last finished point, never further
    assert sorted(p.seq_len for p in done_points(records)) == list(range(1, len(finished) + 1))
