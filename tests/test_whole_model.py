"""Whole models (model/whole.py): any nn.Module with LSTM/GRU layers inside, exported, verified, refused in one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lstminfer.errors import UserError
from lstminfer.model.whole import load_factory, module_or_whole, whole_model
from lstminfer.onnx.export import ExportCheckFailed, export_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# (factory, --shapes, the axes a reader of the example's code finds dynamic, native recurrent nodes)
CASES = {
    "crnn": ("crnn.py:crnn", None, {"image": {0: "batch", 3: "seq"}}, 1),
    "speech_encoder": ("speech_encoder.py:speech_encoder", "feats:2x20x40", {"feats": {0: "batch", 1: "seq"}}, 2),
    "vad": ("vad.py:vad", None, {"frames": {0: "batch", 1: "seq"}}, 1),
}


def _example(name: str, **kwargs):
    ref, shapes, _, _ = CASES[name]
    return module_or_whole(str(EXAMPLES / ref), shapes=shapes, **kwargs)


@pytest.mark.parametrize("name", CASES)
def test_examples_probe_their_batch_and_time_axes(name):
    assert _example(name).dynamic == CASES[name][2]


@pytest.mark.parametrize("name", CASES)
def test_examples_export_with_native_nodes_and_match_float64_at_several_shapes(name, tmp_path):
    """The export is checked at several shapes, then ONNX Runtime is compared with float64 PyTorch here too."""
    import onnxruntime as ort

    model = _example(name)
    result = export_model(model, tmp_path / "model.onnx")
    shapes = {(c["seq_len"], c["batch"]) for c in result.checks}
    assert len(shapes) >= 3 and len({b for _, b in shapes}) == 2 and len({s for s, _ in shapes}) >= 2
    proto = onnx.load(tmp_path / "model.onnx")
    assert sum(n.op_type == "LSTM" for n in proto.graph.node) == CASES[name][3]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for seq_len, batch in model.verify_points():
        inputs = model.make_inputs(seq_len, batch, rng)
        module64 = copy.deepcopy(model.module).double()
        with torch.no_grad():
            want = module64(*[torch.from_numpy(inputs[n]).double() for n in model.input_names])
        got = session.run(None, inputs)[0]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["crnn", "vad"])
def test_examples_run_on_the_cpu_backends_like_float64(name, tmp_path):
    """Each backend's Runner (what verify and bench use) on the whole model, against its float64 reference."""
    from lstminfer.backends.base import runner_class

    model = _example(name)
    export_model(model, tmp_path / "model.onnx")
    rng = np.random.default_rng(3)
    for backend in ("torch", "onnxruntime"):
        with runner_class(backend)(model, device="cpu") as runner:
            for seq_len, batch in model.verify_points():
                inputs = model.make_inputs(seq_len, batch, rng)
                want = model.reference(inputs)
                got = runner.infer(inputs)
                assert set(got) == set(want) == {"output"}
                np.testing.assert_allclose(got["output"], want["output"], atol=1e-4, rtol=1e-3)


def test_seq_len_and_batch_size_the_dynamic_axes():
    model = _example("speech_encoder", seq_len=33, batch=3)
    assert model.input_shapes(model.seq_len, model.batch) == {"feats": (3, 33, 40)}
    out = model.reference(model.make_inputs(33, 3, np.random.default_rng(0)))["output"]
    assert out.shape == (3, 17, 32) and out.dtype == np.float64  # the stride-2 front end halves the frames


class _Stateful(nn.Module):
    """forward(x, (h, c)) -> (y, (h, c)): the state is the user's own."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x, hx):
        y, (h, c) = self.rnn(x, hx)
        return self.head(y), (h, c)


def test_tuple_arguments_are_flattened_and_state_pairs_found():
    example = (torch.randn(2, 4, 3), (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))
    model = whole_model(_Stateful().eval(), example, name="stateful")
    assert model.input_names == ["x", "hx_0", "hx_1"]
    assert model.output_names == ["output", "hx_0_out", "hx_1_out"]
    assert [(p.input, p.output) for p in model.state_pairs] == [("hx_0", "hx_0_out"), ("hx_1", "hx_1_out")]
    # the state's batch axis follows the input's (probed together)
    assert model.dynamic == {"x": {0: "batch", 1: "seq"}, "hx_0": {1: "batch"}, "hx_1": {1: "batch"}}
    assert model.input_shapes(6, 3)["hx_1"] == (1, 3, 5)


class _Packed(nn.Module):
    """Packs its padded batch by the lengths input: the LSTM sees a PackedSequence."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]


def test_probing_reads_a_packed_sequence_and_says_what_it_did_not_find():
    model = whole_model(_Packed().eval(), (torch.randn(2, 5, 4), torch.tensor([5, 3])), name="packed")
    # the batch reaches the LSTM through the PackedSequence; the time does not (the lengths decide it)
    assert model.dynamic == {"x": {0: "batch"}, "lengths": {0: "batch"}}
    assert model.notes == ["packed: no seq axis found by probing x: it keeps the example's size at every point "
                           "(name it with --dynamic x:AXIS=seq)"]


def test_dynamic_axes_given_are_checked():
    model = _example("speech_encoder", dynamic="feats:0=batch,1=frames")
    assert model.dynamic == {"feats": {0: "batch", 1: "frames"}}
    with pytest.raises(UserError, match=r"feats axis 2 \(seq\) is not dynamic: forward fails when it is 82 instead "
                                        r"of 40 .*; drop it from --dynamic"):
        _example("speech_encoder", dynamic="feats:0=batch,2=seq")
    with pytest.raises(UserError, match="--dynamic names 'x', which is not an input; the inputs are feats"):
        _example("speech_encoder", dynamic="x:0=batch")
    with pytest.raises(UserError, match="expected NAME:AXIS=LABEL"):
        _example("speech_encoder", dynamic="feats:batch")


def test_bad_models_and_shapes_are_one_line_user_errors(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "def conv():\n    return torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3))\n"
        "def enc():\n    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LSTM(8, 8))\n")
    with pytest.raises(UserError, match="found no nn.LSTM / nn.GRU inside the model"):
        module_or_whole(f"{tmp_path}/m.py:conv", shapes="input:2x4x9")
    with pytest.raises(UserError, match=r"--shapes input:5x2x3 do not fit .*'s forward: RuntimeError: .*fix the"):
        module_or_whole(f"{tmp_path}/m.py:enc", shapes="input:5x2x3")
    with pytest.raises(UserError, match="give the example input shapes with --shapes NAME:AxBxC"):
        module_or_whole(f"{tmp_path}/m.py:enc")
    with pytest.raises(UserError, match="--shapes names x, which forward does not take; it takes input"):
        module_or_whole(f"{tmp_path}/m.py:enc", shapes="x:5x2x4")
    with pytest.raises(UserError, match="a zero-sized dim has nothing to run"):
        module_or_whole(f"{tmp_path}/m.py:enc", shapes="input:0x2x4")
    assert isinstance(load_factory(f"{tmp_path}/m.py:enc")[0], nn.Sequential)


def test_an_lstm_the_forward_never_calls_is_refused_at_export(tmp_path):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(3, 4)
            self.lin = nn.Linear(3, 4)

        def forward(self, x):
            return self.lin(x)

    model = whole_model(Unused().eval(), torch.randn(5, 2, 3), name="unused", dynamic="x:0=seq,1=batch")
    with pytest.raises(ExportCheckFailed, match="0 native LSTM/GRU nodes for 1 recurrent layers"):
        export_model(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_plain_recurrent_module_keeps_the_spec_path(tmp_path):
    (tmp_path / "plain.py").write_text("import torch\ndef rnn():\n    return torch.nn.GRU(3, 4)\n")
    assert isinstance(module_or_whole(f"{tmp_path}/plain.py:rnn"), nn.GRU)
    assert module_or_whole(f"{tmp_path}/plain.py:rnn", shapes="input:5x2x3").input_names == ["input"]


def test_cli_verify_exports_and_checks_a_whole_model(cli, tmp_path):
    code, out, err = cli("verify", "--model", EXAMPLES / "speech_encoder.py:speech_encoder", "--shapes",
                         "feats:2x20x40", "--backends", "torch,onnxruntime", "--out", tmp_path, "--json",
                         tmp_path / "v.json")
    assert code == 0, err
    assert "model: " in out and "inputs feats, seq 20 x batch 2" in out
    proto = onnx.load(tmp_path / "model.onnx")
    assert [n.op_type for n in proto.graph.node if n.op_type == "LSTM"] == ["LSTM", "LSTM"]
    assert "passed" in out and "FAILED" not in out


@pytest.mark.parametrize("args,message", [
    (["--model", "{tmp}/m.py:conv", "--shapes", "input:1x4x9"], "found no nn.LSTM / nn.GRU inside the model"),
    (["--model", "{examples}/speech_encoder.py:speech_encoder", "--shapes", "feats:2x20x41"],
     "--shapes feats:2x20x41 do not fit"),
    (["--model", "{examples}/speech_encoder.py:speech_encoder", "--shapes", "feats:2x20x40", "--dynamic",
      "feats:0=batch,2=seq"], "feats axis 2 (seq) is not dynamic"),
    (["--model", "{examples}/speech_encoder.py:speech_encoder"], "give the example input shapes with --shapes"),
    (["--dynamic", "x:0=batch"], "--dynamic names the dynamic axes of a --model"),
    (["--model", "{examples}/crnn.py:crnn", "--hidden-size", "4"], "--hidden-size sets the size of a preset"),
])
def test_cli_bad_whole_model_input_is_one_line_exit_2(cli, tmp_path, args, message):
    (tmp_path / "m.py").write_text("import torch\ndef conv():\n    return torch.nn.Conv1d(4, 4, 3)\n")
    args = [a.format(tmp=tmp_path, examples=EXAMPLES) for a in args]
    code, out, err = cli("export", *args, "-o", tmp_path / "m.onnx")
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_bench_and_sweep_take_a_whole_model(cli, tmp_path):
    vad = EXAMPLES / "vad.py:vad"
    code, out, err = cli("bench", "--model", vad, "--backends", "torch", "--duration", "0.05", "--warmup", "5",
                         "--out", tmp_path / "b", "--json", tmp_path / "b.json")
    assert code == 0, err
    assert "Benchmark of" in out and "seq 8 x batch 1" in out
    code, out, err = cli("sweep", "--model", vad, "--backends", "torch,onnxruntime", "--seq-len", "3,9", "--batch",
                         "2", "--duration", "0.05", "--warmup", "5", "--out", tmp_path / "s")
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "s" / "sweep.jsonl").read_text().splitlines()]
    measured = {(r["backend"], r["seq_len"], r["batch"]) for r in lines if r.get("kind") == "bench"}
    assert measured == {(b, s, 2) for b in ("torch", "onnxruntime") for s in (3, 9)}
