"""Export parity: both exporters against PyTorch (ONNX Runtime) and against onnx.reference in float64."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstminfer.errors import UserError
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module, preset
from lstminfer.onnx.export import ExportCheckFailed, check_points, export_model
from lstminfer.onnx.oracle import Float64Reference

specs = st.builds(
    ModelSpec,
    kind=st.sampled_from(["lstm", "gru"]),
    input_size=st.integers(1, 6),
    hidden_size=st.integers(1, 7),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    bias=st.booleans(),
)


def _model(spec: ModelSpec, with_state: bool = True, seq_len: int = 3, batch: int = 2) -> Model:
    return Model("t", spec, build_module(spec, seed=1), seq_len=seq_len, batch=batch, with_state=with_state)


def _graph_dims(proto, name):
    for vi in proto.graph.input:
        if vi.name == name:
            return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    raise KeyError(name)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, with_state=st.booleans(), exporter=st.sampled_from(["torchscript", "direct"]))
def test_export_matches_float64_oracle(tmp_path_factory, spec, with_state, exporter):
    """The exported file, run by onnx.reference in float64, equals float64 PyTorch at unseen shapes."""
    model = _model(spec, with_state)
    path = tmp_path_factory.mktemp("e") / "m.onnx"
    result = export_model(model, path, exporter)
    assert result.exporter == exporter
    proto = onnx.load(str(path))
    oracle = Float64Reference(proto)
    rng = np.random.default_rng(7)
    for seq_len, batch in [(1, 1), (5, 3)]:
        inputs = model.make_inputs(seq_len, batch, rng)
        want = model.reference(inputs)
        got = oracle.run(inputs)
        for name in model.output_names:
            np.testing.assert_allclose(got[name], want[name], atol=1e-12, rtol=1e-10, err_msg=name)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs)
def test_direct_equals_torchscript(tmp_path_factory, spec):
    """Our direct exporter and torch's TorchScript exporter compute the same function."""
    model = _model(spec)
    d = tmp_path_factory.mktemp("d")
    export_model(model, d / "ts.onnx", "torchscript")
    export_model(model, d / "direct.onnx", "direct")
    a, b = Float64Reference(onnx.load(str(d / "ts.onnx"))), Float64Reference(onnx.load(str(d / "direct.onnx")))
    inputs = model.make_inputs(4, 2, np.random.default_rng(0))
    ra, rb = a.run(inputs), b.run(inputs)
    for name in model.output_names:
        np.testing.assert_allclose(ra[name], rb[name], atol=1e-12)


@pytest.mark.parametrize("exporter", ["torchscript", "direct"])
def test_seed_export_has_native_nodes_dynamic_axes_and_metadata(tmp_path, exporter):
    p = preset("seed")
    model = Model("seed", p.spec, build_module(p.spec), seq_len=p.seq_len, batch=p.batch)
    result = export_model(model, tmp_path / "m.onnx", exporter)
    proto = onnx.load(str(result.path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("LSTM") == 10
    assert all(dict((a.name, a.i) for a in n.attribute).get("layout", 0) == 0 for n in proto.graph.node
               if n.op_type == "LSTM")
    assert [i.name for i in proto.graph.input] == ["input", "h0", "c0"]
    assert [o.name for o in proto.graph.output] == ["output", "hn", "cn"]
    seq_dim, batch_dim, feat = _graph_dims(proto, "input")
    assert isinstance(seq_dim, str) and isinstance(batch_dim, str) and feat == 10
    assert _graph_dims(proto, "h0")[0] == 20 and isinstance(_graph_dims(proto, "h0")[1], str)
    meta = {m.key: m.value for m in proto.metadata_props}
    assert json.loads(meta["lstminfer.spec"])["num_layers"] == 10
    assert meta["lstminfer.exporter"] == exporter
    # checked at three sequence lengths and two batch sizes before it was declared done
    assert {(c["seq_len"], c["batch"]) for c in result.checks} == set(check_points(1, 3))
    assert len({c["seq_len"] for c in result.checks}) == 3


def test_batch_first_export_uses_layout_0_with_transposes(tmp_path):
    spec = ModelSpec("gru", 3, 4, 2, bidirectional=True, batch_first=True)
    export_model(_model(spec), tmp_path / "m.onnx", "direct")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    grus = [n for n in proto.graph.node if n.op_type == "GRU"]
    assert len(grus) == 2
    attrs = {a.name: a.i for a in grus[0].attribute}
    assert attrs.get("layout", 0) == 0 and attrs["linear_before_reset"] == 1
    assert proto.graph.node[0].op_type == "Transpose"


def test_proj_size_is_refused_with_reason(tmp_path):
    spec = ModelSpec("lstm", 4, 8, 1, proj_size=3)
    with pytest.raises(UserError, match="cannot export an LSTM with proj_size: ONNX's LSTM op has no projection"):
        export_model(_model(spec), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_auto_falls_back_to_direct_and_says_so(tmp_path):
    model = _model(ModelSpec("lstm", 3, 4, 1))
    with mock.patch.object(torch.onnx, "export", side_effect=RuntimeError("exporter removed")):
        result = export_model(model, tmp_path / "m.onnx", "auto")
    assert result.exporter == "direct"
    assert "fell back to the direct exporter" in result.notes[0] and "exporter removed" in result.notes[0]


def test_frozen_sequence_axis_is_caught(tmp_path):
    """A graph that only works at the example length (the dynamo failure mode) fails the export check."""
    from lstminfer.onnx import export as export_mod

    model = _model(ModelSpec("lstm", 3, 4, 1, bidirectional=True), seq_len=3)
    real = export_mod.export_direct

    def frozen(model, path):
        proto = onnx.load_from_string(real(model, path))
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3  # seq fixed to 3
        for node in proto.graph.node:  # and bake it into the output Reshape, as dynamo does
            if node.op_type == "Reshape":
                for init in proto.graph.initializer:
                    if init.name == node.input[1]:
                        init.CopyFrom(onnx.numpy_helper.from_array(np.array([3, 0, -1], np.int64), init.name))
        return proto.SerializeToString()

    with mock.patch.object(export_mod, "export_direct", frozen), pytest.raises(ExportCheckFailed, match="seq_len=1"):
        export_model(model, tmp_path / "m.onnx", "direct")
    assert not (tmp_path / "m.onnx").exists()


def test_direct_exporter_refuses_custom_modules(tmp_path):
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(3, 4)

        def forward(self, x, hx=None):
            return self.rnn(x, hx)

    module = Wrapped().eval()
    model = Model("w", ModelSpec("lstm", 3, 4, 1), module, seq_len=2, batch=1)
    with pytest.raises(UserError, match="plain nn.LSTM / nn.GRU modules only"):
        export_model(model, tmp_path / "m.onnx", "direct")
    # the TorchScript exporter handles it
    assert export_model(model, tmp_path / "m.onnx", "torchscript").exporter == "torchscript"


def test_unknown_exporter(tmp_path):
    with pytest.raises(UserError, match="unknown exporter 'dynamo'"):
        export_model(_model(ModelSpec()), tmp_path / "m.onnx", "dynamo")
