"""Streaming: feed a recurrent model one chunk at a time, carrying its state from each call to the next.

    sess = lstminfer.Session("vad.onnx", backend="onnxruntime", inputs={"sr": 16000})
    for chunk in chunks:                  # chunk: [batch, time, features], as the model takes it
        out = sess.step(chunk)            # the state outputs are fed back as inputs on the next call
    sess.reset()                          # zeros again; `sess.state` reads or sets it

    sess = lstminfer.Session((vad, torch.randn(1, 1, 40)), backend="fused-graph")   # a PyTorch model

State pairs (input -> output) are found by name (h0->hn, c0->cn, state->stateN, x_in->x_out, equal shapes),
are a whole model's own (its forward takes and returns the state), or are given (``state=["h0:hn"]``).  A
PyTorch model that calls its recurrent layers without state has no pairs: on the torch and fused backends
lstminfer then carries each layer's state itself.  ONNX Runtime is stateless (docs/files.md), so the state
lives in the engine (measure/stream_engines.py): OrtValues bound with I/O binding, torch tensors on the
device (updated in place, so a CUDA graph replays the whole step), or host arrays for any other backend.
A bidirectional or reverse layer cannot stream (it needs the future): refused up front.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.measure.stream_engines import (
    MODULE_BACKENDS,
    ORT_BACKENDS,
    ModuleEngine,
    OrtEngine,
    RunnerEngine,
    ScriptEngine,
)
from lstminfer.measure.stream_resident import RESIDENT, ResidentEngine
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module, spec_of_module
from lstminfer.model.whole import WholeModel, whole_model


def _as_model(source: Any, shapes: Any, inputs: dict[str, Any] | None, onnx: Any) -> Model:
    if isinstance(source, Model):
        return source
    if isinstance(source, ModelSpec):
        return Model(name=source.describe(), spec=source, module=build_module(source), seq_len=1, batch=1)
    module, example = source if isinstance(source, tuple) and len(source) == 2 else (source, None)
    if hasattr(module, "named_modules"):  # a PyTorch module (torch is imported already)
        import torch

        module = module.float().eval()
        if type(module) in (torch.nn.LSTM, torch.nn.GRU) and example is None and not shapes:
            return _stateless(type(module).__name__, module)
        return whole_model(module, example, name=type(module).__name__, shapes=shapes)
    if isinstance(source, (str, Path)):
        from lstminfer.model.file import load_model_file

        scalars = {k: v for k, v in (inputs or {}).items() if np.ndim(v) == 0}
        arrays = {k: np.asarray(v) for k, v in (inputs or {}).items() if np.ndim(v) > 0}
        # The chunk sizes the sequence and batch dims at each step: nothing to check up front.
        model = load_model_file(source, shapes=shapes, values=scalars, onnx=onnx, validate=False)
        model.arrays.update(arrays)
        return model
    raise UserError(f"Session takes an ONNX or TorchScript path, a ModelSpec, a Model, an nn.Module or (module, "
                    f"example_inputs), not {type(source).__name__}")


def state_pairs_of(model: Model, given: Any = None) -> list[tuple[str, str]]:
    """(input, output) pairs: given, else the model's own (a file's found by name, a spec's h0->hn (, c0->cn))."""
    from lstminfer.onnx.inspect import parse_state

    if given:
        return [(p.input, p.output) for p in parse_state(given, model.input_names, model.output_names or None)]
    return [(p.input, p.output) for p in model.state_pairs]


def stream_model(ref: str, weights: str | None = None, shapes: str | None = None, dynamic: str | None = None) -> Model:
    """``lstminfer stream --model``: a whole model, or a module built around one recurrent stack, called
    without state (the session carries it)."""
    from lstminfer.model.whole import module_or_whole

    module = module_or_whole(ref, weights, shapes=shapes, dynamic=dynamic)
    return module if isinstance(module, Model) else _stateless(ref, module)


def _stateless(name: str, module: Any) -> Model:
    """A module built around one recurrent stack, called without state: the session carries it (a ModelSpec
    source feeds h0/c0 instead)."""
    return Model(name=name, spec=spec_of_module(module), module=module, with_state=False)


def refuse_unstreamable(model: Model) -> None:
    """A bidirectional (or reverse) recurrence reads the whole sequence: chunks would change its output."""
    why = model.stream_refusal()
    if why:
        raise UserError(f"cannot stream {model.name}: {why}; run whole sequences with `lstminfer verify` / `bench` "
                        "instead")


class Session:
    """A recurrent model run chunk by chunk, its state carried between calls (see the module docstring).

    source: an ONNX or TorchScript path, a ModelSpec (built with seed 0), a Model, an nn.Module (with
    ``shapes=`` unless it is a plain nn.LSTM / nn.GRU) or ``(module, example_inputs)``.  backend: torch,
    torch-graph, fused, fused-graph, fused-resident (a plain nn.LSTM / nn.GRU on CUDA: measure/stream_resident.py),
    torchscript, onnxruntime, onnxruntime-cuda, or any registered backend
    (state then makes a host round trip); device: by default the backend's first device available here.
    inputs: fixed values for extra inputs (e.g. {"sr": 16000}); step() keyword arguments override them per
    call.  state: "in:out" pairs when the names do not show them.  shapes: trtexec-style ``name:AxB`` for
    state dims the chunk does not determine (a PyTorch module: its example inputs).
    """

    def __init__(self, source: Any, backend: str = "onnxruntime", *, device: str | None = None,
                 state: Any = None, inputs: dict[str, Any] | None = None, shapes: Any = None,
                 onnx: str | Path | None = None, precision: str = "fp32"):
        self.model = _as_model(source, shapes, inputs, onnx)
        refuse_unstreamable(self.model)
        self.backend = backend
        self.device = device or _default_device(backend)
        self.pairs = state_pairs_of(self.model, state)
        # a PyTorch model that calls its recurrent layers without state: lstminfer carries it
        self.carried = (not self.pairs and self.model.module is not None
                        and (backend in MODULE_BACKENDS or backend == RESIDENT))
        if not self.pairs and not self.carried:
            outputs = ", ".join(self.model.output_names) or "named once it has run"
            hint = "; or stream its PyTorch module on torch or fused" if self.model.module is not None else ""
            misses = "".join(f"; {m}" for m in self.model.state_pair_misses)
            raise UserError(f"found no recurrent state in {self.model.name} (inputs "
                            f"{', '.join(self.model.input_names)}; outputs {outputs}{misses}): give the pairs with "
                            f"--state IN:OUT{hint}")
        self.state_inputs = [i for i, _ in self.pairs]
        self.fixed = dict(inputs or {})
        free = [n for n in self.model.input_names if n not in self.state_inputs and n not in self.fixed]
        if not free:
            raise UserError(f"no input is left for the chunk: {', '.join(self.model.input_names)} are all state or "
                            "fixed inputs")
        self.chunk_input = free[0]
        self.other_inputs = free[1:]
        self._engine = _engine_for(self, precision)
        if self.carried:
            self.state_inputs = self._engine.state_names
        self._state: dict[str, Any] | None = None
        self._dtypes: dict[str, Any] | None = None

    # ---- the state ----------------------------------------------------------------------------------
    def _zero_state(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        model = self.model
        if self.carried:
            return self._engine.zero_state(self.chunk_batch(chunk))
        if model.spec is not None:
            shapes = model.spec.shapes(1, self.chunk_batch(chunk))
            return {n: np.zeros(shapes[n], np.float32) for n in self.state_inputs}
        if isinstance(model, WholeModel):
            shapes = model.input_shapes(1, self.chunk_batch(chunk))
            return {n: np.zeros(shapes[n], model.example[n].dtype) for n in self.state_inputs}
        info = {i.name: i for i in model.inputs}
        chunk_info = info[self.chunk_input]
        bindings = dict(model.bindings)
        if chunk_info.dims is not None and len(chunk_info.dims) == chunk.ndim:
            for d, size in zip(chunk_info.dims, chunk.shape):
                if isinstance(d, str):
                    bindings[d] = size
        out = {}
        for name in self.state_inputs:
            if name in model.arrays:
                out[name] = np.array(model.arrays[name])
                continue
            if name in model.shapes:
                out[name] = np.zeros(model.shapes[name], np.dtype(info[name].dtype))
                continue
            dims = info[name].dims
            unset = [f"dim {a} ({d})" for a, d in enumerate(dims or []) if isinstance(d, str) and d not in bindings]
            if dims is None or unset:
                raise UserError(f"cannot size the initial state {name!r}: {', '.join(unset) or 'no shape'} not set by "
                                f"the chunk; give it with --shapes {name}:AxB")
            shape = tuple(d if isinstance(d, int) else bindings[d] for d in dims)
            out[name] = np.zeros(shape, np.dtype(info[name].dtype))
        return out

    def chunk_batch(self, chunk: np.ndarray) -> int:
        """The batch size of a chunk of a PyTorch model (spec or whole): streams side by side."""
        if self.model.spec is not None:
            return chunk.shape[0] if self.model.spec.batch_first else chunk.shape[1]
        axis = self.model.axes("batch").get(self.chunk_input)
        return chunk.shape[axis] if axis is not None else 1

    @property
    def state(self) -> dict[str, np.ndarray] | None:
        """The state that the next step() feeds in, as host arrays of the caller's own (None before the first
        step): a copy, since an engine may update its state in place (torch on a CPU: the numpy view of its
        buffers), and a kept state (the server's per stream) must not change with the next step."""
        if self._state is None:
            return None
        return {n: np.array(self._engine.to_host(v)) for n, v in self._state.items()}

    @state.setter
    def state(self, value: dict[str, np.ndarray] | None) -> None:
        if value is None:
            self._state = None
            return
        unknown = sorted(set(value) - set(self.state_inputs))
        missing = sorted(set(self.state_inputs) - set(value))
        if unknown or missing:
            raise UserError(f"state must have exactly {', '.join(self.state_inputs)} "
                            f"(unknown: {', '.join(unknown) or '-'}; missing: {', '.join(missing) or '-'})")
        self._state = {n: self._engine.to_device(np.asarray(v)) for n, v in value.items()}

    def reset(self) -> None:
        """Start a new stream: the next step() begins from a zero state."""
        self._state = None

    # ---- one chunk --------------------------------------------------------------------------------------
    def step(self, chunk: Any, **extra: Any) -> dict[str, np.ndarray]:
        """Run one chunk; returns every non-state output as a host array (the caller's to keep: a later step
        does not change it).  The state outputs become the state inputs of the next call."""
        if extra or self.fixed or self.other_inputs:
            feeds = self._feeds(chunk, extra)
        else:  # the chunk alone, the common stream: one dtype check, no per-call dict building beyond this one
            feeds = {self.chunk_input: np.asarray(chunk, dtype=self._dtype(self.chunk_input, chunk))}
        if self._state is None:
            self.state = self._zero_state(feeds[self.chunk_input])
        outputs, self._state = self._engine.run(feeds, self._state)
        return outputs

    def _feeds(self, chunk: Any, extra: dict[str, Any]) -> dict[str, np.ndarray]:
        """The chunk, the fixed inputs and this call's extra ones, checked and in the model's dtypes."""
        unknown = sorted(set(extra) - set(self.model.input_names)) if extra else []
        if unknown:
            raise UserError(f"step(): the model has no input {', '.join(unknown)} "
                            f"(inputs: {', '.join(self.model.input_names)})")
        feeds = {**self.fixed, **extra, self.chunk_input: chunk}
        missing = [n for n in self.other_inputs if n not in feeds]
        if missing:
            raise UserError(f"step(): give {', '.join(missing)} as keyword arguments or in Session(inputs=...)")
        return {n: np.asarray(v, dtype=self._dtype(n, v)) for n, v in feeds.items()}

    def _dtype(self, name: str, value: Any) -> Any:
        if self._dtypes is None:  # read once: a step of a small model takes microseconds
            self._dtypes = {i.name: np.dtype(i.dtype) for i in self.model.inputs}
        if name in self._dtypes:
            return self._dtypes[name]
        return np.asarray(value).dtype if np.asarray(value).dtype.kind != "f" else np.float32

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()




def _default_device(backend: str) -> str:
    """The backend's first device that is available here (cpu when none is)."""
    from lstminfer.backends.base import runner_class

    if backend == RESIDENT:  # stream-only, not in the registry; CUDA only (its engine says so elsewhere)
        return "cuda"

    cls = runner_class(backend)
    return next((d for d in cls.devices if cls.available(d)[0]), cls.devices[0])


def _engine_for(session: Session, precision: str) -> Any:
    name = session.backend
    model = session.model
    if name == RESIDENT:
        return ResidentEngine(session, precision)
    if name in ORT_BACKENDS:
        if model.onnx_path is None:
            if model.module is None:
                raise UserError(f"backend {name} needs an ONNX file: give --onnx FILE.onnx with a TorchScript file")
            from lstminfer.onnx.export import export_model

            session._tmp = tempfile.TemporaryDirectory(prefix="lstminfer-session-")
            export_model(model, Path(session._tmp.name) / "model.onnx")
        return OrtEngine(session, *ORT_BACKENDS[name])
    if name == "torchscript":
        return ScriptEngine(session)
    if name in MODULE_BACKENDS and model.module is not None:
        return ModuleEngine(session, name, precision, session.carried)
    return RunnerEngine(session, name, precision)


# ---- timing a stream (lstminfer stream) --------------------------------------------------------------------------
def chunk_layout(session: Session, chunk: int, seq_axis: int | None = None) -> tuple[int, int, tuple[int, ...]]:
    """(sequence axis, batch axis or -1, a chunk's shape) of the session's chunk input.  `seq_axis`
    (``--seq-axis``) names the sequence axis where the model's dims do not (unnamed or fixed dims)."""
    model, name = session.model, session.chunk_input
    if model.spec is not None:
        seq, batch = (1, 0) if model.spec.batch_first else (0, 1)
        return seq, batch, model.spec.shapes(chunk, 1)["input"]
    if isinstance(model, WholeModel):
        seq = seq_axis if seq_axis is not None else model.axes("seq").get(name)
        if seq is None:
            raise UserError(f"{model.name} has no sequence axis on {name}: give it with --seq-axis {name}:AXIS "
                            f"(or --dynamic {name}:AXIS=seq)")
        return seq, model.axes("batch").get(name, -1), model.input_shapes(chunk, 1)[name]
    info = {i.name: i for i in model.inputs}[name]
    given = model.shapes.get(name)
    hint = f"give it with --seq-axis {name}:AXIS and one chunk's shape with --shapes {name}:AxBxC"
    if info.dims is None:  # TorchScript without --onnx: the chunk's shape comes from --shapes
        if given is None or (seq_axis is None and chunk not in given):
            raise UserError(f"the chunk input {name!r} has no shape in the file: {hint}")
        return (seq_axis if seq_axis is not None else given.index(chunk)), -1, given
    roles = model.roles
    seq = seq_axis if seq_axis is not None else next((a for a, d in enumerate(info.dims) if roles.get(d) == "seq"),
                                                     None)
    batch = next((a for a, d in enumerate(info.dims) if roles.get(d) == "batch" and a != seq), -1)
    if seq is None:
        raise UserError(f"cannot tell which axis of {name} {info.shape_text} is the sequence: {hint}")
    if isinstance(info.dims[seq], int) and info.dims[seq] != chunk:
        raise UserError(f"{name} axis {seq} (the sequence) is fixed at {info.dims[seq]} in the graph: use --chunk "
                        f"{info.dims[seq]}")
    shape = []
    for axis, dim in enumerate(info.dims):
        if given is not None:
            shape.append(given[axis])
        elif isinstance(dim, int):
            shape.append(dim)
        elif dim in model.bindings:
            shape.append(model.bindings[dim])
        elif axis in (seq, batch):
            shape.append(1)
        else:
            raise UserError(f"{name} dim {axis} ({dim}) is unset: give it with --shapes {name}:AxBxC")
    return seq, batch, tuple(shape)


def parse_seq_axis(text: str | None, session: Session) -> int | None:
    """``--seq-axis INPUT:AXIS`` -> AXIS, checked against the chunk input's rank."""
    if not text:
        return None
    name, _, axis = text.rpartition(":")
    if name != session.chunk_input or not axis.lstrip("-").isdigit():
        raise UserError(f"--seq-axis {text!r}: expected {session.chunk_input}:AXIS (the chunk goes to input "
                        f"{session.chunk_input!r})")
    dims = {i.name: i for i in session.model.inputs}[name].dims
    rank = len(dims) if dims is not None else len(session.model.shapes.get(name, ()))
    if rank and not -rank <= int(axis) < rank:
        raise UserError(f"--seq-axis {text}: {name} has {rank} axes (0..{rank - 1})")
    return int(axis) % rank if rank else int(axis)


def stream_one(session: Session, chunk: int, chunks: int, warmup: int, batch: int, chunk_ms: float | None,
               rng: np.random.Generator, seq_axis: int | None = None) -> dict[str, Any]:
    """Time `chunks` consecutive steps of one stream (after `warmup` untimed ones); host clock per step.
    `batch` streams run side by side on the chunk's batch axis."""
    from lstminfer.measure.stats import summarize

    seq, batch_axis, shape = chunk_layout(session, chunk, seq_axis)
    shape = list(shape)
    shape[seq] = chunk
    if batch_axis >= 0:
        shape[batch_axis] = batch
    elif batch > 1:
        raise UserError(f"--batch {batch}: the chunk input {session.chunk_input} has no batch axis")
    dtype = np.dtype({i.name: i for i in session.model.inputs}[session.chunk_input].dtype)
    data = [rng.standard_normal(shape).astype(dtype) for _ in range(min(chunks, 8))]
    for i in range(warmup):
        session.step(data[i % len(data)])
    session.reset()
    times = []
    for i in range(chunks):
        t0 = time.perf_counter()
        session.step(data[i % len(data)])
        times.append((time.perf_counter() - t0) * 1000.0)
    summary = summarize(times)
    state = [f"{i}:{o}" for i, o in session.pairs] or [f"{n} (carried)" for n in session.state_inputs]
    rec = {"chunk": chunk, "chunks": chunks, "batch": batch, "chunk_shape": shape, "clock": "host",
           "latency_ms": summary.to_dict(), "times_ms": times, "state": state}
    if chunk_ms:
        rec["chunk_ms"] = chunk_ms
        rec["real_time_factor"] = summary.median / chunk_ms  # < 1: faster than real time
        rec["real_time_factor_p99"] = summary.p99 / chunk_ms
    return rec
