"""PyTorch -> ONNX, with native LSTM/GRU nodes, dynamic sequence and batch axes, checked before it is done.

Two exporters:
* ``torchscript``: ``torch.onnx.export(..., dynamo=False)``. torch 2.x's default (dynamo) exporter fails
  on the tutorial's call and freezes the sequence axis of bidirectional RNNs where it does export
  (FACTS.md section 1); the TorchScript one emits one native ONNX LSTM/GRU node per layer.
* ``direct``: our own, writes the graph straight from the weights with ``onnx.helper``. No dependence on
  torch's exporters (the TorchScript one is deprecated): ``auto`` falls back to it when that one fails.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstminfer import __version__
from lstminfer.errors import UserError
from lstminfer.measure.store import write_text_atomic
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, spec_of_module
from lstminfer.model.whole import WholeModel

EXPORTERS = ("auto", "torchscript", "direct")
OPSET = 17
# ONNX gate orders differ from PyTorch's (FACTS.md section 1): rows of PyTorch's blocks, in ONNX order.
LSTM_GATES = (0, 3, 1, 2)  # PyTorch i,f,g,o -> ONNX i,o,f,c
GRU_GATES = (1, 0, 2)  # PyTorch r,z,n -> ONNX z,r,h


class ExportCheckFailed(UserError):
    """The exported file does not compute what the PyTorch model computes."""


@dataclass
class ExportResult:
    path: Path
    exporter: str
    notes: list[str]
    checks: list[dict[str, Any]]


def _dynamic_axes(spec: ModelSpec, names: list[str]) -> dict[str, dict[int, str]]:
    seq_axis, batch_axis = (1, 0) if spec.batch_first else (0, 1)
    axes = {}
    for name in names:
        if name in ("input", "output"):
            axes[name] = {seq_axis: "sequence", batch_axis: "batch"}
        else:  # h0, c0, hn, cn: [layers * directions, batch, hidden]
            axes[name] = {1: "batch"}
    return axes


def export_torchscript(model: Model, path: Path) -> bytes:
    """The TorchScript exporter (dynamo=False) with both dynamic axes; returns the serialized model."""
    import torch

    rng = np.random.default_rng(0)
    example = model.make_inputs(model.seq_len, model.batch, rng)
    args_list = [torch.from_numpy(example[n]) for n in model.input_names]
    if isinstance(model, WholeModel):  # the forward's own arguments, tuples regrouped
        args = tuple(model.regroup(args_list))
        dynamic_axes = {n: {a: label for a, label in axes.items()} for n, axes in model.dynamic.items()}
    else:
        spec = model.spec
        if len(args_list) == 1:
            args = (args_list[0],)
        elif spec.kind == "lstm":
            args = (args_list[0], (args_list[1], args_list[2]))
        else:
            args = (args_list[0], args_list[1])
        dynamic_axes = _dynamic_axes(spec, model.input_names + model.output_names)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter is deprecated (a DeprecationWarning) and warns about batch sizes other than 1
        # for RNNs with given state; both are known and harmless here (FACTS.md section 1).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.module, args, buffer, dynamo=False, opset_version=OPSET,
            input_names=model.input_names, output_names=model.output_names,
            dynamic_axes=dynamic_axes,
        )
    return buffer.getvalue()


def export_direct(model: Model, path: Path) -> bytes:
    """Write the ONNX graph from an nn.LSTM / nn.GRU's weights (no torch exporter involved)."""
    from onnx import TensorProto, helper, numpy_helper

    module, spec = model.module, model.spec
    if spec_of_module(module) != spec or not _is_plain_rnn(module):
        raise UserError("the direct exporter handles plain nn.LSTM / nn.GRU modules only; "
                        "use --exporter torchscript for a custom module")
    kind, dirs, hidden = spec.kind, spec.num_directions, spec.hidden_size
    gates = LSTM_GATES if kind == "lstm" else GRU_GATES
    op = "LSTM" if kind == "lstm" else "GRU"
    params = {k: v.detach().float().numpy() for k, v in module.state_dict().items()}
    with_state = model.with_state

    nodes, inits = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    def reorder(w: np.ndarray) -> np.ndarray:
        blocks = np.split(w, len(gates), axis=0)
        return np.concatenate([blocks[g] for g in gates], axis=0)

    x = "input"
    if spec.batch_first:
        nodes.append(helper.make_node("Transpose", ["input"], ["input_seq_first"], perm=[1, 0, 2]))
        x = "input_seq_first"
    hn_parts, cn_parts = [], []
    for layer in range(spec.num_layers):
        suffixes = [f"_l{layer}"] + ([f"_l{layer}_reverse"] if dirs == 2 else [])
        W = np.stack([reorder(params[f"weight_ih{s}"]) for s in suffixes])
        R = np.stack([reorder(params[f"weight_hh{s}"]) for s in suffixes])
        inputs = [x, const(f"W{layer}", W), const(f"R{layer}", R)]
        if spec.bias:
            B = np.stack([np.concatenate([reorder(params[f"bias_ih{s}"]), reorder(params[f"bias_hh{s}"])])
                          for s in suffixes])
            inputs.append(const(f"B{layer}", B))
        else:
            inputs.append("")
        inputs.append("")  # sequence_lens
        if with_state:
            starts = const(f"start{layer}", np.array([layer * dirs], dtype=np.int64))
            ends = const(f"end{layer}", np.array([(layer + 1) * dirs], dtype=np.int64))
            axes = const(f"axes{layer}", np.array([0], dtype=np.int64))
            nodes.append(helper.make_node("Slice", ["h0", starts, ends, axes], [f"h0_l{layer}"]))
            inputs.append(f"h0_l{layer}")
            if kind == "lstm":
                nodes.append(helper.make_node("Slice", ["c0", starts, ends, axes], [f"c0_l{layer}"]))
                inputs.append(f"c0_l{layer}")
        outputs = [f"Y{layer}", f"Yh{layer}"] + ([f"Yc{layer}"] if kind == "lstm" else [])
        attrs = dict(hidden_size=hidden, direction="bidirectional" if dirs == 2 else "forward")
        if kind == "gru":
            attrs["linear_before_reset"] = 1
        while inputs and inputs[-1] == "":
            inputs.pop()
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{layer}", **attrs))
        # Y: [seq, dirs, batch, hidden] -> [seq, batch, dirs * hidden]
        nodes.append(helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"], perm=[0, 2, 1, 3]))
        shape = const(f"yshape{layer}", np.array([0, 0, -1], dtype=np.int64))
        x = f"layer{layer}_out"
        nodes.append(helper.make_node("Reshape", [f"Yt{layer}", shape], [x]))
        hn_parts.append(f"Yh{layer}")
        if kind == "lstm":
            cn_parts.append(f"Yc{layer}")
    if spec.batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["output"], perm=[1, 0, 2]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["output"]))
    nodes.append(helper.make_node("Concat", hn_parts, ["hn"], axis=0))
    if kind == "lstm":
        nodes.append(helper.make_node("Concat", cn_parts, ["cn"], axis=0))

    def value_info(name: str, dims: list) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    seq_dims = ["batch", "sequence"] if spec.batch_first else ["sequence", "batch"]
    states = spec.num_layers * dirs
    graph_inputs = [value_info("input", seq_dims + [spec.input_size])]
    if with_state:
        graph_inputs.append(value_info("h0", [states, "batch", hidden]))
        if kind == "lstm":
            graph_inputs.append(value_info("c0", [states, "batch", hidden]))
    graph_outputs = [value_info("output", seq_dims + [dirs * hidden]), value_info("hn", [states, "batch", hidden])]
    if kind == "lstm":
        graph_outputs.append(value_info("cn", [states, "batch", hidden]))
    graph = helper.make_graph(nodes, "lstminfer_direct", graph_inputs, graph_outputs, inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="lstminfer", producer_version=__version__)
    return onnx_model.SerializeToString()


def _is_plain_rnn(module: Any) -> bool:
    import torch

    return type(module) in (torch.nn.LSTM, torch.nn.GRU)


def finalize(data: bytes, model: Model, exporter: str) -> Any:
    """Check the graph, run shape inference and store the spec in metadata_props."""
    import onnx

    proto = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as err:  # onnx raises several types; all mean the same thing here
        raise ExportCheckFailed(f"the {exporter} exporter wrote an invalid ONNX graph: {err}") from err
    if isinstance(model, WholeModel):
        _require_native_nodes(proto, model)
    described = model.spec.to_dict() if model.spec else {"whole_model": model.name}
    meta = {"lstminfer.spec": json.dumps(described), "lstminfer.exporter": exporter,
            "lstminfer.version": __version__, "lstminfer.with_state": str(model.with_state).lower(),
            "lstminfer.example_shape": f"{model.seq_len}x{model.batch}"}
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def _require_native_nodes(proto: Any, model: WholeModel) -> None:
    """A whole model's recurrent layers must stay native LSTM / GRU nodes (one per layer), never unrolled."""
    from lstminfer.model.whole import recurrent_layers

    found = sum(1 for node in proto.graph.node if node.op_type in ("LSTM", "GRU"))
    wanted = sum(layer.num_layers for _, layer in recurrent_layers(model.module))
    if found < wanted:
        raise ExportCheckFailed(f"the export of {model.name} has {found} native LSTM/GRU nodes for {wanted} recurrent "
                                "layers: the exporter unrolled or dropped some (a PackedSequence or a loop over "
                                "time in forward?); call the layers on whole padded tensors")


def check_points(seq_len: int, batch: int) -> list[tuple[int, int]]:
    """Three sequence lengths (1, the example's or 2, a longer one) at two batch sizes."""
    long_seq = max(4 * seq_len + 3, 17)
    seqs = sorted({1, seq_len if seq_len > 1 else 2, long_seq})
    return [(s, b) for b in sorted({batch, batch + 2}) for s in seqs]


def check_export(proto: Any, model: Model, atol: float = 1e-4, rtol: float = 1e-3) -> list[dict[str, Any]]:
    """Run the file in ONNX Runtime (CPU) at check_points() and compare with PyTorch float32."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1234)
    checks = []
    points = model.verify_points() if isinstance(model, WholeModel) else check_points(model.seq_len, model.batch)
    for seq_len, batch in points:
        inputs = model.make_inputs(seq_len, batch, rng)
        with torch.no_grad():
            expected = model.call_module(model.module, [torch.from_numpy(inputs[n]) for n in model.input_names])
        try:
            got = session.run(model.output_names, inputs)
        except Exception as err:
            raise ExportCheckFailed(f"the exported graph fails in ONNX Runtime at seq_len={seq_len} batch={batch} "
                                    f"(a frozen axis?): {str(err).splitlines()[0]}") from err
        for name, want, have in zip(model.output_names, expected, got):
            want = want.numpy()
            if want.shape != have.shape:
                raise ExportCheckFailed(f"output {name} has shape {list(have.shape)} at seq_len={seq_len} "
                                        f"batch={batch}, PyTorch gives {list(want.shape)} (a frozen axis?)")
            err = float(np.max(np.abs(want - have))) if want.size else 0.0
            ok = bool(np.all(np.abs(want - have) <= atol + rtol * np.abs(want)))
            checks.append({"seq_len": seq_len, "batch": batch, "output": name, "max_abs_err": err, "passed": ok})
            if not ok:
                raise ExportCheckFailed(f"the exported graph differs from PyTorch at seq_len={seq_len} batch={batch}: "
                                        f"{name} max abs error {err:.3g} > {atol:g}")
    return checks


def export_model(model: Model, path: str | Path, exporter: str = "auto") -> ExportResult:
    """Export, validate, check against PyTorch at several shapes, then write `path` atomically."""
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {exporter!r}: choose from {', '.join(EXPORTERS)}")
    if model.module is None or (model.spec is None and not isinstance(model, WholeModel)):
        raise UserError("export needs a PyTorch model (a preset, sizes, or --model FILE.py:factory)")
    if model.spec and model.spec.proj_size:
        raise UserError("cannot export an LSTM with proj_size: ONNX's LSTM op has no projection and no torch "
                        "exporter handles it; verify and bench it with the torch backends instead (no export)")
    path = Path(path)
    notes = []
    if exporter in ("auto", "torchscript"):
        try:
            data = export_torchscript(model, path)
            used = "torchscript"
        except Exception as err:
            if exporter == "torchscript" or isinstance(model, WholeModel):
                # the direct exporter writes plain LSTM/GRU stacks only: no fallback for a whole model
                fix = "make forward exportable" if isinstance(model, WholeModel) else "try --exporter direct"
                raise UserError(f"the TorchScript exporter failed: {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}; {fix}") from err
            notes.append(f"TorchScript exporter unavailable or failed ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); fell back to the direct exporter")
            data = export_direct(model, path)
            used = "direct"
    else:
        data = export_direct(model, path)
        used = "direct"
    proto = finalize(data, model, used)
    checks = check_export(proto, model)
    write_text_atomic(path, proto.SerializeToString())
    model.onnx_path = path
    return ExportResult(path=path, exporter=used, notes=notes, checks=checks)
