"""Model repositories for Triton Inference Server: ``config.pbtxt``, the model files, ``model.py``.

Every tensor is batch-major on the wire (Triton's batch dimension is the first one): ``input`` is
``[batch, seq, features]``, states ``h0``/``c0`` and ``hn``/``cn`` are ``[batch, layers x directions, hidden]``,
``output`` is ``[batch, seq, directions x hidden]``. A repository holds up to two models per lstminfer model:

- ``NAME``: stateless, the state given and returned explicitly (``h0``, ``c0`` in; ``output``, ``hn``, ``cn``
  out), under Triton's dynamic batcher;
- ``NAME_stream``: one chunk of a stream per request (``input`` in, ``output`` out), under Triton's sequence
  batcher (the ``oldest`` strategy batches chunks of different streams; START/END per request). Only for
  models that can stream: a bidirectional layer needs the future.

A model without a ModelSpec (a user's ONNX / TorchScript file, a whole model) is served as it is: its own
tensor names, dims and dtypes, no Triton batching (``max_batch_size: 0``: its batch axis need not be the
first), scalars as ``[1]``; inputs given on the command line (``--input sr=16000``) are filled in by the
server; streams go through one ``lstminfer.Session`` whose state is swapped per sequence id.

Two kinds of repository:
- ``python``: Triton's Python backend runs ``lstminfer.serve.pymodel`` with any lstminfer backend (onnxruntime,
  torch, fused, fused-graph, ...); the stream state is kept by the model, keyed by the correlation id
  (the Python backend has no implicit state).
- ``onnxruntime`` / ``tensorrt``: a stock Triton with those backends, no lstminfer at serving time. The ONNX
  file is wrapped to be batch-major; the stream model uses Triton's implicit state for ``h``/``c`` (zero
  ``initial_state``), and its ``START`` control input also zeroes the state inside the graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError

PLATFORMS = ("python", "onnxruntime", "tensorrt")
STREAM_SUFFIX = "_stream"
MODEL_PY = '''"""Triton Python-backend model written by lstminfer: the logic lives in lstminfer.serve.pymodel."""

import os
import sys

# Where the lstminfer that wrote this repository lies, tried last: the Python-backend stub ignores PYTHONPATH,
# so a source checkout run with PYTHONPATH=src (or a --target install) is found only through this line.
# An lstminfer installed in the stub's site-packages comes first.
if os.path.isdir({root!r}) and {root!r} not in sys.path:
    sys.path.append({root!r})

from lstminfer.serve.pymodel import TritonPythonModel  # noqa: E402,F401
'''


def model_py() -> str:
    """The `model.py` of a Python-backend model: it imports lstminfer.serve.pymodel."""
    import lstminfer

    return MODEL_PY.format(root=str(Path(lstminfer.__file__).resolve().parent.parent))


class Enum(str):
    """A protobuf enum value: written bare in text format (TYPE_FP32, not "TYPE_FP32")."""


@dataclass(frozen=True)
class TensorConfig:
    name: str
    dims: tuple[int, ...]  # without the batch dimension; -1 for the sequence axis
    data_type: str = "TYPE_FP32"

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": Enum(self.data_type), "dims": list(self.dims)}


TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class ServedTensors:
    """The tensors of a model served as it is (no ModelSpec): what the config of NAME and NAME_stream lists."""

    inputs: list[TensorConfig]  # the model's inputs less those the server fills in
    outputs: list[TensorConfig]
    state_pairs: list[tuple[str, str]]
    stream_refusal: str  # "" when the model can stream
    fixed: dict[str, Any]  # input name -> the value the server fills in (--input NAME=VALUE)

    def stream_io(self) -> tuple[list[TensorConfig], list[TensorConfig]]:
        state_in = {i for i, _ in self.state_pairs}
        state_out = {o for _, o in self.state_pairs}
        return [t for t in self.inputs if t.name not in state_in], [t for t in self.outputs if t.name not in state_out]


def _tensor_of(info: Any, what: str) -> TensorConfig:
    if info.dims is None:
        raise UserError(f"{what} {info.name!r} has no shape in the model, and a Triton config needs one: serve a "
                        "file whose inputs and outputs carry shapes")
    data_type = TRITON_TYPES.get(str(info.dtype))
    if data_type is None:
        raise UserError(f"{what} {info.name!r} has dtype {info.dtype}, which lstminfer does not serve")
    dims = tuple(-1 if isinstance(d, str) else int(d) for d in info.dims)
    return TensorConfig(info.name, dims or (1,), data_type)  # a scalar travels as [1]


def served_tensors(model: Any) -> ServedTensors:
    """The tensors of a model without a ModelSpec (see the module docstring); UserError when unservable."""
    values = dict(getattr(model, "values", None) or {})
    arrays = dict(getattr(model, "arrays", None) or {})
    fixed: dict[str, Any] = {}
    inputs = []
    for info in model.inputs:
        if info.name in arrays:
            raise UserError(f"input {info.name!r} comes from --inputs FILE.npz: serving fills in scalars given "
                            "with --input NAME=VALUE only; let clients send it")
        if info.name in values:
            if info.dims:
                raise UserError(f"--input {info.name}=...: only scalar inputs can be filled in by the server; let "
                                "clients send it")
            fixed[info.name] = values[info.name]
            continue
        inputs.append(_tensor_of(info, "input"))
    outputs = [_tensor_of(info, "output") for info in model.outputs]
    if getattr(model, "onnx_path", None) is None:
        # A whole PyTorch model's output dims come from one probe run at its example shape: fixed numbers
        # that other shapes do not keep. Only the rank is known.
        outputs = [TensorConfig(t.name, (-1,) * len(t.dims), t.data_type) for t in outputs]
    if not outputs:
        raise UserError(f"{model.name}: its outputs are not known before it runs; serve its ONNX export")
    pairs = [(p.input, p.output) for p in model.state_pairs]
    refusal = model.stream_refusal() or ("" if pairs else "it has no recurrent state input/output pair")
    return ServedTensors(inputs, outputs, pairs, refusal, fixed)


# `--instances auto`: Python-backend instances per model, by where they run. On the H200 two KIND_GPU
# instances served 2.2-2.3x the requests of one at concurrency 64, p50 at 1 within the spread between runs:
# one instance runs one execute at a time, and its Python, not the GPU, is the bound (docs/serving.md, "Four
# client processes, then two instances"). Four served 23-26 % more than two at concurrency 64 but with a
# 1.2-1.7x p99, and nothing more at concurrency 1, so the default stays 2; `--instances 4` is for a
# throughput-bound server with many requests in flight (docs/serving.md, "Two instances against four").
# On the 2-core CPU machine a second instance cost 20-30 % of the throughput: its backend competes for the
# cores of the first, Triton and the clients (docs/serving.md, "`--instances` on the 2-core CPU machine").
AUTO_INSTANCES = {"KIND_GPU": 2, "KIND_CPU": 1}


def instances_for(value: int | str, kind: str) -> int:
    """The instance count of `--instances` (a positive integer, or "auto") for instances of `kind`."""
    return AUTO_INSTANCES[kind] if value == "auto" else int(value)


@dataclass(frozen=True)
class ServeOptions:
    """How Triton batches and places a served model."""

    max_batch: int = 64  # rows per execution (dynamic batching; chunks of streams batched together)
    queue_delay_us: int = 0  # how long Triton may hold a request to fill a batch (queued requests batch anyway)
    instances: int = 1
    kind: str = "KIND_CPU"  # KIND_GPU for CUDA backends
    max_streams: int = 64  # streams open at once, per instance
    idle_timeout_s: float = 60.0  # a stream with no chunk for this long is dropped
    buckets: str = "auto"  # pad batches to 1, 2, 4, ... (pymodel.py): on, off, or auto (on for a CUDA device)

    def __post_init__(self) -> None:
        for name in ("max_batch", "instances", "max_streams"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.queue_delay_us < 0 or self.idle_timeout_s <= 0:
            raise UserError("--queue-delay-us must be >= 0 and --idle-timeout positive")
        if self.buckets not in ("auto", "on", "off"):
            raise UserError(f"--batch-buckets {self.buckets!r}: use auto, on or off")
        if self.kind not in ("KIND_CPU", "KIND_GPU"):
            raise UserError(f"instance kind {self.kind!r}: use KIND_CPU or KIND_GPU")


# ---- the tensors of an LSTM/GRU spec, batch-major ----------------------------------------------------------
def io_tensors(spec: Any, with_state: bool = True) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """(inputs, outputs) of the stateless model: Triton dims of a ModelSpec, batch dimension left out."""
    states = spec.num_layers * spec.num_directions
    inputs = [TensorConfig("input", (-1, spec.input_size))]
    outputs = [TensorConfig("output", (-1, spec.num_directions * spec.state_size))]
    if with_state:
        inputs.append(TensorConfig("h0", (states, spec.state_size)))
        outputs.append(TensorConfig("hn", (states, spec.state_size)))
        if spec.kind == "lstm":
            inputs.append(TensorConfig("c0", (states, spec.hidden_size)))
            outputs.append(TensorConfig("cn", (states, spec.hidden_size)))
    return inputs, outputs


def state_pairs(spec: Any) -> list[tuple[str, str]]:
    return [("h0", "hn"), ("c0", "cn")] if spec.kind == "lstm" else [("h0", "hn")]


def can_stream(spec: Any) -> tuple[bool, str]:
    if spec.bidirectional:
        return False, "it is bidirectional (the backward direction needs the future)"
    return True, ""


# ---- config.pbtxt ------------------------------------------------------------------------------------------
def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a quoted string with escapes protobuf's text format reads


def to_pbtxt(config: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a nested dict (messages: dicts; repeated fields: lists)."""
    pad = "  " * indent
    lines = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{to_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = [f"{pad}  {{\n{to_pbtxt(v, indent + 2)}{pad}  }}" for v in value]
            lines.append(f"{pad}{key} [\n" + ",\n".join(items) + f"\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _instance_group(options: ServeOptions) -> list[dict[str, Any]]:
    return [{"count": options.instances, "kind": Enum(options.kind)}]


def _sequence_batching(options: ServeOptions, controls: list[str], states: list[dict] | None = None) -> dict:
    kinds = {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END", "READY": "CONTROL_SEQUENCE_READY"}
    return {
        "max_sequence_idle_microseconds": int(options.idle_timeout_s * 1e6),
        "oldest": {"max_candidate_sequences": options.max_streams,
                   "max_queue_delay_microseconds": options.queue_delay_us},
        "control_input": [{"name": c, "control": [{"kind": Enum(kinds[c]), "fp32_false_true": [0, 1]}]}
                          for c in controls],
        "state": states,
    }


def python_config(name: str, inputs: list[TensorConfig], outputs: list[TensorConfig], options: ServeOptions,
                  stream: bool, batched: bool = True) -> dict[str, Any]:
    """The Python-backend model: dynamic batching, or the sequence batcher with START/END for streams.
    Unbatched (a model served as it is): ``max_batch_size: 0``, one request per backend call."""
    config: dict[str, Any] = {
        "name": name,
        "backend": "python",
        "max_batch_size": options.max_batch if batched else 0,
        "input": [t.to_config() for t in inputs],
        "output": [t.to_config() for t in outputs],
    }
    if stream:
        config["sequence_batching"] = _sequence_batching(options, ["START", "END"])
    elif batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.queue_delay_us}
    config["instance_group"] = _instance_group(options)
    return config


def stock_config(name: str, spec: Any, options: ServeOptions, stream: bool, platform: str) -> dict[str, Any]:
    """A stock Triton model (onnxruntime_onnx or tensorrt_plan) of the batch-major ONNX wrapper."""
    inputs, outputs = io_tensors(spec, with_state=True)
    config: dict[str, Any] = {
        "name": name,
        "platform": "onnxruntime_onnx" if platform == "onnxruntime" else "tensorrt_plan",
        "max_batch_size": options.max_batch,
    }
    if stream:
        by_name = {t.name: t for t in inputs + outputs}
        states = [{"input_name": i, "output_name": o, "data_type": Enum("TYPE_FP32"), "dims": list(by_name[i].dims),
                   "initial_state": [{"name": f"{i}_zeros", "data_type": Enum("TYPE_FP32"),
                                      "dims": list(by_name[i].dims), "zero_data": True}]}
                  for i, o in state_pairs(spec)]
        config["input"] = [inputs[0].to_config()]
        config["output"] = [outputs[0].to_config()]
        config["sequence_batching"] = _sequence_batching(options, ["START"], states)
    else:
        config["input"] = [t.to_config() for t in inputs]
        config["output"] = [t.to_config() for t in outputs]
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.queue_delay_us}
    config["instance_group"] = _instance_group(options)
    return config


def parse_config(text: str) -> Any:
    """``config.pbtxt`` into Triton's ``ModelConfig`` protobuf (needs tritonclient[grpc]); raises on a bad one."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


# ---- the batch-major ONNX wrapper -------------------------------------------------------------------------
def batch_major_onnx(src: str | Path, dst: str | Path, spec: Any, start_input: bool = False) -> Path:
    """Write `src` (lstminfer's export: ``input`` [seq, batch, F] unless batch_first, states [S, batch, H]) as a
    graph whose inputs and outputs are all batch-major, for Triton's batching. With `start_input`, a ``START``
    input [batch, 1] (1.0 on a stream's first chunk) multiplies the incoming state by ``1 - START``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    pairs = state_pairs(spec)
    state_in = [i for i, _ in pairs]
    state_out = [o for _, o in pairs]
    names_in = {i.name for i in graph.input}
    missing = [n for n in ["input", *state_in] if n not in names_in]
    if missing:
        raise UserError(f"{src} has no input {', '.join(missing)}: export it with its state (drop --no-state)")
    swap_in = ([] if spec.batch_first else ["input"]) + state_in
    swap_out = ([] if spec.batch_first else ["output"]) + state_out
    inner = {n: f"{n}__time_major" for n in swap_in + swap_out}
    for node in graph.node:
        node.input[:] = [inner.get(n, n) for n in node.input]
        node.output[:] = [inner.get(n, n) for n in node.output]
    states = spec.num_layers * spec.num_directions
    width = {"input": spec.input_size, "output": spec.num_directions * spec.state_size,
             "h0": spec.state_size, "hn": spec.state_size, "c0": spec.hidden_size, "cn": spec.hidden_size}

    def info(name: str, dims: list) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    def dims(name: str) -> list:
        return ["batch", "seq", width[name]] if name in ("input", "output") else ["batch", states, width[name]]

    pre, post = [], []
    if start_input:
        graph.initializer.extend([numpy_helper.from_array(_np().array([2], _np().int64), "start__axes"),
                                  numpy_helper.from_array(_np().array(1.0, _np().float32), "start__one")])
        pre += [helper.make_node("Unsqueeze", ["START", "start__axes"], ["start__b11"]),
                helper.make_node("Sub", ["start__one", "start__b11"], ["start__keep"])]
    for name in swap_in:
        source = name
        if start_input and name in state_in:
            source = f"{name}__kept"
            pre.append(helper.make_node("Mul", [name, "start__keep"], [source]))
        pre.append(helper.make_node("Transpose", [source], [inner[name]], perm=[1, 0, 2]))
    for name in swap_out:
        post.append(helper.make_node("Transpose", [inner[name]], [name], perm=[1, 0, 2]))
    nodes = pre + list(graph.node) + post
    del graph.node[:]
    graph.node.extend(nodes)
    new_inputs = [info(i.name, dims(i.name)) if i.name in width else i for i in graph.input]
    if start_input:
        new_inputs.append(info("START", ["batch", 1]))
    del graph.input[:]
    graph.input.extend(new_inputs)
    new_outputs = [info(o.name, dims(o.name)) if o.name in width else o for o in graph.output]
    del graph.output[:]
    graph.output.extend(new_outputs)
    del graph.value_info[:]  # shapes inferred for the time-major names no longer hold
    onnx.checker.check_model(model)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return Path(dst)


def _np() -> Any:
    import numpy

    return numpy


# ---- writing a repository ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedModel:
    """What the Python-backend model needs to rebuild the model and its runner in Triton's stub process."""

    name: str
    model_args: dict[str, Any]  # the model argument group's values (see commands/serve.py)
    spec: dict[str, Any] | None  # ModelSpec.to_dict(); None for a model served as it is
    backend: str = "onnxruntime"
    device: str = "cpu"
    precision: str = "fp32"
    backend_options: dict[str, Any] | None = None
    with_state: bool = True

    def to_json(self, stream: bool, options: ServeOptions, batched: bool = True) -> dict[str, Any]:
        return {"name": self.name, "model_args": self.model_args, "spec": self.spec, "backend": self.backend,
                "batched": batched,
                "device": self.device, "precision": self.precision, "backend_options": self.backend_options or {},
                "with_state": self.with_state or stream, "stream": stream,
                "max_streams": options.max_streams, "idle_timeout_s": options.idle_timeout_s,
                "buckets": options.buckets}


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def write_python_models(repo: str | Path, served: ServedModel, spec: Any, options: ServeOptions,
                        onnx_path: str | Path | None = None, stream: bool | None = None,
                        tensors: ServedTensors | None = None) -> list[str]:
    """NAME (stateless) and, where the model can stream (`stream` None: when it can), NAME_stream, for the
    Python backend: batch-major for a `spec`, or as the model has them (`tensors`, with `spec` None).
    Returns the model names written."""
    repo = Path(repo)
    batched = tensors is None
    refusal = can_stream(spec)[1] if batched else tensors.stream_refusal
    if stream is None:
        stream = not refusal
    elif stream and refusal:
        raise UserError(f"cannot serve streams of {served.name}: {refusal}")
    written = []
    for is_stream in (False, True) if stream else (False,):
        name = served.name + (STREAM_SUFFIX if is_stream else "")
        if batched:
            inputs, outputs = io_tensors(spec, with_state=served.with_state)
            if is_stream:
                inputs, outputs = inputs[:1], outputs[:1]
        else:
            inputs, outputs = tensors.stream_io() if is_stream else (tensors.inputs, tensors.outputs)
        config = python_config(name, inputs, outputs, options, stream=is_stream, batched=batched)
        _write(repo / name / "config.pbtxt", to_pbtxt(config))
        version = repo / name / "1"
        _write(version / "model.py", model_py())
        desc = served.to_json(is_stream, options, batched)
        if not batched:
            desc["fixed"] = tensors.fixed
        _write(version / "lstminfer.json", json.dumps(desc, indent=2) + "\n")
        if onnx_path is not None:
            _write(version / "model.onnx", Path(onnx_path).read_bytes())
        written.append(name)
    return written


def write_stock_models(repo: str | Path, name: str, spec: Any, onnx_path: str | Path, options: ServeOptions,
                       platform: str = "onnxruntime", plan_builder: Any = None) -> list[str]:
    """NAME and NAME_stream for a stock Triton (onnxruntime or tensorrt platform). For tensorrt,
    `plan_builder(onnx_path, plan_path, spec, options, stream)` builds ``model.plan`` from the wrapper."""
    if platform not in ("onnxruntime", "tensorrt"):
        raise UserError(f"unknown platform {platform!r}: choose from {', '.join(PLATFORMS)}")
    repo = Path(repo)
    stream = can_stream(spec)[0]
    written = []
    for is_stream in (False, True) if stream else (False,):
        model_name = name + (STREAM_SUFFIX if is_stream else "")
        version = repo / model_name / "1"
        wrapper = version / "model.onnx"
        batch_major_onnx(onnx_path, wrapper, spec, start_input=is_stream)
        if platform == "tensorrt":
            plan_builder(wrapper, version / "model.plan", spec, options, is_stream)
            wrapper.unlink()
        config = stock_config(model_name, spec, options, stream=is_stream, platform=platform)
        _write(repo / model_name / "config.pbtxt", to_pbtxt(config))
        written.append(model_name)
    return written
