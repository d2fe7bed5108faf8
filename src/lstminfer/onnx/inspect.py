"""What is in an ONNX graph: inputs with symbolic dims, recurrent nodes (subgraphs too), state pairs, and
what each backend accepts (`lstminfer inspect`)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.base import StatePair, TensorInfo
from lstminfer.onnx.load import load_onnx
from lstminfer.onnx.oracle import applicable, is_recurrent, oracle_gaps
from lstminfer.onnx.shapes import dim_roles

# Activations the TensorRT ONNX parser maps to its activation layers (onnx-tensorrt RNNHelpers).
TRT_ACTIVATIONS = {"relu", "tanh", "sigmoid", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid",
                   "elu", "softsign", "softplus"}


TRT_OPSET_MIN = 9


# ---- what is in the file ------------------------------------------------------------------------------
@dataclass
class RecurrentNode:
    op: str
    name: str
    where: str  # "main graph" or e.g. "If 'if_0' then_branch"
    layer: int  # 1-based position in its stack of recurrent nodes (within one graph)
    hidden_size: int | None
    direction: str
    layout: int
    activations: list[str]
    clip: float | None
    input_forget: int
    sequence_lens: bool
    peepholes: bool
    initial_state: list[str]  # the node's initial_h (/ initial_c) input names, "" when absent
    linear_before_reset: int | None = None
    domain: str = "ai.onnx"  # "com.microsoft" for ONNX Runtime's contrib ops (DynamicQuantizeLSTM, ...)
    capability: dict[str, str] = field(default_factory=dict)  # backend -> "yes" | "no: why" | "unverified: why"


@dataclass
class OnnxInfo:
    path: str
    ir_version: int
    opset: dict[str, int]
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    recurrent: list[RecurrentNode]
    state_pairs: list[StatePair]
    oracle: tuple[bool, str]
    dim_roles: dict[str, str]
    notes: list[str] = field(default_factory=list)
    length_inputs: list[str] = field(default_factory=list)  # graph inputs fed to a node's sequence_lens
    state_pairs_note: str = ""  # why no state pair was found, when none was
    state_pair_misses: list[str] = field(default_factory=list)  # names that match, tensors that cannot pair
    fixed_axes: dict[str, int] = field(default_factory=dict)  # "seq"/"batch" -> size, where not symbolic

    @property
    def bidirectional(self) -> list[RecurrentNode]:
        return [n for n in self.recurrent if n.direction != "forward"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["oracle"] = {"applicable": self.oracle[0], "reason": self.oracle[1]}
        return out


# ---- inspecting -----------------------------------------------------------------------------------------
def _np_dtype(elem_type: int) -> str:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return f"onnx-type-{elem_type}"


def tensor_info(value_info: Any) -> TensorInfo:
    tt = value_info.type.tensor_type
    dims: list[int | str] | None = None
    if tt.HasField("shape"):
        dims = []
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or f"{value_info.name}[{axis}]")
    return TensorInfo(value_info.name, _np_dtype(tt.elem_type), dims)


def graph_inputs(proto: Any) -> list[TensorInfo]:
    """Real inputs (old exporters list initializers as inputs too)."""
    inits = {i.name for i in proto.graph.initializer}
    return [tensor_info(v) for v in proto.graph.input if v.name not in inits]


def _walk(graph: Any, where: str):
    """(node, graph, where) for every node, If / Loop / Scan bodies included."""
    for node in graph.node:
        yield node, graph, where
        for attr in node.attribute:
            label = f"{node.op_type} '{node.name or '(unnamed)'}' {attr.name}"
            sub = f"{label}" if where == "main graph" else f"{where} > {label}"
            if attr.HasField("g"):
                yield from _walk(attr.g, sub)
            for g in attr.graphs:
                yield from _walk(g, sub)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        out[a.name] = value
    return out


def _layers(graph: Any) -> dict[int, int]:
    """Recurrent node -> its 1-based depth among the recurrent nodes upstream of it in `graph`."""
    producer = {out: node for node in graph.node for out in node.output if out}
    depth: dict[int, int] = {}

    def upstream_depth(node: Any, seen: set) -> int:
        key = id(node)
        if key in depth:
            return depth[key]
        if key in seen:
            return 0
        seen.add(key)
        best = 0
        for name in node.input:
            prev = producer.get(name)
            if prev is not None:
                best = max(best, upstream_depth(prev, seen))
        depth[key] = best + (1 if is_recurrent(node) else 0)
        return depth[key]

    return {id(node): upstream_depth(node, set()) for node in graph.node if is_recurrent(node)}


def capability(node: RecurrentNode, opset: int) -> dict[str, str]:
    """What each backend does with this node, like `polygraphy inspect capability` does for TensorRT.

    onnxruntime: checked on ORT 1.32 CPU (only layout=1 is refused; contrib ops are ORT's own).
    tensorrt: the ONNX parser's rules (docs/files.md); not run here. onnx-reference: the oracle's own
    rule (``lstminfer.onnx.oracle.oracle_gaps``), the one ``applicable`` uses.
    """
    caps: dict[str, str] = {}
    contrib = node.domain not in ("", "ai.onnx")
    caps["onnxruntime"] = ("no: layout=1 (batch-first) is refused by ONNX Runtime" if node.layout else
                           f"yes (an ONNX Runtime {node.domain} contrib op)" if contrib else "yes")
    trt = []
    if contrib:
        trt.append(f"{node.domain} {node.op} is not an ONNX operator the parser knows")
    if node.layout:
        trt.append("layout=1 (the parser needs layout=0)")
    if node.input_forget:
        trt.append("input_forget=1")
    if node.direction == "bidirectional" and node.activations:
        half = len(node.activations) // 2
        if [a.lower() for a in node.activations[:half]] != [a.lower() for a in node.activations[half:]]:
            trt.append("different activations in the two directions")
    odd = sorted({a for a in node.activations if a.lower() not in TRT_ACTIVATIONS})
    if odd:
        trt.append(f"activation {', '.join(odd)} has no TensorRT layer")
    if opset < TRT_OPSET_MIN:
        trt.append(f"opset {opset} < {TRT_OPSET_MIN}")
    caps["tensorrt"] = ("no: " + "; ".join(trt)) if trt else "yes (parser rules; builds one ILoop per node)"
    gaps = oracle_gaps(node.op, node.domain, {"clip": node.clip, "input_forget": node.input_forget,
                                              "activations": node.activations}, node.sequence_lens)
    verb = "lacks" if contrib else "ignores"
    caps["onnx-reference"] = f"not applicable: {verb} {', '.join(gaps)}" if gaps else "yes"
    caps["stream"] = ("no: a bidirectional layer needs the future" if node.direction == "bidirectional" else
                      "no: a reverse layer needs the future" if node.direction == "reverse" else "yes")
    return caps


def recurrent_nodes(proto: Any) -> list[RecurrentNode]:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    layers: dict[int, int] = {}
    graphs_done: set[int] = set()
    nodes = []
    for node, graph, where in _walk(proto.graph, "main graph"):
        if not is_recurrent(node):
            continue
        if id(graph) not in graphs_done:
            layers.update(_layers(graph))
            graphs_done.add(id(graph))
        attrs = _attrs(node)
        inputs = list(node.input) + [""] * (8 - len(node.input))
        lstm = "LSTM" in node.op_type
        rec = RecurrentNode(
            op=node.op_type, name=node.name or "(unnamed)", where=where, layer=layers.get(id(node), 1),
            hidden_size=attrs.get("hidden_size"), direction=attrs.get("direction", "forward"),
            layout=int(attrs.get("layout", 0)), activations=list(attrs.get("activations", [])),
            clip=attrs.get("clip"), input_forget=int(attrs.get("input_forget", 0)),
            sequence_lens=bool(inputs[4]), peepholes=lstm and bool(inputs[7]),
            initial_state=[inputs[5]] + ([inputs[6]] if lstm else []),
            linear_before_reset=int(attrs.get("linear_before_reset", 0)) if node.op_type == "GRU" else None,
            domain=node.domain or "ai.onnx",
        )
        rec.capability = capability(rec, opset)
        nodes.append(rec)
    return nodes


def _length_inputs(proto: Any) -> list[str]:
    """Graph inputs fed straight (or through a Cast) to a recurrent node's sequence_lens."""
    names = {i.name for i in proto.graph.input}
    cast_of = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Cast"}
    found = []
    for node, _, _ in _walk(proto.graph, "main graph"):
        if is_recurrent(node) and len(node.input) > 4 and node.input[4]:
            source = cast_of.get(node.input[4], node.input[4])
            if source in names and source not in found:
                found.append(source)
    return found


# ---- state pairs ----------------------------------------------------------------------------------------
def _state_candidates(name: str) -> list[str]:
    """Output names that would carry input `name`'s state to the next call (input->output itself is excluded)."""
    cands = [name + "N", name + "n", name + "_out", name + "_new", name + "_next", "new_" + name, "next_" + name]
    for a, b in (("_in", "_out"), ("0", "n"), ("0", "N"), ("_0", "_n"), ("_prev", "_next"), ("_prev", ""),
                 ("_old", "_new"), ("_init", ""), ("_t", "_t1")):
        if name.endswith(a) and len(name) > len(a):
            cands.append(name[: -len(a)] + b)
    for a, b in (("prev_", "next_"), ("old_", "new_"), ("initial_", ""), ("init_", "")):
        if name.startswith(a) and len(name) > len(a):
            cands.append(b + name[len(a):])
    return [c for c in cands if c and c != name and c.lower() != "output"]


def _shape_mismatch(a: TensorInfo, b: TensorInfo) -> str:
    """Why `a` cannot carry its state into `b` ("" when it can).

    A fixed dim and a symbolic one are compatible: exporters name an output's dims themselves
    (``[2, batch, 128]`` in, ``[AddstateN_dim_0, batch, AddstateN_dim_2]`` out). Two different fixed
    sizes are not, nor two ranks or dtypes."""
    if a.dtype != b.dtype:
        return f"dtypes differ ({a.dtype} vs {b.dtype})"
    if a.dims is None or b.dims is None:
        return ""
    if len(a.dims) != len(b.dims):
        return f"ranks differ ({a.shape_text} vs {b.shape_text})"
    if any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a.dims, b.dims)):
        return f"shapes differ ({a.shape_text} vs {b.shape_text})"
    return ""


def _pairs_and_misses(inputs: list[TensorInfo], outputs: list[TensorInfo]) -> tuple[list[StatePair], list[str]]:
    by_lower = {o.name.lower(): o for o in outputs}
    pairs, used, misses = [], set(), []
    for inp in inputs:
        if inp.dims is not None and len(inp.dims) == 0:
            continue  # a scalar (e.g. a sample rate) is not a recurrent state
        for cand in _state_candidates(inp.name):
            out = by_lower.get(cand.lower())
            if out is None or out.name in used:
                continue
            why = _shape_mismatch(inp, out)
            if why:
                misses.append(f"{inp.name} -> {out.name} match by name but {why}")
                continue
            pairs.append(StatePair(inp.name, out.name, "name"))
            used.add(out.name)
            break
    return pairs, misses


def find_state_pairs(inputs: list[TensorInfo], outputs: list[TensorInfo]) -> list[StatePair]:
    """h0->hn, c0->cn, state->stateN, x_in->x_out ...: names that match, tensors of compatible shape and dtype."""
    return _pairs_and_misses(inputs, outputs)[0]


def state_pair_misses(inputs: list[TensorInfo], outputs: list[TensorInfo]) -> list[str]:
    """Input/output names that match but tensors that cannot carry the state (shape, rank, dtype), each once."""
    return list(dict.fromkeys(_pairs_and_misses(inputs, outputs)[1]))


def state_pairs_note(inputs: list[TensorInfo], outputs: list[TensorInfo]) -> str:
    """Why no state pair was found: the near misses, or that no input/output names match."""
    if find_state_pairs(inputs, outputs):
        return ""
    misses = state_pair_misses(inputs, outputs)
    if misses:
        return "none: " + "; ".join(misses) + " (give --state IN:OUT)"
    return "none: no input/output names match (h0->hn, state->stateN, x_in->x_out, ...); give --state IN:OUT"


def inspect_proto(proto: Any, path: str = "") -> OnnxInfo:
    inputs = graph_inputs(proto)
    graph_roles, fixed_axes = graph_axes(proto, inputs)
    outputs = [tensor_info(o) for o in proto.graph.output]
    recurrent = recurrent_nodes(proto)
    info = OnnxInfo(
        path=str(path), ir_version=int(proto.ir_version),
        opset={(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        inputs=inputs, outputs=outputs, recurrent=recurrent,
        state_pairs=find_state_pairs(inputs, outputs), oracle=applicable(proto),
        dim_roles=dim_roles(inputs, graph_roles, export_batch_first(proto)), fixed_axes=fixed_axes,
        length_inputs=_length_inputs(proto), state_pairs_note=state_pairs_note(inputs, outputs),
        state_pair_misses=state_pair_misses(inputs, outputs),
    )
    if not recurrent:
        info.notes.append("no recurrent node (LSTM/GRU/RNN) in this graph: it runs like any ONNX model")
    if info.bidirectional:
        names = ", ".join(f"{n.op} {n.name}" for n in info.bidirectional)
        info.notes.append(f"cannot stream: {names} runs {info.bidirectional[0].direction} (needs the future)")
    return info


def inspect_file(path: str | Path) -> OnnxInfo:
    return inspect_proto(load_onnx(path), str(path))


def parse_state(items: list[str] | str | dict | None, inputs: list[str],
                outputs: list[str] | None) -> list[StatePair]:
    """``--state in:out`` (repeatable or comma-separated) -> pairs, each name checked against the graph."""
    if not items:
        return []
    if isinstance(items, dict):
        items = [f"{k}:{v}" for k, v in items.items()]
    if isinstance(items, str):
        items = [items]
    pairs = []
    for item in (part.strip() for text in items for part in text.split(",")):
        src, sep, dst = item.rpartition(":")
        if not sep or not src or not dst:
            raise UserError(f"--state {item!r}: expected INPUT:OUTPUT, e.g. h0:hn")
        if src not in inputs:
            raise UserError(f"--state {item!r}: the model has no input {src!r} (inputs: {', '.join(inputs)})")
        if outputs is None and not re.fullmatch(r"output\d+", dst):
            raise UserError(f"--state {item!r}: a TorchScript file's outputs are named output0, output1, ... "
                            "in the order forward returns them (flattened)")
        if outputs is not None and dst not in outputs:
            raise UserError(f"--state {item!r}: the model has no output {dst!r} (outputs: {', '.join(outputs)})")
        pairs.append(StatePair(src, dst, "given"))
    return pairs


def export_batch_first(proto: Any) -> bool | None:
    """batch_first as `lstminfer export` recorded it in the file's metadata; None for other files."""
    for prop in proto.metadata_props:
        if prop.key == "lstminfer.spec":
            try:
                return bool(json.loads(prop.value).get("batch_first", False))
            except (json.JSONDecodeError, AttributeError):
                return None
    return None


def graph_axes(proto: Any, inputs: list[TensorInfo]) -> tuple[dict[str, str], dict[str, int]]:
    """Where ONNX shape inference carries the inputs onto the recurrent nodes: symbolic input dim -> "seq" or
    "batch", and the fixed sizes the first recurrent node runs at ({"seq": 512, "batch": 1} when its axes are
    not symbolic). X is [seq, batch, feature] with layout=0 ([batch, seq, feature] with layout=1),
    initial_h [dirs, batch, H] ([batch, dirs, H])."""
    import onnx

    symbolic = {d for i in inputs if i.dims for d in i.dims if isinstance(d, str)}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # a graph shape inference cannot follow: names and the other rules still apply
        return {}, {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        info = tensor_info(vi)
        shapes[info.name] = info.dims
    roles: dict[str, str] = {}
    fixed: dict[str, int] = {}
    for node in inferred.graph.node:
        if not is_recurrent(node):
            continue
        layout = int(_attrs(node).get("layout", 0))
        x = shapes.get(node.input[0]) or []
        if len(x) == 3:
            seq_axis, batch_axis = (1, 0) if layout else (0, 1)
            for axis, role in ((seq_axis, "seq"), (batch_axis, "batch")):
                if isinstance(x[axis], str) and x[axis] in symbolic:
                    roles.setdefault(x[axis], role)
                elif isinstance(x[axis], int) and x[axis] > 0:
                    fixed.setdefault(role, x[axis])
        for idx in (5, 6):
            h = shapes.get(node.input[idx]) if len(node.input) > idx and node.input[idx] else None
            if h and len(h) == 3:
                b = h[0] if layout else h[1]
                if isinstance(b, str) and b in symbolic:
                    roles.setdefault(b, "batch")
    return roles, fixed
