"""Reading any ONNX (or TorchScript) file: inputs with symbolic dims, recurrent nodes, state pairs, capability.

A user's file is not one of our exports: its inputs come from the graph, its symbolic dims from
trtexec-style ``--shapes name:AxB``, its integer and scalar inputs from ``--input name=VALUE`` or an
``.npz``, and its reference is ``onnx.reference`` on a float64 copy where that is faithful (FACTS.md
section 3), else ONNX Runtime on the CPU.  ``FileModel`` is the ``Model`` every backend gets for it.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.onnx_ref import DEFAULT_ACTIVATIONS, RECURRENT_OPS, applicable
from lstminfer.spec import Model

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
# Symbolic dim names that mean "sequence" or "batch" (torch's dynamic_axes names, common hand-written ones).
SEQ_DIM = re.compile(r"(seq|time|len|frame|step|sample|chunk|^t$|^s$|^l$)", re.IGNORECASE)
BATCH_DIM = re.compile(r"(batch|^n$|^b$|^bs$)", re.IGNORECASE)
# Activations the TensorRT ONNX parser maps to its activation layers (onnx-tensorrt RNNHelpers).
TRT_ACTIVATIONS = {"relu", "tanh", "sigmoid", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid",
                   "elu", "softsign", "softplus"}
TRT_OPSET_MIN = 9


# ---- what is in the file ------------------------------------------------------------------------------
@dataclass
class TensorInfo:
    """One graph input or output.  ``dims``: int (fixed), str (symbolic; anonymous ones named ``name[axis]``),
    or None when the graph gives no shape at all."""

    name: str
    dtype: str
    dims: list[int | str] | None

    @property
    def shape_text(self) -> str:
        if self.dims is None:
            return "?"
        return "[" + ", ".join(str(d) for d in self.dims) + "]"


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
    capability: dict[str, str] = field(default_factory=dict)  # backend -> "yes" | "no: why" | "unverified: why"


@dataclass
class StatePair:
    input: str
    output: str
    found_by: str  # "name" or "given"


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

    @property
    def bidirectional(self) -> list[RecurrentNode]:
        return [n for n in self.recurrent if n.direction != "forward"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["oracle"] = {"applicable": self.oracle[0], "reason": self.oracle[1]}
        return out


# ---- loading, with one-line errors ---------------------------------------------------------------------
# Top-level fields of onnx.ModelProto: ir_version 1 ... functions 25 (onnx.proto3).
_MODEL_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise EOFError
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _wire_check(data: bytes) -> str | None:
    """Walk ModelProto's top-level protobuf fields: "not" (not an ONNX model), "truncated", or None (fine)."""
    pos = 0
    seen = 0
    while pos < len(data):
        try:
            tag, pos = _read_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number not in _MODEL_FIELDS or wire not in (0, 2):
                return "not" if seen == 0 else None  # let protobuf decide on odd later fields
            if wire == 0:
                _, pos = _read_varint(data, pos)
            else:
                length, pos = _read_varint(data, pos)
                if pos + length > len(data):
                    return "truncated"
                pos += length
        except EOFError:
            return "truncated"
        except ValueError:
            return "not" if seen == 0 else "truncated"
        seen += 1
    return None


def load_onnx(path: str | Path, check: bool = True) -> Any:
    """The ModelProto of `path`, or a UserError naming what is wrong with the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path} is empty, not an ONNX model")
    if zipfile.is_zipfile(path):
        raise UserError(f"{path} is a zip archive (a TorchScript or torch.save file?), not an ONNX model; "
                        "name it .pt to run it as TorchScript")
    verdict = _wire_check(data)
    if verdict == "not":
        raise UserError(f"{path} is not an ONNX file (it does not start like an ONNX ModelProto)")
    if verdict == "truncated":
        raise UserError(f"{path} is truncated: a field runs past the end of the file ({len(data)} bytes); "
                        "copy or download it again")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:
        raise UserError(f"{path} is not a readable ONNX file: {_first_line(err)}") from err
    if proto.ir_version == 0 or not proto.HasField("graph"):
        raise UserError(f"{path} is not an ONNX model (no ir_version or no graph)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except Exception as err:
            raise UserError(f"{path}: its external weight files cannot be read: {_first_line(err)}") from err
    if check:
        try:
            onnx.checker.check_model(proto)
        except Exception as err:
            raise UserError(f"{path} fails onnx.checker: {_first_line(err)}") from err
    return proto


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n")[:1]).strip() or type(err).__name__
    return text[:300].strip()


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


def _layers(graph: Any) -> dict[str, int]:
    """Recurrent node name/output -> its 1-based depth among the recurrent nodes upstream of it in `graph`."""
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
        depth[key] = best + (1 if node.op_type in RECURRENT_OPS else 0)
        return depth[key]

    out = {}
    for node in graph.node:
        if node.op_type in RECURRENT_OPS:
            out[id(node)] = upstream_depth(node, set())
    return out


def capability(node: RecurrentNode, opset: int) -> dict[str, str]:
    """What each backend does with this node, like `polygraphy inspect capability` does for TensorRT.

    onnxruntime: checked on ORT 1.32 CPU (only layout=1 is refused).  tensorrt: the ONNX parser's rules
    (FACTS.md section 2); not run here.  onnx-reference: lstminfer.onnx_ref.applicable's rules.
    """
    caps: dict[str, str] = {}
    caps["onnxruntime"] = "no: layout=1 (batch-first) is refused by ONNX Runtime" if node.layout else "yes"
    trt = []
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
    reasons = []
    if node.clip is not None:
        reasons.append("clip")
    if node.input_forget:
        reasons.append("input_forget")
    default = DEFAULT_ACTIVATIONS[node.op]
    if node.activations and [a.lower() for a in node.activations] != [
            a.lower() for a in default * max(1, len(node.activations) // len(default))]:
        reasons.append(f"activations {node.activations}")
    if node.sequence_lens:
        reasons.append("sequence_lens")
    if node.layout:
        reasons.append("layout=1")
    caps["onnx-reference"] = ("not applicable: ignores " + ", ".join(reasons)) if reasons else "yes"
    caps["stream"] = ("no: a bidirectional layer needs the future" if node.direction == "bidirectional" else
                      "no: a reverse layer needs the future" if node.direction == "reverse" else "yes")
    return caps


def recurrent_nodes(proto: Any) -> list[RecurrentNode]:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    layers: dict[int, int] = {}
    graphs_done: set[int] = set()
    nodes = []
    for node, graph, where in _walk(proto.graph, "main graph"):
        if node.op_type not in RECURRENT_OPS:
            continue
        if id(graph) not in graphs_done:
            layers.update(_layers(graph))
            graphs_done.add(id(graph))
        attrs = _attrs(node)
        inputs = list(node.input) + [""] * (8 - len(node.input))
        state_inputs = [inputs[5]] + ([inputs[6]] if node.op_type == "LSTM" else [])
        rec = RecurrentNode(
            op=node.op_type, name=node.name or "(unnamed)", where=where, layer=layers.get(id(node), 1),
            hidden_size=attrs.get("hidden_size"), direction=attrs.get("direction", "forward"),
            layout=int(attrs.get("layout", 0)), activations=list(attrs.get("activations", [])),
            clip=attrs.get("clip"), input_forget=int(attrs.get("input_forget", 0)),
            sequence_lens=bool(inputs[4]), peepholes=node.op_type == "LSTM" and bool(inputs[7]),
            initial_state=state_inputs,
            linear_before_reset=int(attrs.get("linear_before_reset", 0)) if node.op_type == "GRU" else None,
        )
        rec.capability = capability(rec, opset)
        nodes.append(rec)
    return nodes


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


def _same_shape(a: TensorInfo, b: TensorInfo) -> bool:
    if a.dtype != b.dtype or a.dims is None or b.dims is None or len(a.dims) != len(b.dims):
        return False
    for x, y in zip(a.dims, b.dims):
        if isinstance(x, int) and isinstance(y, int) and x != y:
            return False
        if isinstance(x, int) != isinstance(y, int) and not ("[" in str(x) or "[" in str(y)):
            return False  # fixed vs a named symbolic dim
    return True


def find_state_pairs(inputs: list[TensorInfo], outputs: list[TensorInfo]) -> list[StatePair]:
    """h0->hn, c0->cn, state->stateN, x_in->x_out ...: names that match and tensors of equal shape and dtype."""
    by_lower = {o.name.lower(): o for o in outputs}
    pairs, used = [], set()
    for inp in inputs:
        if inp.dims is not None and len(inp.dims) == 0:
            continue  # a scalar (e.g. a sample rate) is not a recurrent state
        for cand in _state_candidates(inp.name):
            out = by_lower.get(cand.lower())
            if out is not None and out.name not in used and _same_shape(inp, out):
                pairs.append(StatePair(inp.name, out.name, "name"))
                used.add(out.name)
                break
    return pairs


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


def dim_roles(proto: Any, inputs: list[TensorInfo]) -> dict[str, str]:
    """Symbolic dim -> "seq" or "batch": from the dim's name, else from where it lands on a recurrent node
    (after ONNX shape inference: X is [seq, batch, feature] with layout=0, initial_h [dirs, batch, H])."""
    import onnx

    roles: dict[str, str] = {}
    symbolic = {d for i in inputs if i.dims for d in i.dims if isinstance(d, str) and "[" not in d}
    for d in symbolic:
        if BATCH_DIM.search(d):
            roles[d] = "batch"
        elif SEQ_DIM.search(d):
            roles[d] = "seq"
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        return roles
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        info = tensor_info(vi)
        shapes[info.name] = info.dims
    for node in inferred.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        layout = int(_attrs(node).get("layout", 0))
        x = shapes.get(node.input[0]) or []
        if len(x) == 3:
            seq_axis, batch_axis = (1, 0) if layout else (0, 1)
            for axis, role in ((seq_axis, "seq"), (batch_axis, "batch")):
                if isinstance(x[axis], str) and x[axis] in symbolic:
                    roles.setdefault(x[axis], role)
        for idx in (5, 6):
            h = shapes.get(node.input[idx]) if len(node.input) > idx and node.input[idx] else None
            if h and len(h) == 3:
                b = h[0] if layout else h[1]
                if isinstance(b, str) and b in symbolic:
                    roles.setdefault(b, "batch")
    return roles


def inspect_proto(proto: Any, path: str = "") -> OnnxInfo:
    inputs = graph_inputs(proto)
    outputs = [tensor_info(o) for o in proto.graph.output]
    recurrent = recurrent_nodes(proto)
    info = OnnxInfo(
        path=str(path), ir_version=int(proto.ir_version),
        opset={(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        inputs=inputs, outputs=outputs, recurrent=recurrent,
        state_pairs=find_state_pairs(inputs, outputs), oracle=applicable(proto),
        dim_roles=dim_roles(proto, inputs),
    )
    if not recurrent:
        info.notes.append("no recurrent node (LSTM/GRU/RNN) in this graph: it runs like any ONNX model")
    if info.bidirectional:
        names = ", ".join(f"{n.op} {n.name}" for n in info.bidirectional)
        info.notes.append(f"cannot stream: {names} runs {info.bidirectional[0].direction} (needs the future)")
    return info


def inspect_file(path: str | Path) -> OnnxInfo:
    return inspect_proto(load_onnx(path), str(path))


# ---- user-given shapes and values -------------------------------------------------------------------------
def parse_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """trtexec syntax ``name:AxBxC,name2:D`` (the name is everything before the last colon; an empty shape
    after the colon is a scalar)."""
    out: dict[str, tuple[int, ...]] = {}
    if not text:
        return out
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise UserError(f"--shapes {item!r}: expected NAME:AxBxC (e.g. input:16x1x40)")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
        except ValueError:
            raise UserError(f"--shapes {item!r}: {dims!r} is not AxBxC with integer sizes") from None
        if any(d < 0 for d in shape):
            raise UserError(f"--shapes {item!r}: sizes must be >= 0")
        out[name] = shape
    return out


def parse_values(items: list[str] | None) -> dict[str, float | int]:
    """``--input name=VALUE`` (repeatable) -> {name: number}."""
    out: dict[str, float | int] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--input {item!r}: expected NAME=VALUE (e.g. sr=16000)")
        text = text.strip()
        try:
            value: float | int = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                if text.lower() in ("true", "false"):
                    value = int(text.lower() == "true")
                else:
                    raise UserError(f"--input {item!r}: {text!r} is not a number") from None
        out[name.strip()] = value
    return out


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--inputs: file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except Exception as err:
        raise UserError(f"--inputs: {path} is not a .npz file numpy can read: {_first_line(err)}") from err


# ---- the Model handle for a file ----------------------------------------------------------------------------
class FileModel(Model):
    """A user's ONNX (or TorchScript) file, handed to every backend like our exported presets.

    ``make_inputs(seq_len, batch, rng)`` builds inputs from the graph: fixed dims as they are, dims set by
    ``--shapes`` or by ``.npz`` arrays as given, other dims recognised as sequence or batch axes from
    ``seq_len`` / ``batch``; values from ``--input``/``--inputs`` where given, else random data of the
    input's dtype.  ``reference`` is onnx.reference in float64 where it applies, else ONNX Runtime on CPU.
    """

    def __init__(self, name: str, inputs: list[TensorInfo], outputs: list[TensorInfo], *,
                 proto: Any = None, onnx_path: Path | None = None, info: OnnxInfo | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None, values: dict[str, Any] | None = None,
                 arrays: dict[str, np.ndarray] | None = None, seq_len: int | None = None, batch: int | None = None,
                 script_path: Path | None = None, script_args: list[str] | None = None, validate: bool = True):
        super().__init__(name=name, spec=None, module=None, onnx_path=onnx_path, with_state=True)
        self.graph_inputs = inputs
        self.graph_outputs = outputs
        self.proto = proto
        self.info = info
        self.roles = dict(info.dim_roles) if info else {}
        self.script_path = script_path
        self.script_args = script_args or []
        self.values = dict(values or {})
        self.arrays = dict(arrays or {})
        self.shapes = dict(shapes or {})
        self._by_name = {i.name: i for i in inputs}
        self.bindings: dict[str, int] = {}
        self._oracle: Any = None
        self._ort: Any = None
        self._script64: Any = None
        self.reference_name = self._choose_reference()
        self._bind_given()
        fixed_seq = [self.bindings[d] for d, r in self.roles.items() if r == "seq" and d in self.bindings]
        fixed_batch = [self.bindings[d] for d, r in self.roles.items() if r == "batch" and d in self.bindings]
        self.seq_varies = any(r == "seq" and d not in self.bindings for d, r in self._used_roles().items())
        self.batch_varies = any(r == "batch" and d not in self.bindings for d, r in self._used_roles().items())
        self.seq_len = seq_len if self.seq_varies and seq_len else (fixed_seq[0] if fixed_seq else (seq_len or 16))
        self.batch = batch if self.batch_varies and batch else (fixed_batch[0] if fixed_batch else (batch or 1))
        self.metadata = {"file": name, "reference": self.reference_name}
        if validate:  # every dim resolvable, or a UserError naming those unset
            self.input_shapes(self.seq_len, self.batch)

    # -- names --
    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.graph_inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.graph_outputs]

    def _used_roles(self) -> dict[str, str]:
        used = {d for i in self.graph_inputs if i.dims for d in i.dims if isinstance(d, str)}
        return {d: r for d, r in self.roles.items() if d in used}

    # -- shapes --
    def _bind(self, dim: str, value: int, source: str) -> None:
        old = self.bindings.get(dim)
        if old is not None and old != value:
            raise UserError(f"{source} sets dim {dim!r} to {value}, but another input already set it to {old}")
        self.bindings[dim] = value

    def _bind_shape(self, name: str, shape: tuple[int, ...], source: str) -> None:
        info = self._by_name[name]
        if info.dims is None:
            return
        if len(shape) != len(info.dims):
            raise UserError(f"{source}: input {name!r} has rank {len(info.dims)} {info.shape_text}, "
                            f"got rank {len(shape)} {list(shape)}")
        for axis, (want, got) in enumerate(zip(info.dims, shape)):
            if isinstance(want, int):
                if want != got:
                    raise UserError(f"{source}: input {name!r} dim {axis} is fixed at {want} in the graph, got {got}")
            else:
                self._bind(want, got, source)

    def _bind_given(self) -> None:
        names = set(self.input_names)
        for source, given in (("--shapes", self.shapes), ("--input", self.values), ("--inputs", self.arrays)):
            unknown = sorted(set(given) - names)
            if unknown:
                raise UserError(f"{source} names {', '.join(repr(u) for u in unknown)}, which the model does not "
                                f"have; its inputs are {', '.join(self.input_names)}")
        for name, shape in self.shapes.items():
            self._bind_shape(name, shape, f"--shapes {name}")
        for name, array in self.arrays.items():
            info = self._by_name[name]
            if array.dtype.name != info.dtype:
                raise UserError(f"--inputs: array {name!r} is {array.dtype.name}, the model's input is {info.dtype}")
            if name in self.shapes and tuple(array.shape) != self.shapes[name]:
                raise UserError(f"--inputs: array {name!r} has shape {list(array.shape)}, --shapes says "
                                f"{list(self.shapes[name])}")
            self._bind_shape(name, tuple(array.shape), f"--inputs array {name!r}")
        for name, value in self.values.items():
            dtype = np.dtype(self._by_name[name].dtype) if self._by_name[name].dtype in np.sctypeDict else None
            if dtype is not None and dtype.kind in "iub" and isinstance(value, float) and not value.is_integer():
                raise UserError(f"--input {name}={value}: the model's input {name!r} is {dtype.name}, "
                                "give an integer")

    def input_shapes(self, seq_len: int, batch: int) -> dict[str, tuple[int, ...]]:
        """Every input's shape at one point; a UserError names each dim still unset."""
        shapes, unset = {}, []
        for info in self.graph_inputs:
            if info.name in self.arrays:
                shapes[info.name] = tuple(self.arrays[info.name].shape)
                continue
            if info.name in self.shapes:
                shapes[info.name] = self.shapes[info.name]
                continue
            if info.dims is None:
                if info.name in self.values:
                    shapes[info.name] = ()
                    continue
                unset.append(f"{info.name} (no shape in the graph)")
                continue
            shape = []
            for axis, d in enumerate(info.dims):
                if isinstance(d, int):
                    shape.append(d)
                elif d in self.bindings:
                    shape.append(self.bindings[d])
                elif self.roles.get(d) == "seq":
                    shape.append(seq_len)
                elif self.roles.get(d) == "batch":
                    shape.append(batch)
                else:
                    unset.append(f"{info.name} dim {axis} ({d})")
                    shape.append(-1)
            shapes[info.name] = tuple(shape)
        if unset:
            example = ",".join(f"{i.name}:{'x'.join('N' for _ in i.dims) if i.dims else 'AxB'}"
                               for i in self.graph_inputs if any(u.startswith(i.name + " ") for u in unset))
            raise UserError(f"dims still unset: {'; '.join(unset)}; set them with --shapes {example} "
                            "(or give the arrays with --inputs FILE.npz)")
        return shapes

    def make_inputs(self, seq_len: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shapes = self.input_shapes(seq_len, batch)
        out = {}
        for info in self.graph_inputs:
            if info.name in self.arrays:
                out[info.name] = self.arrays[info.name]
                continue
            shape = shapes[info.name]
            dtype = np.dtype(info.dtype)
            if info.name in self.values:
                out[info.name] = np.full(shape, self.values[info.name], dtype=dtype)
            elif dtype.kind == "f":
                out[info.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                out[info.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                out[info.name] = rng.integers(0, 4, shape).astype(dtype)
        return out

    def verify_points(self) -> list[tuple[int, int]]:
        """The model's shape, a longer sequence and another batch, where those axes are free."""
        points = [(self.seq_len, self.batch)]
        if self.seq_varies:
            points.append((4 * self.seq_len, self.batch))
        if self.batch_varies:
            points.append((self.seq_len, self.batch + 2))
        return points

    # -- reference --
    def _choose_reference(self) -> str:
        if self.proto is None:
            return "torchscript-float64-cpu"
        ok, why = self.info.oracle if self.info else applicable(self.proto)
        if ok:
            return "onnx.reference-float64"
        self.reference_note = (f"onnx.reference not applicable ({why}); the reference is ONNX Runtime CPU fp32, "
                               "so onnxruntime[cpu] is compared with itself")
        return "onnxruntime-cpu-fp32"

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.proto is None:
            return self._script_reference(inputs)
        if self.reference_name == "onnx.reference-float64":
            try:
                if self._oracle is None:
                    from lstminfer.onnx_ref import Float64Reference

                    self._oracle = Float64Reference(self.proto)
                return self._oracle.run(inputs)
            except UserError:
                raise
            except Exception as err:  # an op onnx.reference lacks: fall back, and say so in every table
                self.reference_note = f"onnx.reference failed ({_first_line(err)}); reference is ONNX Runtime CPU"
                self.reference_name = "onnxruntime-cpu-fp32"
                self.metadata["reference"] = self.reference_name
        return self._ort_reference(inputs)

    def _ort_reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        if self._ort is None:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4  # the refusal becomes our one-line error, not ORT's log line
            try:
                self._ort = ort.InferenceSession(self.proto.SerializeToString(), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
            except Exception as err:
                why = self.info.oracle[1] if self.info else ""
                raise UserError(f"no reference can run {self.name}: onnx.reference is not applicable ({why}) "
                                f"and ONNX Runtime refuses it: {_ort_message(err)}") from err
        try:
            outs = self._ort.run(None, inputs)
        except Exception as err:
            raise UserError(f"ONNX Runtime cannot run {self.name} on these inputs: {_ort_message(err)}") from err
        return dict(zip(self.output_names, outs))

    def _script_reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self._script64 is None:
            self._script64 = load_torchscript(self.script_path).double().eval()
        feeds = {n: torch.from_numpy(a).double() if a.dtype.kind == "f" else torch.from_numpy(a)
                 for n, a in inputs.items()}
        with torch.no_grad():
            outs = flatten_outputs(self._script64(*script_inputs(self, feeds)))
        self._ensure_output_names(len(outs))
        return {n: t.numpy() for n, t in zip(self.output_names, outs)}

    def _ensure_output_names(self, count: int) -> None:
        if self.proto is None and len(self.graph_outputs) != count:
            self.graph_outputs = [TensorInfo(f"output{i}", "float32", None) for i in range(count)]

    @property
    def notes(self) -> list[str]:
        """What a user should know before reading the tables: no recurrent node, which reference and why."""
        out = list(self.info.notes) if self.info else []
        if getattr(self, "reference_note", None):
            out.append(self.reference_note)
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["reference"] = self.reference_name
        if getattr(self, "reference_note", None):
            out["reference_note"] = self.reference_note
        if self.info:
            out["recurrent_nodes"] = len(self.info.recurrent)
        return out


def _ort_message(err: BaseException) -> str:
    """ONNX Runtime's reason without its source location: 'layout_ == 0 was false. Batchwise ... supported.'"""
    for line in str(err).splitlines():
        if "was false." in line:
            return line.split("was false.", 1)[1].split(" If you need support")[0].strip()[:300]
    return _first_line(err)


# ---- TorchScript ----------------------------------------------------------------------------------------
def is_torchscript_path(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return True
    return path.suffix.lower() != ".onnx" and path.is_file() and zipfile.is_zipfile(path)


def load_torchscript(path: str | Path, device: str = "cpu") -> Any:
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a TorchScript file: it is not the zip archive torch.jit.save writes")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as err:
        first = _first_line(err).split(". ")[0]
        raise UserError(f"{path} is not a TorchScript file torch.jit.load can read (a torch.save checkpoint? run it "
                        f"with --model FILE.py:factory --weights FILE): {first}") from err
    return module.eval()


def flatten_outputs(value: Any) -> list[Any]:
    """A forward's result (tensor, tuple, list, dict, nested) as a flat list, in torch.onnx's output order."""
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten_outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_outputs(v)]
    return [value]


def script_arg_names(module: Any) -> list[str]:
    schema = module.forward.schema
    return [a.name for a in schema.arguments[1:]]  # skip self


def load_model_file(path: str | Path, *, shapes: str | dict | None = None, values: dict | None = None,
                    inputs_npz: str | Path | None = None, onnx: str | Path | None = None,
                    seq_len: int | None = None, batch: int | None = None, validate: bool = True) -> FileModel:
    """An ONNX file, or a TorchScript file (checked against its ONNX export when `onnx` is given)."""
    path = Path(path)
    shapes = parse_shapes(shapes) if isinstance(shapes, str) or shapes is None else dict(shapes)
    arrays = load_npz(inputs_npz) if inputs_npz else {}
    values = dict(values or {})
    if is_torchscript_path(path):
        module = load_torchscript(path)
        args = script_arg_names(module)
        if onnx:
            proto = load_onnx(onnx)
            info = inspect_proto(proto, str(onnx))
            names = [i.name for i in info.inputs]
            if not set(names) <= set(args) and len(names) != len(args):
                raise UserError(f"cannot match TorchScript forward({', '.join(args)}) to the ONNX inputs "
                                f"{', '.join(names)}: export with input_names equal to forward's argument names")
            model = FileModel(str(path), info.inputs, info.outputs, proto=proto, onnx_path=Path(onnx), info=info,
                              shapes=shapes, values=values, arrays=arrays, seq_len=seq_len, batch=batch,
                              script_path=path, script_args=args, validate=validate)
        else:
            tensors = [TensorInfo(a, "float32", None) for a in args]
            for t in tensors:
                if t.name in arrays:
                    t.dtype = arrays[t.name].dtype.name
                elif t.name in values and isinstance(values[t.name], int):
                    t.dtype = "int64"
            model = FileModel(str(path), tensors, [], shapes=shapes, values=values, arrays=arrays,
                              seq_len=seq_len, batch=batch, script_path=path, script_args=args, validate=validate)
        model.metadata["torchscript"] = str(path)
        return model
    proto = load_onnx(path)
    info = inspect_proto(proto, str(path))
    return FileModel(str(path), info.inputs, info.outputs, proto=proto, onnx_path=path, info=info, shapes=shapes,
                     values=values, arrays=arrays, seq_len=seq_len, batch=batch, validate=validate)


def script_inputs(model: FileModel, feeds: dict[str, Any]) -> list[Any]:
    """The TorchScript forward's positional arguments from feeds named like the model's inputs."""
    names = model.input_names
    if set(names) <= set(model.script_args):
        missing = [a for a in model.script_args if a not in feeds]
        if missing:
            raise UserError(f"TorchScript forward argument(s) {', '.join(missing)} are not inputs of the ONNX file; "
                            "export with every argument as an input")
        return [feeds[a] for a in model.script_args]
    return [feeds[n] for n in names]  # the ONNX export's inputs, positionally
