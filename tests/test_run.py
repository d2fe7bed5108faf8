"""One runner lifetime per backend, one error boundary per backend, switches restored, verdicts per precision,
and every command refusing bad input before it exports or writes anything."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _recurrent_files import lstm_proto, save
from lstminfer.backends import base
from lstminfer.backends.base import torch_settings
from lstminfer.backends.pytorch import TorchRunner
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import BenchRecord, Failure, Point, VerifyRecord, verdicts
from lstminfer.measure.run import measure
from lstminfer.measure.verify import References
from lstminfer.model.base import Model, ReferenceSource
from lstminfer.model.spec import ModelSpec, build_module
from lstminfer.onnx.export import export_model

TINY = ["--kind", "lstm", "--input-size", "4", "--hidden-size", "8", "--num-layers", "1", "--no-bidirectional"]
FAST = ["--duration", "0.02", "--warmup", "0", "--iterations", "3"]
TIMING = BenchConfig(warmup_ms=0, duration_s=0.01, iterations=3, seq_len=3, batch=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Model:
    spec = ModelSpec("lstm", 4, 8, 1)
    model = Model("tiny", spec, build_module(spec), seq_len=3, batch=2)
    export_model(model, tmp_path_factory.mktemp("tiny") / "model.onnx")
    return model


class _Counting(TorchRunner):
    """torch, counting prepare calls and the shapes each was given."""

    name = "counting"
    calls: list[tuple] = []

    def prepare_impl(self):
        type(self).calls.append((self.precision, self.shapes))
        super().prepare_impl()


class _Broken(TorchRunner):
    """A backend whose device dies: prepare raises what CUDA raises."""

    name = "broken"

    def prepare_impl(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")


class _LongFails(TorchRunner):
    """A backend that fails at one shape only (e.g. out of memory on the long point)."""

    name = "longfails"

    def execute_impl(self, device_inputs):
        if device_inputs[0].shape[0] > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().execute_impl(device_inputs)


class _HalfWrong(TorchRunner):
    """Right in fp32, wrong in bf16: the case the report's verification table got wrong."""

    name = "halfwrong"
    precisions = ("fp32", "bf16")

    def download_impl(self, device_outputs):
        outputs = super().download_impl(device_outputs)
        return {k: v + (0.5 if self.precision == "bf16" else 0.0) for k, v in outputs.items()}


class _ShapeFacts(TorchRunner):
    """A backend whose launch depends on the shape (like the fused kernel's plan)."""

    name = "shapefacts"

    def describe_at(self, seq_len, batch):
        return {**self.describe(), "plan": f"{seq_len}x{batch}"}


@pytest.fixture
def fakes(monkeypatch):
    for cls in (_Counting, _Broken, _LongFails, _HalfWrong, _ShapeFacts):
        monkeypatch.setitem(base.BACKENDS, cls.name, f"{__name__}:{cls.__name__}")
    _Counting.calls = []


def _targets(*names: str, precision: str = "fp32") -> list[Point]:
    return [Point(n, "cpu", precision) for n in names]


# ---- one lifetime ---------------------------------------------------------------------------------------------
def test_one_prepare_serves_every_verify_and_bench_point(tiny, fakes):
    result = measure(tiny, _targets("counting"), References(tiny), [(1, 2), (7, 2), (3, 4)], [(3, 2)], TIMING)
    assert _Counting.calls == [("fp32", ((3, 2), (1, 2), (7, 2), (3, 4)))]  # once; the bench shape first
    assert {(r.point.seq_len, r.point.batch) for r in result.verify} == {(1, 2), (7, 2), (3, 4)}
    assert all(isinstance(r, VerifyRecord) and r.passed for r in result.verify)
    (bench,) = result.bench
    assert isinstance(bench, BenchRecord) and (bench.point.seq_len, bench.point.batch) == (3, 2)


def test_each_record_carries_the_facts_of_its_own_shape(tiny, fakes, tmp_path):
    """Sweep records showed the fused plan of the default shape, not the point's (issue 13)."""
    from lstminfer.backends.base import BackendChoice
    from lstminfer.measure.sweep import Grid, run_sweep

    g = Grid((1, 4), (2, 3), ("fp32",), (BackendChoice("shapefacts", "cpu", True, "", ""),))
    result = run_sweep(tiny, g, tmp_path / "s.jsonl", TIMING)
    assert result.measured and all(r.extra["plan"] == r.point.shape for r in result.measured)


def test_records_carry_the_real_input_shapes(tiny, fakes):
    result = measure(tiny, _targets("torch"), References(tiny), [(5, 2)], [], TIMING)
    shapes = dict(result.verify[0].point.input_shapes)
    assert shapes["input"] == (5, 2, 4) and shapes["h0"] == (1, 2, 8)
    assert result.verify[0].to_dict()["input_shapes"]["input"] == [5, 2, 4]


# ---- one error boundary per backend ---------------------------------------------------------------------------
def test_an_exception_in_prepare_is_that_backends_record_and_the_others_go_on(tiny, fakes):
    result = measure(tiny, _targets("broken", "torch"), References(tiny), [(1, 2)], [(3, 2)], TIMING)
    broken = [r for r in result.verify + result.bench if r.point.backend == "broken"]
    assert [type(r) for r in broken] == [Failure, Failure] and [r.stage for r in broken] == ["verify", "bench"]
    assert broken[0].error == "CUDA error: an illegal memory access was encountered CUDA kernel errors might be ..."
    assert broken[0].error_type == "RuntimeError"
    torch_records = [r for r in result.verify + result.bench if r.point.backend == "torch"]
    assert torch_records and all(isinstance(r, VerifyRecord | BenchRecord) for r in torch_records)
    assert verdicts(result.verify) == {Point("broken", "cpu", "fp32"): "FAILED",
                                       Point("torch", "cpu", "fp32"): "passed"}


def test_an_exception_at_one_point_fails_that_point_only(tiny, fakes):
    result = measure(tiny, _targets("longfails"), References(tiny), [(1, 2), (9, 2)], [(3, 2)], TIMING)
    failed = [r for r in result.verify if isinstance(r, Failure)]
    assert [(r.point.seq_len, r.error_type) for r in failed] == [(9, "OutOfMemoryError")]
    assert any(isinstance(r, VerifyRecord) and r.point.seq_len == 1 for r in result.verify)
    assert isinstance(result.bench[0], BenchRecord)  # the runner served the next step after the failure


@pytest.mark.parametrize("command", ["verify", "bench", "run", "sweep"])
def test_every_command_goes_on_past_a_broken_backend(cli, tmp_path, fakes, command):
    extra = {"verify": [], "bench": FAST, "run": FAST, "sweep": [*FAST, "--seq-len", "1,2", "--batch", "2"]}[command]
    code, out, err = cli(command, *TINY, "--backends", "broken,torch", *extra, "--out", tmp_path / "o",
                         "--json", tmp_path / "r.json")
    assert "Traceback" not in err
    data = json.loads((tmp_path / "r.json").read_text())
    records = data if isinstance(data, list) else data["verify"] + data["bench"] + data.get("errors", [])
    assert any(r["backend"] == "broken" and "illegal memory access" in r["error"] for r in records)
    assert any(r["backend"] == "torch" and ("latency_ms" in r or r.get("passed")) for r in records)
    assert code == (0 if command == "bench" else 1)  # a backend that raised is not verified


def test_bench_on_a_file_onnx_runtime_refuses_is_one_line_exit_2(cli, tmp_path):
    path = save(lstm_proto(layout=1), tmp_path / "batch_first.onnx")  # ONNX Runtime refuses layout=1 nodes
    code, out, err = cli("bench", path, "--backends", "onnxruntime", "--shapes", "X:2x5x3", *FAST,
                         "--out", tmp_path / "o")
    assert code == 2 and "Traceback" not in err
    (line,) = [x for x in err.strip().splitlines() if x.startswith("lstminfer: error")]
    assert "nothing was benchmarked" in line and "onnxruntime[cpu]" in line


# ---- global switches -------------------------------------------------------------------------------------------
def test_torch_settings_are_restored_even_when_prepare_fails(tiny, fakes):
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads())
    other = 2 if before[2] == 1 else 1  # a count that differs from the process's (one thread under pytest-xdist)
    with torch_settings(tf32=not before[0], threads=other):
        assert torch.backends.cudnn.allow_tf32 is (not before[0]) and torch.get_num_threads() == other
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads()) == before

    runner = TorchRunner(tiny, threads=other)
    runner.prepare()
    assert torch.get_num_threads() == other
    runner.close()
    assert torch.get_num_threads() == before[2]

    broken = _Broken(tiny, threads=other)
    broken.settings = lambda: torch_settings(threads=other)  # a backend with a switch whose prepare raises
    with pytest.raises(RuntimeError):
        broken.prepare()
    assert torch.get_num_threads() == before[2]


# ---- verdicts per precision ------------------------------------------------------------------------------------
def test_fp32_passes_and_bf16_fails_are_two_verdicts(tiny, fakes):
    """Verdicts were keyed without the precision: the report printed the fp32 row FAILED too."""
    from lstminfer.report.tables import verify_rows

    references = References(tiny)
    records = []
    for precision in ("fp32", "bf16"):
        records += measure(tiny, _targets("halfwrong", precision=precision), references, [(3, 2)], [],
                           TIMING).verify
    assert verdicts(records) == {Point("halfwrong", "cpu", "fp32"): "passed",
                                 Point("halfwrong", "cpu", "bf16"): "FAILED"}
    rows = {row["precision"]: row["verdict"] for row in verify_rows(records)}
    assert rows["fp32"] == "passed" and rows["bf16"].startswith("FAILED")


# ---- a reference that is not independent -----------------------------------------------------------------------
class _SelfReferenced(Model):
    @property
    def reference_source(self) -> ReferenceSource:
        return ReferenceSource("onnxruntime-cpu-fp32", independent=False,
                               reason="onnx.reference lacks DequantizeLinear; the reference is ONNX Runtime")


def test_a_reference_that_is_a_runtime_under_test_labels_every_record_unverified(fakes):
    spec = ModelSpec("lstm", 4, 8, 1)
    model = _SelfReferenced("self", spec, build_module(spec), seq_len=3, batch=2)
    result = measure(model, _targets("torch"), References(model), [(3, 2)], [], TIMING)
    assert all(r.unverified == "onnx.reference lacks DequantizeLinear; the reference is ONNX Runtime"
               for r in result.verify)
    (verdict,) = verdicts(result.verify).values()
    assert verdict.startswith("unverified: no independent reference (onnx.reference lacks DequantizeLinear")


def test_cli_unverified_exits_1_unless_allowed_and_says_so_before_the_notes(cli, tmp_path):
    path = save(lstm_proto(clip=3.0), tmp_path / "clipped.onnx")  # onnx.reference ignores clip: not applicable
    args = ["verify", path, "--backends", "onnxruntime", "--shapes", "X:5x2x3", "--out", tmp_path / "o"]
    code, out, err = cli(*args)
    assert code == 1 and "unverified: no independent reference" in out + err
    lines = err.splitlines()
    first = next(i for i, line in enumerate(lines) if "unverified" in line)
    assert all("note:" not in line or "unverified" in line for line in lines[:first])  # before every other note
    code, out, err = cli(*args, "--allow-unverified")
    assert code == 0


def test_cli_sweep_on_an_unverified_file_says_so_first_and_exits_1(cli, tmp_path):
    path = save(lstm_proto(clip=3.0), tmp_path / "clipped.onnx")
    args = ["sweep", path, "--backends", "onnxruntime", "--seq-len", "2", "--batch", "1", *FAST]
    code, out, err = cli(*args, "--out", tmp_path / "a")
    assert code == 1 and err.splitlines()[0].startswith("note: unverified: no independent reference")
    code, out, err = cli(*args, "--out", tmp_path / "b", "--allow-unverified")
    assert code == 0, err


# ---- nothing to run is an error (exit 2), not a green exit -----------------------------------------------------
def test_device_cuda_without_cuda_is_exit_2(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for command in ("verify", "bench"):
        code, out, err = cli(command, *TINY, "--device", "cuda", *FAST[:0], "--out", tmp_path / "o")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "no backend can run on cuda" in err
    assert not (tmp_path / "o" / "model.onnx").exists()  # refused before the export


def test_precision_no_backend_runs_here_is_exit_2(cli, tmp_path):
    code, out, err = cli("verify", *TINY, "--precision", "fp16", "--backends", "torch,onnxruntime",
                         "--out", tmp_path / "o")
    assert code == 2 and "nothing was verified" in err and "fp16" in err and "Traceback" not in err


# ---- arguments and output paths checked before any work --------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (["--points", "1x3,banana"], "--points"),
    (["--backends", "torch,nosuchbackend"], "unknown backend 'nosuchbackend'"),
    (["--json", "{blocker}/sub/r.json"], "--json"),
    (["--json", "{out}"], "is a directory"),
])
def test_bad_arguments_are_refused_before_the_export(cli, tmp_path, bad, message):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = tmp_path / "o"
    out.mkdir()
    bad = [b.format(blocker=blocker, out=out) for b in bad]
    code, _, err = cli("run", *TINY, *FAST, *bad, "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2  # the model line, the error
    assert not (out / "model.onnx").exists() and not (out / "results.json").exists()


def test_a_refused_resume_writes_nothing(cli, tmp_path):
    out = tmp_path / "o"
    code, _, err = cli("sweep", *TINY, *FAST, "--seq-len", "1", "--batch", "1", "--backends", "torch", "--out", out)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = cli("sweep", *TINY[:-1], "--bidirectional", *FAST, "--seq-len", "1", "--batch", "1",
                       "--backends", "torch", "--out", out, "--resume")
    assert code == 2 and "another model" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # model.onnx included


def test_a_staged_run_replaces_its_files_together_and_drops_stale_plots(tmp_path):
    from lstminfer.measure.store import StagedDir

    out = tmp_path / "out"
    out.mkdir()
    for name, text in (("results.json", "old"), ("report.md", "old"), ("report-latency.png", "old"),
                       ("notes.txt", "the user's")):
        (out / name).write_text(text)
    staged = StagedDir(out)
    stage = staged.start()
    (stage / "results.json").write_text("new")
    (stage / "report.md").write_text("new")
    (stage / "report-speedup.png").write_text("new")
    assert (out / "results.json").read_text() == "old"  # nothing in OUT changes until commit
    written = staged.commit(stale="report-*.png")
    assert [p.name for p in written][-1] == "results.json"  # moved last: it marks the run complete
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "results.json": "new", "report.md": "new", "report-speedup.png": "new", "notes.txt": "the user's"}


# ---- progress a CI log can read --------------------------------------------------------------------------------
def test_progress_is_one_line_per_step_when_stderr_is_not_a_terminal(cli, tmp_path):
    code, out, err = cli("run", *TINY, *FAST, "--backends", "torch", "--out", tmp_path / "o")
    assert code == 0, err
    steps = [line for line in err.splitlines() if line.startswith("lstminfer: ")]
    assert steps[0].startswith("lstminfer: export") and any(s.startswith("lstminfer: float64 reference") for s in steps)
    assert "lstminfer: verify torch[cpu] fp32 seq 1 x batch 3" in steps
    assert "lstminfer: bench torch[cpu] fp32 seq 1 x batch 3" in steps
    assert len(steps) == len(set(steps))  # the timing loop's many updates are one line
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["model"]["onnx"] == str(tmp_path / "o" / "model.onnx")
    assert not (tmp_path / "o" / ".lstminfer-partial").exists()
    assert np.isfinite(results["bench"][0]["latency_ms"]["median"])


# ---- on a GPU (the lead runs these on the H200) ----------------------------------------------------------------
@pytest.mark.gpu
def test_tf32_is_restored_when_a_cuda_runner_closes(tiny):
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    runner = TorchRunner(tiny, device="cuda", tf32=not before[0])
    runner.prepare()
    assert torch.backends.cudnn.allow_tf32 is (not before[0])  # switched for this runner's lifetime ...
    runner.close()
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before  # ... and back


@pytest.mark.gpu
def test_a_gpu_sweep_prepares_each_runner_once(tiny, tmp_path, monkeypatch):
    from lstminfer.backends.base import BackendChoice
    from lstminfer.backends.pytorch import TorchGraphRunner
    from lstminfer.measure.sweep import Grid, run_sweep

    prepared = []
    real = TorchGraphRunner.prepare_impl

    def counting(self):
        prepared.append((self.name, self.precision))
        real(self)

    monkeypatch.setattr(TorchGraphRunner, "prepare_impl", counting)
    choices = (BackendChoice("torch", "cuda", True, "", ""), BackendChoice("torch-graph", "cuda", True, "", ""))
    result = run_sweep(tiny, Grid((1, 4), (2, 3), ("fp32", "fp16"), choices), tmp_path / "s.jsonl", TIMING)
    assert prepared == [("torch-graph", "fp32"), ("torch-graph", "fp16")]
    bench = [r for r in result.measured if r.stage == "bench"]
    assert len(bench) == 16 and all(isinstance(r, BenchRecord) and r.clock == "cuda-events" for r in bench)
    assert verdicts(result.measured) == {Point(c.name, "cuda", p): "passed" for p in ("fp32", "fp16") for c in choices}
