"""TensorRT backend: profiles, cache keys, sidecars, provider options, runners (most of it without TensorRT).

Tests that need TensorRT itself carry the `tensorrt` marker and skip with a reason when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lstminfer.backends.tensorrt import TensorRTGraphRunner, TensorRTRunner
from lstminfer.backends.trtexec import TrtexecRunner
from lstminfer.errors import UserError
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec
from lstminfer.tensorrt import build as tb
from lstminfer.tensorrt import profile as tp

FIXTURES = Path(__file__).parent / "fixtures"
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TRT, reason="needs NVIDIA TensorRT (pip install 'lstminfer[tensorrt]')")
FACTS = {"tensorrt_version": "10.8.0", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}


def write_onnx(path: Path, x_dims: list, state_dims: list | None = None, metadata: dict | None = None,
               n_states: int = 2) -> Path:
    """A tiny ONNX file with the given input dims (Identity nodes: only the inputs matter here)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_dims)]
    names = ["input"]
    if state_dims is not None:
        for name in ("h0", "c0")[:n_states]:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, state_dims))
            names.append(name)
    outputs = [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, None) for n in names]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in names]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs))
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


@pytest.fixture
def lstm_onnx(tmp_path: Path) -> Path:
    """What `lstminfer export` writes for the seed model: dynamic sequence and batch, example shape 5x3."""
    return write_onnx(tmp_path / "seed.onnx", ["sequence", "batch", 10], [20, "batch", 20],
                      {"lstminfer.example_shape": "5x3", "lstminfer.spec": json.dumps({"batch_first": False})})


# ---- profiles -------------------------------------------------------------------------------------

def test_default_profile(lstm_onnx: Path) -> None:
    p = tb.derive_profile(lstm_onnx)
    assert p.min == {"input": (1, 1, 10), "h0": (20, 1, 20), "c0": (20, 1, 20)}
    assert p.opt == {"input": (5, 3, 10), "h0": (20, 3, 20), "c0": (20, 3, 20)}  # the export's example shape
    assert p.max == {"input": (tp.DEFAULT_MAX_SEQ_LEN, tp.DEFAULT_MAX_BATCH, 10), "h0": (20, 64, 20),
                     "c0": (20, 64, 20)}


def test_profile_bench_shape_and_max(lstm_onnx: Path) -> None:
    p = tb.derive_profile(lstm_onnx, seq_len=700, batch=2, max_batch=8)
    assert p.opt["input"] == (700, 2, 10) and p.max["input"] == (700, 8, 10)  # max never below opt
    p = tb.derive_profile(lstm_onnx, seq_len=16, batch=4, max_seq_len=32)
    assert p.max["input"] == (32, 64, 10) and p.max["h0"] == (20, 64, 20)


def test_profile_overrides_in_trtexec_syntax(lstm_onnx: Path) -> None:
    from lstminfer.onnx.shapes import parse_shapes

    p = tb.derive_profile(lstm_onnx, max_shapes=parse_shapes("input:100x8x10"))
    assert p.max["input"] == (100, 8, 10) and p.max["h0"] == (20, 64, 20)  # only the named input changes


def test_profile_symbol_roles(tmp_path: Path) -> None:
    # dynamo-style names: the symbol shared with the states is the batch; x's own one is the sequence only
    # where the graph or the export's layout says so (the one rule inspect uses too).
    onnx_path = write_onnx(tmp_path / "d.onnx", ["s0", "s1", 10], [2, "s1", 4],
                           metadata={"lstminfer.spec": '{"batch_first": false}'})
    p = tb.derive_profile(onnx_path, seq_len=7, batch=2)
    assert p.opt == {"input": (7, 2, 10), "h0": (2, 2, 4), "c0": (2, 2, 4)}
    with pytest.raises(UserError, match=r"cannot tell what dynamic axis 0 of input 'input' \(s0\)"):
        tb.derive_profile(write_onnx(tmp_path / "d2.onnx", ["s0", "s1", 10], [2, "s1", 4]), seq_len=7, batch=2)
    # batch_first from the export's metadata; no states
    onnx_path = write_onnx(tmp_path / "bf.onnx", [None, None, 10], metadata={"lstminfer.spec": '{"batch_first": true}'})
    assert tb.derive_profile(onnx_path, seq_len=7, batch=2).opt == {"input": (2, 7, 10)}
    # static model: empty profile
    onnx_path = write_onnx(tmp_path / "s.onnx", [1, 3, 10], [20, 3, 20])
    assert tb.derive_profile(onnx_path) == tb.Profile()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_shapes": {"nope": (1, 1, 10)}}, "'nope', which is not an input"),
    ({"max_shapes": {"input": (1, 10)}}, "has 2 dimensions; the model's input has 3"),
    ({"max_shapes": {"input": (9, 9, 11)}}, "axis 2 is fixed at 10"),
    ({"min_shapes": {"input": (9, 1, 10)}, "seq_len": 4}, "min <= opt <= max"),
])
def test_profile_errors(lstm_onnx: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        tb.derive_profile(lstm_onnx, **kwargs)
    assert "\n" not in str(err.value)


def test_profile_needs_seq_len_without_export_metadata(tmp_path: Path) -> None:
    onnx_path = write_onnx(tmp_path / "m.onnx", ["sequence", "batch", 10])
    with pytest.raises(UserError, match="give --seq-len"):
        tb.derive_profile(onnx_path)
    onnx_path = write_onnx(tmp_path / "m4.onnx", ["a", "b", "c", 10])
    with pytest.raises(UserError, match="cannot tell what dynamic axis"):
        tb.derive_profile(onnx_path, seq_len=3)


def test_bad_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        tb.derive_profile(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="not a readable ONNX file"):
        tb.derive_profile(bad)


def test_profile_check_states_the_range(lstm_onnx: Path) -> None:
    p = tb.derive_profile(lstm_onnx)
    p.check({"input": (512, 64, 10), "h0": (20, 1, 20)})
    with pytest.raises(UserError) as err:
        p.check({"input": (600, 3, 10)})
    assert str(err.value) == ("input 'input' has shape 600x3x10, outside the engine's profile (min 1x1x10, "
                              "max 512x64x10); rebuild with --max-shapes input:600x64x10")
    with pytest.raises(UserError, match="has 2 dimensions"):
        p.check({"input": (3, 10)})
    p2 = tb.Profile.from_dict(p.to_dict())
    assert p2 == p and json.loads(json.dumps(p.to_dict())) == p.to_dict()


def test_shapes_at(lstm_onnx: Path) -> None:
    inputs = tp.onnx_inputs(lstm_onnx)
    p = tb.derive_profile(lstm_onnx)
    assert tp.shapes_at(p, inputs, 9, 2) == {"input": (9, 2, 10), "h0": (20, 2, 20), "c0": (20, 2, 20)}


# ---- cache keys and sidecars ----------------------------------------------------------------------

PROFILE = tb.Profile({"input": (1, 1, 10)}, {"input": (5, 3, 10)}, {"input": (512, 64, 10)})
KEY_ARGS = dict(onnx_sha256="ab" * 32, precision="fp32", profile=PROFILE, tensorrt_version="10.8.0",
                gpu_name="NVIDIA A100", compute_capability="8.0", workspace_mb=1024, tf32=True)


@pytest.mark.parametrize("field, other", [
    ("onnx_sha256", "cd" * 32), ("precision", "fp16"),
    ("profile", tb.Profile({"input": (1, 1, 10)}, {"input": (5, 3, 10)}, {"input": (256, 64, 10)})),
    ("tensorrt_version", "10.9.0"), ("gpu_name", "NVIDIA H100"), ("compute_capability", "9.0"),
    ("workspace_mb", 2048), ("tf32", False),
])
def test_cache_key_changes_with_everything_that_changes_the_engine(field: str, other: object) -> None:
    key = tb.cache_key(**KEY_ARGS)
    assert key == tb.cache_key(**KEY_ARGS) and len(key) == 16
    assert tb.cache_key(**{**KEY_ARGS, field: other}) != key


def fake_engine(tmp_path: Path, content: bytes = b"ENGINE" * 100, **facts: str) -> tuple[Path, dict]:
    engine = tmp_path / "m-fp32-0123456789abcdef.engine"
    sidecar = tb.make_sidecar(content, "m.onnx", "ab" * 32, "fp32", PROFILE, {**FACTS, **facts}, 1024, True, 12.5)
    tb.write_engine(engine, content, sidecar)
    return engine, sidecar


def test_sidecar_contents(tmp_path: Path) -> None:
    engine, sidecar = fake_engine(tmp_path)
    assert tb.sidecar_path(engine).name == engine.name + ".json"
    on_disk = tb.read_sidecar(engine)
    assert on_disk == sidecar
    for key in ("tensorrt_version", "gpu", "compute_capability", "precision", "profile", "onnx_sha256",
                "build_time_s", "built_at", "engine_sha256", "engine_bytes"):
        assert key in on_disk
    assert tb.read_engine(engine, on_disk) == b"ENGINE" * 100
    tb.check_sidecar(on_disk, engine, "10.8.0", "NVIDIA A100-SXM4-80GB", "8.0")


@pytest.mark.parametrize("here, message", [
    (("10.9.0", FACTS["gpu"], "8.0"), "built with TensorRT 10.8.0 on NVIDIA A100-SXM4-80GB (sm 8.0); this is "
                                      "TensorRT 10.9.0"),
    (("10.8.0", "NVIDIA H100 80GB HBM3", "9.0"), "this is TensorRT 10.8.0 on NVIDIA H100 80GB HBM3 (sm 9.0)"),
])
def test_sidecar_mismatch_says_rebuild(tmp_path: Path, here: tuple, message: str) -> None:
    engine, sidecar = fake_engine(tmp_path)
    with pytest.raises(UserError, match="rebuild it") as err:
        tb.check_sidecar(sidecar, engine, *here)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_truncated_and_corrupt_engines(tmp_path: Path) -> None:
    engine, sidecar = fake_engine(tmp_path)
    engine.write_bytes(engine.read_bytes()[:-10])
    with pytest.raises(UserError, match="is truncated .* rebuild it"):
        tb.read_engine(engine, sidecar)
    engine.write_bytes(b"X" * sidecar["engine_bytes"])
    with pytest.raises(UserError, match="is corrupt"):
        tb.read_engine(engine, sidecar)
    with pytest.raises(UserError, match="cannot read engine"):
        tb.read_engine(tmp_path / "gone.engine", sidecar)


def test_bad_sidecars(tmp_path: Path) -> None:
    engine, _ = fake_engine(tmp_path)
    tb.sidecar_path(engine).write_text("{not json")
    with pytest.raises(UserError, match="sidecar of engine .* unreadable"):
        tb.read_sidecar(engine)
    tb.sidecar_path(engine).write_text('{"tensorrt_version": "10.8.0"}')
    with pytest.raises(UserError, match="lacks .*compute_capability"):
        tb.read_sidecar(engine)
    tb.sidecar_path(engine).unlink()
    with pytest.raises(UserError, match="has no sidecar"):
        tb.read_sidecar(engine)


class FakeBuilds:
    """Stands in for TensorRT's builder: counts builds, returns bytes derived from the request."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = []
        monkeypatch.setattr(tb, "build_serialized_engine", self)

    def __call__(self, onnx_path, profile, precision, workspace_mb, timing_cache, tf32) -> bytes:
        self.calls.append((Path(onnx_path).name, precision, Path(timing_cache).name))
        return f"engine of {Path(onnx_path).read_bytes()[:0]!r} {precision} {profile.to_dict()}".encode()


def test_engine_cache_reuses_and_rebuilds(tmp_path: Path, lstm_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = FakeBuilds(monkeypatch)
    cache = tmp_path / "out" / "trt-cache"
    request = tb.EngineRequest(lstm_onnx, tb.derive_profile(lstm_onnx), "fp16", cache)
    path, sidecar, built = tb.ensure_engine(request, facts=FACTS)
    assert built and path.parent == cache and path.name.startswith("seed-fp16-") and path.suffix == ".engine"
    assert sidecar["onnx_sha256"] == tb.sha256_file(lstm_onnx) and sidecar["precision"] == "fp16"
    assert builds.calls == [("seed.onnx", "fp16", "timing.cache")]
    path2, _, built2 = tb.ensure_engine(request, facts=FACTS)  # a second run reuses it
    assert (path2, built2, len(builds.calls)) == (path, False, 1)
    path3, _, built3 = tb.ensure_engine(request, facts={**FACTS, "tensorrt_version": "10.9.0"})
    assert built3 and path3 != path  # another TensorRT: another key, a new engine
    tb.ensure_engine(request, force=True, facts=FACTS)
    assert len(builds.calls) == 3
    lstm_onnx.write_bytes(lstm_onnx.read_bytes() + b" ")  # the model changed
    path4, _, built4 = tb.ensure_engine(request, facts=FACTS)
    assert built4 and path4 != path


def test_explicit_engine_path(tmp_path: Path, lstm_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = FakeBuilds(monkeypatch)
    out = tmp_path / "my.engine"
    request = tb.EngineRequest(lstm_onnx, tb.derive_profile(lstm_onnx), "fp32", tmp_path / "c", engine_path=out)
    assert tb.ensure_engine(request, facts=FACTS)[0] == out and tb.sidecar_path(out).is_file()
    assert not tb.ensure_engine(request, facts=FACTS)[2]
    # Same -o path, another precision: the stale engine is rebuilt, not reused.
    request.precision = "fp16"
    assert tb.ensure_engine(request, facts=FACTS)[2] and len(builds.calls) == 2
    # Same request on another GPU: a clear error rather than TensorRT's.
    with pytest.raises(UserError, match="rebuild it"):
        tb.ensure_engine(request, facts={**FACTS, "gpu": "NVIDIA L4", "compute_capability": "8.9"})
    out.write_bytes(b"half")
    with pytest.raises(UserError, match="truncated"):
        tb.ensure_engine(request, facts=FACTS)


def test_parser_errors_are_shown_one_line() -> None:
    class ParserError:
        def __init__(self, node, name, op, desc):
            self._v = (node, name, op, desc)

        def node(self):
            return self._v[0]

        def node_name(self):
            return self._v[1]

        def node_operator(self):
            return self._v[2]

        def desc(self):
            return self._v[3]

    text = tb.format_parser_errors("m.onnx", [
        ParserError(3, "/lstm/LSTM", "LSTM", "Attribute layout = 1 is not supported.\nUse layout 0."),
        ParserError(-1, "", "", "Network must have at least one output"),
    ])
    assert text == ("TensorRT cannot parse m.onnx: node 3 /lstm/LSTM LSTM: Attribute layout = 1 is not supported. "
                    "Use layout 0.; Network must have at least one output")


def test_build_without_tensorrt_is_one_line(tmp_path: Path, lstm_onnx: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed
    with pytest.raises(UserError, match=r'TensorRT is not installed .*pip install "lstminfer\[tensorrt\]"'):
        tb.ensure_engine(tb.EngineRequest(lstm_onnx, tb.derive_profile(lstm_onnx), cache_dir=tmp_path))


# ---- ONNX Runtime's TensorRT provider -------------------------------------------------------------

def test_ort_tensorrt_provider_options(tmp_path: Path, lstm_onnx: Path) -> None:
    p = tb.derive_profile(lstm_onnx)
    opts = tb.ort_tensorrt_provider_options(lstm_onnx, p, tmp_path, precision="fp16")
    assert opts["trt_profile_min_shapes"] == "input:1x1x10,h0:20x1x20,c0:20x1x20"
    assert opts["trt_profile_opt_shapes"] == "input:5x3x10,h0:20x3x20,c0:20x3x20"
    assert opts["trt_profile_max_shapes"] == "input:512x64x10,h0:20x64x20,c0:20x64x20"
    assert opts["trt_engine_cache_enable"] is True and opts["trt_timing_cache_enable"] is True
    assert opts["trt_fp16_enable"] is True and "trt_bf16_enable" not in opts
    assert Path(opts["trt_engine_cache_path"]).is_dir()
    assert Path(opts["trt_engine_cache_path"]).is_relative_to(tmp_path)
    assert tb.ort_tensorrt_provider_options(lstm_onnx, p, tmp_path, "bf16")["trt_bf16_enable"] is True
    assert tb.ort_tensorrt_provider_options(lstm_onnx, None, tmp_path) == \
        tb.ort_tensorrt_provider_options(lstm_onnx, p, tmp_path)  # None: the default profile
    static = tb.ort_tensorrt_provider_options(lstm_onnx, tb.Profile(), tmp_path)
    assert "trt_profile_min_shapes" not in static and static["trt_fp16_enable"] is False


# ---- runners --------------------------------------------------------------------------------------

def test_tensorrt_runner_availability_never_raises() -> None:
    for cls in (TensorRTRunner, TensorRTGraphRunner):
        ok, why = cls.available("cuda")
        assert isinstance(ok, bool) and (ok or why)
        assert cls.available("cpu") == (False, "runs on cuda only")
        assert cls.install_hint == 'pip install "lstminfer[tensorrt]"'
        assert cls.precisions == ("fp32", "fp16", "bf16")
    assert (TensorRTRunner.name, TensorRTGraphRunner.name) == ("tensorrt", "tensorrt-graph")
    if not HAS_TRT:
        assert TensorRTRunner.available("cuda") == (False, "the tensorrt package is not installed")


def test_runners_need_an_onnx_file() -> None:
    model = Model("seed", ModelSpec(), seq_len=1, batch=3)
    ok, why = TensorRTRunner(model, "cuda").supports()
    assert not ok and why.startswith("the model has no ONNX file")
    assert not TensorRTRunner.applies_to(model)
    assert TensorRTRunner(model, "cuda", "int8").supports()[0] is False


FAKE_TRTEXEC = """#!{python}
import os, shutil, sys
from pathlib import Path
args = sys.argv[1:]
with open({calls!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
if os.environ.get("FAKE_TRTEXEC_FAIL"):
    print(open({failed!r}).read())
    sys.exit(1)
if args == ["--help"]:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100800] [b43] # trtexec --help")
    sys.exit(0)
for a in args:
    if a.startswith("--exportTimes="):
        shutil.copy({times!r}, a.split("=", 1)[1])
    if a.startswith("--saveEngine="):
        Path(a.split("=", 1)[1]).write_bytes(b"engine")
print(open({log!r}).read())
"""


@pytest.fixture
def fake_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    exe = bin_dir / "trtexec"
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable, calls=str(calls),
                                       times=str(FIXTURES / "trtexec_10.8.0_dynamic.times.json"),
                                       log=str(FIXTURES / "trtexec_10.8.0_dynamic.log"),
                                       failed=str(FIXTURES / "trtexec_10.8.0_failed.log")))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_trtexec_runner_unavailable_without_trtexec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert TrtexecRunner.available("cuda") == (False, "trtexec is not on PATH")
    assert TrtexecRunner.self_timed is True and TrtexecRunner.devices == ("cuda",)


def test_trtexec_runner_cannot_infer(lstm_onnx: Path) -> None:
    runner = TrtexecRunner(Model("seed", ModelSpec(), onnx_path=lstm_onnx), "cuda")
    with pytest.raises(UserError, match="cannot return its outputs; `verify` skips it"):
        runner.infer({"input": np.zeros((1, 3, 10), np.float32)})


def test_trtexec_runner_benchmark(fake_trtexec: Path, tmp_path: Path, lstm_onnx: Path) -> None:
    assert TrtexecRunner.available("cuda") == (True, "")
    model = Model("seed", ModelSpec(num_layers=10, bidirectional=True), onnx_path=lstm_onnx, seq_len=5, batch=3)
    runner = TrtexecRunner(model, "cuda", "fp16", out_dir=str(tmp_path / "out"))
    runner.prepare([(16, 3), (64, 3)])  # the profile covers the points to serve, no more
    config = SimpleNamespace(warmup_ms=200.0, duration_s=0.0, iterations=500, seq_len=16, batch=3, precision="fp16",
                             no_data_transfers=False)
    rec = runner.benchmark(config)
    assert rec["source"] == "trtexec" and rec["backend"] == "trtexec" and rec["precision"] == "fp16"
    assert (rec["seq_len"], rec["batch"], rec["model"]) == (16, 3, "seed")
    assert rec["throughput_qps"] == 3806.73 and rec["queries"] == 500 and len(rec["times_ms"]) == 500
    assert rec["gpu_compute_ms"]["cv"] is not None and Path(rec["log"]).is_file()
    calls = fake_trtexec.read_text().splitlines()
    assert calls[0] == "--help"
    first = calls[1].split()
    assert first[0].startswith("--onnx=") and any(a.startswith("--saveEngine=") for a in first)
    assert "--shapes=input:16x3x10,h0:20x3x20,c0:20x3x20" in first and "--fp16" in first
    assert "--minShapes=input:1x1x10,h0:20x1x20,c0:20x1x20" in first and "--skipInference" not in first
    assert "--maxShapes=input:64x3x10,h0:20x3x20,c0:20x3x20" in first
    assert "--warmUp=200" in first and "--duration=0" in first and "--iterations=500" in first
    runner.benchmark(config)  # the saved engine is loaded, not rebuilt
    second = fake_trtexec.read_text().splitlines()[2].split()  # `trtexec --help` once per runner
    assert second[0].startswith("--loadEngine=") and not any(a.startswith("--onnx=") for a in second)
    failed = runner.benchmark(SimpleNamespace(**{**vars(config), "seq_len": 10_000}))  # bench goes on
    assert list(failed) == ["error"] and "outside the engine's profile (min 1x1x10, max 64x3x10)" in failed["error"]


def test_trtexec_runner_failure_is_an_error_record(fake_trtexec: Path, tmp_path: Path, lstm_onnx: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRTEXEC_FAIL", "1")
    runner = TrtexecRunner(Model("seed", ModelSpec(), onnx_path=lstm_onnx, seq_len=5, batch=3), "cuda",
                           out_dir=str(tmp_path))
    rec = runner.benchmark(SimpleNamespace(warmup_ms=200.0, duration_s=3.0, iterations=10, seq_len=5, batch=3,
                                           precision="fp32", no_data_transfers=False))
    assert list(rec) == ["error"] and "\n" not in rec["error"]
    assert rec["error"].startswith("trtexec failed ([TRT] ModelImporter.cpp:948: While parsing node number 3")
    assert "; full log: " in rec["error"]


# ---- the CLI --------------------------------------------------------------------------------------

def test_trtexec_cmd_cli(cli, lstm_onnx: Path, tmp_path: Path) -> None:
    code, out, _ = cli("trtexec-cmd", lstm_onnx, "--precision", "fp16", "--seq-len", "16", "--batch", "4",
                       "--json", tmp_path / "c.json")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("trtexec")]
    assert len(lines) == 2 and "--fp16" in lines[0] and "--noTF32" in lines[0]  # lstminfer's default: no TF32
    assert "--optShapes=input:16x4x10,h0:20x4x20,c0:20x4x20" in lines[0]
    assert "--shapes=input:16x4x10,h0:20x4x20,c0:20x4x20" in lines[1]
    assert json.loads((tmp_path / "c.json").read_text())["timing"][0] == "trtexec"
    code, _, err = cli("trtexec-cmd", lstm_onnx, "--max-shapes", "input:16x4")
    assert code == 2 and "has 2 dimensions" in err and err.count("\n") == 1
    code, _, err = cli("trtexec-cmd", lstm_onnx, "--min-shapes", "input=1x1x10")
    assert code == 2 and "--min-shapes: 'input=1x1x10' is not name:AxBxC" in err


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown when TensorRT is missing")
def test_build_cli_without_tensorrt(cli, lstm_onnx: Path, tmp_path: Path) -> None:
    code, _, err = cli("build", lstm_onnx, "--out", tmp_path)
    assert code == 2 and err.count("\n") == 1 and 'pip install "lstminfer[tensorrt]"' in err


# ---- with TensorRT (skipped elsewhere) ------------------------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("cls", [TensorRTRunner, TensorRTGraphRunner])
def test_tensorrt_runner_matches_reference(cls, tmp_path: Path) -> None:
    from lstminfer.model.spec import build_module
    from lstminfer.onnx.export import export_model

    spec = ModelSpec("lstm", 8, 16, 2, bidirectional=True)
    model = Model("small", spec, module=build_module(spec), seq_len=5, batch=3)
    export_model(model, tmp_path / "small.onnx")
    model.onnx_path = tmp_path / "small.onnx"
    points = [(5, 3), (1, 1), (17, 2)]
    runner = cls(model, "cuda", "fp32", out_dir=str(tmp_path), tf32=False)
    runner.prepare(points)  # the engine's profile covers exactly the points it serves: max 17x3
    with runner:
        assert runner.profile.max["input"] == (17, 3, 8)
        for seq_len, batch in points:
            inputs = model.make_inputs(seq_len, batch, np.random.default_rng(0))
            got, want = runner.infer(inputs), model.reference(inputs)
            for name in model.output_names:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
        with pytest.raises(UserError, match="outside the engine's profile"):
            runner.infer(model.make_inputs(1000, 3, np.random.default_rng(0)))
    again = cls(model, "cuda", "fp32", out_dir=str(tmp_path), tf32=False)
    again.prepare(points)
    with again:
        assert again.built_now is False  # the cached engine, after its sidecar check


@pytest.mark.tensorrt
@needs_tensorrt
def test_unparsable_onnx_is_one_line(tmp_path: Path) -> None:
    bad = write_onnx(tmp_path / "bad.onnx", ["sequence", "batch", 10])
    import onnx

    proto = onnx.load(bad)
    proto.graph.node[0].op_type = "NoSuchOp"
    onnx.save(proto, bad)
    with pytest.raises(UserError, match="TensorRT cannot parse .*NoSuchOp") as err:
        tb.ensure_engine(tb.EngineRequest(bad, tb.derive_profile(bad, seq_len=2), cache_dir=tmp_path))
    assert "\n" not in str(err.value)
