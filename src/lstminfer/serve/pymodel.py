"""The model Triton's Python backend runs: any lstminfer backend behind Triton's batchers.

Triton hands ``execute`` a list of requests (several clients' under the dynamic batcher, several streams'
chunks under the sequence batcher's ``oldest`` strategy). Requests whose chunks have the same length are
stacked on the batch axis and run as one call of the backend's Runner, so a GPU backend (fused-graph, say)
sees one batch; the results are split back per request. A request that cannot run gets its own error
response; the others in the batch are answered normally.

Streams: the sequence batcher routes every chunk of a stream to this instance, with START on the first
and END on the last. The state is kept here, per correlation id, in a bounded store whose idle timeout is the
batcher's (``state.py``), as batch-major host arrays: the Runner interface takes and returns host arrays.

Batch buckets: a GPU backend specialises on the batch size (fused-graph and torch-graph capture a CUDA graph
per input shape, the CUDA persistent kernel compiles an NVRTC module per size: about 0.5 s each on an H200),
so on a GPU the stacked rows are padded with zero rows up to the next bucket (1, 2, 4, ... up to the most
rows an execution can hold) and every bucket is run once when the model loads; the answers are sliced
back. The batcher then never puts a first-time size on the request path. ``--batch-buckets on/off``
overrides (the repository's ``lstminfer.json`` carries it).

``Handler`` holds the logic and is tested without Triton; ``TritonPythonModel`` adapts it to
``triton_python_backend_utils``.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstminfer.serve.state import StreamStore, UnknownStream


class RequestError(Exception):
    """This request (only) cannot run; the message goes back to its client."""


@dataclass
class StreamChunk:
    sequence_id: Any
    start: bool
    end: bool
    input: Any  # [rows, seq, features], batch-major


def rebuild_model(desc: dict[str, Any]) -> Any:
    """The model from a repository's ``lstminfer.json``: the model flags' values, as the command had them."""
    import argparse

    from lstminfer.commands.args import model_from_args

    return model_from_args(argparse.Namespace(**desc["model_args"]))


def build_runner(desc: dict[str, Any], version_dir: Path) -> tuple[Any, Any]:
    """(model, prepared Runner) from a repository's ``lstminfer.json``: the model argument group's values
    rebuild the model exactly as the serving command built it (same seed, same weights, same file)."""
    import dataclasses

    from lstminfer.backends.base import runner_class, select_backends

    model = rebuild_model(desc)
    if desc.get("with_state") and not model.with_state:
        model = dataclasses.replace(model, with_state=True)  # streams carry the state even with --no-state
    onnx_path = version_dir / "model.onnx"
    if onnx_path.is_file():
        model.onnx_path = onnx_path
    select_backends([f"{desc['backend']}:{desc['device'].split(':')[0]}"])
    runner = runner_class(desc["backend"])(model, device=desc["device"].split(":")[0], precision=desc["precision"],
                                           **(desc.get("backend_options") or {}))
    runner.prepare()
    return model, runner


def bucket_sizes(limit: int) -> tuple[int, ...]:
    """The batch buckets up to `limit` rows: the powers of two below it, then `limit` itself."""
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)


def bucket_for(rows: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `rows` (`rows` itself when none does, or without buckets)."""
    return next((b for b in buckets if b >= rows), rows)


PROFILE_ENV = "LSTMINFER_SERVE_PROFILE"  # 1: the execute profile; 2: also the backend called again at once


def process_facts(runner: Any) -> str:
    """What the served process runs with, for the log: its CPUs, its OS threads, the thread settings the
    backends read (OMP/MKL variables, torch's pools) and the runner's own facts (ORT's intra-op threads).
    A backend 2-3x slower in the stub than alone was first suspected of over-subscription; this line shows
    whether the stub's process differs from a benchmark's (docs/serving.md, "Why the backend is slower")."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = []
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = -1
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}
    torch_threads = ""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch_threads = f", torch intra-op {torch.get_num_threads()} inter-op {torch.get_num_interop_threads()}"
    try:
        described = runner.describe()
    except Exception as err:  # noqa: BLE001 - a facts line must not stop the model loading
        described = {"describe": f"{type(err).__name__}: {err}"}
    return (f"process {os.getpid()}: cpus {','.join(map(str, cpus)) or '?'}, {threads} OS threads, env "
            f"{env or 'no OMP/MKL variables'}{torch_threads}, backend {described}")


class Profile:
    """Where an execution's time goes, when the server runs with ``LSTMINFER_SERVE_PROFILE=1``: the seconds of
    each piece of every ``execute`` (the tensors out of the stub, the Handler, within it the backend's own
    call, the answers back to the stub; with ``LSTMINFER_SERVE_PROFILE=2`` also ``again``: the backend called a
    second time at once on the same inputs, a back-to-back call inside the stub), kept per size class of the
    execution (1 request, 2-3, 4-7, ...: a load test's concurrency level shows as its class) and logged at
    unload, one line a class, beside which
    Triton's own statistics read (its ``compute_infer`` is the whole execute plus the stub's round trip). At
    most `keep` samples a piece and class (the latest), so a long run holds bounded memory."""

    PIECES = ("inputs", "handler", "backend", "again", "outputs", "execute")

    def __init__(self, keep: int = 20_000):
        self.keep = keep
        self.samples: dict[int, dict[str, list[float]]] = {}
        self.counts: dict[int, list[int]] = {}  # class -> [executions, requests]

    def add(self, requests: int, times: dict[str, float]) -> None:
        """One execution of `requests` requests: piece -> seconds."""
        size = 1 << (requests.bit_length() - 1)
        samples = self.samples.setdefault(size, {piece: [] for piece in self.PIECES})
        for piece, seconds in times.items():
            kept = samples[piece]
            if len(kept) >= self.keep:
                del kept[: self.keep // 2]
            kept.append(seconds)
        counts = self.counts.setdefault(size, [0, 0])
        counts[0] += 1
        counts[1] += requests

    def summary(self) -> list[str]:
        """One line per size class: executions, requests each, and per piece the median microseconds of an
        execution and that over the mean requests of one (Triton's statistics are per request)."""
        import statistics

        lines = []
        for size in sorted(self.samples):
            executions, requests = self.counts[size]
            each = requests / executions
            parts = [f"{piece} {statistics.median(kept) * 1e6:.0f} ({statistics.median(kept) * 1e6 / each:.0f})"
                     for piece, kept in self.samples[size].items() if kept]
            lines.append(f"profile: executions of {size}-{2 * size - 1} requests: {executions}, {each:.1f} requests "
                         f"each; median us an execution (a request): {', '.join(parts)}")
        return lines or ["profile: no execution"]


class Handler:
    """Stateless requests and stream chunks through one Runner. Arrays are batch-major numpy arrays.

    `buckets`: pad each backend call's rows up to the next of these sizes (``bucket_sizes``); empty: no padding.
    """

    def __init__(self, spec: Any, runner: Any, *, stream: bool, max_streams: int = 64,
                 idle_timeout_s: float = 60.0, with_state: bool = True, buckets: tuple[int, ...] = ()):
        import numpy as np

        self.np = np
        self.buckets = tuple(buckets)
        self.spec = spec
        self.runner = runner
        self.stream = stream
        self.with_state = with_state or stream
        self.state_in = ["h0", "c0"] if spec.kind == "lstm" else ["h0"]
        self.state_out = ["hn", "cn"] if spec.kind == "lstm" else ["hn"]
        self.store = StreamStore(max_streams, idle_timeout_s) if stream else None
        self.profile: Profile | None = None  # set by TritonPythonModel under LSTMINFER_SERVE_PROFILE=1
        self.backend_s = 0.0  # with a profile: the Runner's time since the profile last took it
        self.again: bool = False  # LSTMINFER_SERVE_PROFILE=2: each call repeated at once, timed apart (diagnosis)
        self.again_s = 0.0

    # ---- layout: Triton's tensors are batch-major; the Runner takes the model's own layout ------------------
    def _stacked(self, name: str, parts: list[Any], padding: int) -> Any:
        """The requests' arrays of one input stacked on the batch axis (and `padding` zero rows), in the model's
        layout: one copy, whatever the number of requests (transposed views concatenated)."""
        np = self.np
        if padding:
            parts = [*parts, np.zeros((padding, *parts[0].shape[1:]), parts[0].dtype)]
        if name == "input" and self.spec.batch_first:
            return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis=0)
        if len(parts) == 1:
            return np.ascontiguousarray(parts[0].transpose(1, 0, 2))
        return np.concatenate([part.transpose(1, 0, 2) for part in parts], axis=1)

    def _batch_major(self, name: str, array: Any, rows: int) -> Any:
        """A Runner's output, its first `rows` rows (the rest is padding, never copied), batch-major float32."""
        np = self.np
        if name == "output" and self.spec.batch_first:
            return np.ascontiguousarray(array[:rows], dtype=np.float32)
        return np.ascontiguousarray(array[:, :rows].transpose(1, 0, 2), dtype=np.float32)

    def _run(self, feeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One Runner call for requests of equal chunk length: stacked on the batch axis, split after (views of
        one batch-major array per output, no copy per request)."""
        rows = [f["input"].shape[0] for f in feeds]
        total = sum(rows)
        padding = bucket_for(total, self.buckets) - total  # zero rows: each row runs independently of the others
        inputs = {name: self._stacked(name, [f[name] for f in feeds], padding) for name in feeds[0]}
        if self.profile is None:
            answers = self.runner.infer(inputs)
        else:
            begin = time.perf_counter()
            answers = self.runner.infer(inputs)
            self.backend_s += time.perf_counter() - begin
            if self.again:  # the same call back-to-back: what a tight loop alone measures, here in the stub
                begin = time.perf_counter()
                self.runner.infer(inputs)
                self.again_s += time.perf_counter() - begin
        outputs = {name: self._batch_major(name, value, total) for name, value in answers.items()}
        if len(feeds) == 1:
            return [outputs]
        ends = list(itertools.accumulate(rows))
        return [{name: value[end - count:end] for name, value in outputs.items()} for count, end in zip(rows, ends)]

    def warm_up(self, seq_len: int) -> tuple[float, str]:
        """Run every bucket once at `seq_len` steps (what a graph backend captures, what a kernel compiles),
        so no request pays for it. Returns (seconds, "" or why the buckets stop early): a bucket the backend
        refuses (a TensorRT profile's largest batch, memory) and those above it are dropped, so rows past the
        last good bucket run unpadded, as they would have without buckets."""
        np = self.np
        begin = time.perf_counter()
        for index, rows in enumerate(self.buckets):
            feeds = {"input": np.zeros((rows, seq_len, self.spec.input_size), np.float32),
                     **(self.zero_state(rows) if self.with_state else {})}
            try:
                self._run([feeds])
            except Exception as err:  # noqa: BLE001 - any backend's refusal: serve without this bucket
                self.buckets = self.buckets[:index]
                return time.perf_counter() - begin, f"{rows} rows failed ({type(err).__name__}: {err}): buckets " \
                    f"stop at {self.buckets[-1] if self.buckets else 'none'}"
        return time.perf_counter() - begin, ""

    def _check(self, name: str, array: Any, rows: int | None = None) -> None:
        if array.ndim != 3:
            raise RequestError(f"{name} must be 3-D [batch, ...], got shape {list(array.shape)}")
        if rows is not None and array.shape[0] != rows:
            raise RequestError(f"{name} has {array.shape[0]} rows, the stream started with {rows}")

    def _grouped(self, items: list[tuple[int, dict[str, Any]]]) -> dict[int, Any]:
        """Run (index, feeds) pairs grouped by chunk length; index -> outputs or the error."""
        groups: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for index, feeds in items:
            groups.setdefault(feeds["input"].shape[1], []).append((index, feeds))
        results: dict[int, Any] = {}
        for members in groups.values():
            try:
                outs = self._run([f for _, f in members])
            except Exception as err:  # the backend refused this group: each of its requests learns why
                error = RequestError(f"the {self.runner.name} backend failed: {type(err).__name__}: {err}")
                outs = [error] * len(members)
            for (index, _), out in zip(members, outs):
                results[index] = out
        return results

    # ---- stateless: the state in and out explicitly ---------------------------------------------------------
    def infer(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Each request: {input, h0(, c0)} -> {output, hn(, cn)}, or a RequestError."""
        items, results = [], {}
        for index, feeds in enumerate(requests):
            try:
                for name, array in feeds.items():
                    self._check(name, array)
                items.append((index, feeds))
            except RequestError as err:
                results[index] = err
        results.update(self._grouped(items))
        return [results[i] for i in range(len(requests))]

    # ---- streams: the state kept here --------------------------------------------------------------------
    def zero_state(self, rows: int) -> dict[str, Any]:
        states = self.spec.num_layers * self.spec.num_directions
        width = {"h0": self.spec.state_size, "c0": self.spec.hidden_size}
        return {n: self.np.zeros((rows, states, width[n]), self.np.float32) for n in self.state_in}

    def step(self, chunks: list[StreamChunk]) -> list[Any]:
        """Each chunk -> {output} or a RequestError. Two chunks of one stream in a call run in order."""
        results: dict[int, Any] = {}
        pending = list(enumerate(chunks))
        while pending:  # the sequence batcher sends one chunk per stream at a time; this keeps order if not
            seen, now, later = set(), [], []
            for index, chunk in pending:
                (later if chunk.sequence_id in seen else now).append((index, chunk))
                seen.add(chunk.sequence_id)
            results.update(self._step_once(now))
            pending = later
        return [results[i] for i in range(len(chunks))]

    def _step_once(self, chunks: list[tuple[int, StreamChunk]]) -> dict[int, Any]:
        results: dict[int, Any] = {}
        items = []
        for index, chunk in chunks:
            try:
                self._check("input", chunk.input)
                if chunk.start:
                    state = self.zero_state(chunk.input.shape[0])
                else:
                    try:
                        state = self.store.get(chunk.sequence_id)
                    except UnknownStream:
                        raise RequestError(
                            f"sequence {chunk.sequence_id} has no state here: it never started, it ended, or it "
                            f"was idle for more than {self.store.idle_timeout_s:g} s; send its first chunk with "
                            "START") from None
                    self._check("input", chunk.input, rows=state["h0"].shape[0])
                items.append((index, {"input": chunk.input, **state}))
            except RequestError as err:
                results[index] = err
        outs = self._grouped(items)
        by_index = dict(chunks)
        for index, out in outs.items():
            chunk = by_index[index]
            if isinstance(out, Exception):
                results[index] = out
                continue
            new_state = {i: out[o] for i, o in zip(self.state_in, self.state_out)}
            try:
                if chunk.end:
                    self.store.end(chunk.sequence_id)
                elif chunk.start:
                    self.store.start(chunk.sequence_id, new_state)
                else:
                    self.store.put(chunk.sequence_id, new_state)
            except UnknownStream:
                results[index] = RequestError(f"sequence {chunk.sequence_id} expired while its chunk ran; restart "
                                              "it with START")
                continue
            results[index] = {"output": out["output"]}
        return results


@dataclass
class FeedsChunk:
    """A stream chunk of a model served as it is: every non-state input the client sent."""

    sequence_id: Any
    start: bool
    end: bool
    feeds: dict[str, Any]


class UnbatchedHandler:
    """A model without a ModelSpec (a user's file, a whole model), served as it is: one request, one backend
    call; streams through one ``lstminfer.Session`` whose state is swapped in and out per sequence id (the
    Session knows how to size a file's zero state from the chunk and which inputs are the chunk's)."""

    def __init__(self, model: Any, *, stream: bool, backend: str, device: str, precision: str,
                 backend_options: dict[str, Any], fixed: dict[str, Any], outputs: dict[str, str],
                 ranks: dict[str, int], max_streams: int = 64, idle_timeout_s: float = 60.0):
        import numpy as np

        self.np = np
        self.stream = stream
        self.outputs = outputs  # name -> numpy dtype the config declares
        self.ranks = ranks  # input name -> the model's rank (0: a scalar, sent as [1])
        dtypes = {i.name: i.dtype for i in model.inputs}
        self.fixed = {n: np.asarray(v, dtype=dtypes.get(n)) for n, v in fixed.items()}
        if stream:
            from lstminfer.measure.stream import Session

            self.session = Session(model, backend=backend, device=device, precision=precision, inputs=self.fixed)
            self.runner = None
            self.store = StreamStore(max_streams, idle_timeout_s)
        else:
            from lstminfer.backends.base import runner_class

            self.runner = runner_class(backend)(model, device=device, precision=precision, **backend_options)
            self.runner.prepare()
            self.session = self.store = None

    def _model_feeds(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return {n: a.reshape(()) if self.ranks.get(n) == 0 else a for n, a in feeds.items()}

    def _answer(self, values: dict[str, Any]) -> dict[str, Any]:
        np = self.np
        return {n: np.asarray(values[n], dtype=dtype).reshape(np.shape(values[n]) or (1,))
                for n, dtype in self.outputs.items() if n in values}

    def infer(self, requests: list[dict[str, Any]]) -> list[Any]:
        results = []
        for feeds in requests:
            try:
                values = self.runner.infer({**self.fixed, **self._model_feeds(feeds)})
                results.append(self._answer(values))
            except Exception as err:  # this request's error only
                results.append(RequestError(f"the {self.runner.name} backend failed: {type(err).__name__}: {err}"))
        return results

    def step(self, chunks: list[FeedsChunk]) -> list[Any]:
        results = []
        for chunk in chunks:  # one at a time: the Session holds one stream's state while it runs
            try:
                results.append(self._step_one(chunk))
            except RequestError as err:
                results.append(err)
            except Exception as err:
                results.append(RequestError(f"the {self.session.backend} backend failed: {type(err).__name__}: "
                                            f"{err}"))
        return results

    def _step_one(self, chunk: FeedsChunk) -> dict[str, Any]:
        session = self.session
        if chunk.start:
            session.state = None  # step() starts from the zero state the chunk sizes
        else:
            try:
                session.state = self.store.get(chunk.sequence_id)
            except UnknownStream:
                raise RequestError(
                    f"sequence {chunk.sequence_id} has no state here: it never started, it ended, or it was idle "
                    f"for more than {self.store.idle_timeout_s:g} s; send its first chunk with START") from None
        feeds = self._model_feeds(chunk.feeds)
        values = session.step(feeds.pop(session.chunk_input), **feeds)
        if chunk.end:
            self.store.end(chunk.sequence_id)
        elif chunk.start:
            self.store.start(chunk.sequence_id, session.state)
        else:
            self.store.put(chunk.sequence_id, session.state)
        return self._answer(values)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        if self.session is not None:
            self.session.close()


@functools.cache
def _numpy_2() -> bool:
    import numpy as np

    return int(np.__version__.split(".")[0]) >= 2


def _as_array(tensor: Any) -> Any:
    """A request's tensor as a numpy array (zero-copy).

    Under numpy 2 through DLPack, not the stub's ``as_numpy`` / ``Tensor(name, array)``: the bundled stub's
    pybind11 was built for numpy 1 and reads numpy 2's dtype layout wrong (an fp32 answer came back with 0
    bytes under numpy 2.4), while DLPack does not depend on numpy's C structures. Under numpy 1 the stub's own
    way (numpy 1.26's DLPack capsules and the stub's do not agree: "PyCapsule_GetPointer called with incorrect
    name"). A dtype DLPack lacks (strings) takes the stub's way too.
    """
    if _numpy_2():
        import numpy as np

        try:
            return np.from_dlpack(tensor)
        except (BufferError, TypeError, ValueError, RuntimeError):
            pass
    return tensor.as_numpy()


_ANSWER_WAY: list[str] = []  # the way answers go, once the first answer has gone that way


@functools.cache
def _answer_way() -> str:
    """How this process hands answers to the stub, decided once (never per answer).

    - numpy 1: the stub's own ``Tensor(name, array)`` (its pybind11 was built for numpy 1).
    - numpy 2: that way answers fp32 tensors with 0 bytes (the stub reads numpy 2's dtype layout wrong), so
      through DLPack, with a capsule PyTorch made. ``Tensor.from_dlpack`` takes the capsule and renames it
      "used_dlpack"; a capsule numpy made then fails numpy's own destructor, which expects the standard
      "used_dltensor" and writes a traceback to the server log for every answer ("PyCapsule_GetPointer
      called with incorrect name": 56,472 of them in the first H200 run, likely most of the time spent in the
      server). PyTorch's destructor leaves a capsule alone once its name is no longer "dltensor". torch is
      a dependency of lstminfer; without it (or if the first answer fails that way: ``_output``), numpy's
      capsule (correct answers, a noisy log).
    """
    if not _numpy_2():
        return "stub"
    try:
        import torch.utils.dlpack  # noqa: F401
    except ImportError:
        return "numpy-dlpack"
    return "torch-dlpack"


def _torch_capsule(array: Any) -> Any:
    import torch.utils.dlpack

    if not array.flags.writeable:  # torch.from_numpy warns on a read-only array
        array = array.copy()
    return torch.utils.dlpack.to_dlpack(torch.from_numpy(array))


def _output(pb_utils: Any, name: str, array: Any) -> Any:
    """An answer's tensor, the way ``_answer_way`` chose. Strings take the stub's way (DLPack has none).
    Only the first answer may fall back from PyTorch's capsule to numpy's (said once in the log)."""
    import numpy as np

    array = np.ascontiguousarray(array)
    way = _ANSWER_WAY[0] if _ANSWER_WAY else _answer_way()
    if way == "stub" or array.dtype.kind in "OSU":
        return pb_utils.Tensor(name, array)
    if way == "torch-dlpack" and not _ANSWER_WAY:
        try:
            tensor = pb_utils.Tensor.from_dlpack(name, _torch_capsule(array))
        except Exception as err:  # noqa: BLE001 - whatever the stub or torch raise: decide once, say why
            _log(f"answers: PyTorch's DLPack capsule failed ({type(err).__name__}: {err}); numpy's from now on")
            _ANSWER_WAY.append("numpy-dlpack")
            return pb_utils.Tensor.from_dlpack(name, array)
        _ANSWER_WAY.append(way)
        return tensor
    if way == "torch-dlpack":
        return pb_utils.Tensor.from_dlpack(name, _torch_capsule(array))
    return pb_utils.Tensor.from_dlpack(name, array)


def _log(message: str) -> None:
    """One line in the server log (the stub forwards its stderr there)."""
    print(f"lstminfer: {message}", file=sys.stderr, flush=True)


class TritonPythonModel:
    """Triton's entry point (``model.py`` in the repository imports this class)."""

    def initialize(self, args: dict[str, Any]) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        desc = json.loads((version_dir / "lstminfer.json").read_text())
        if args.get("model_instance_kind") == "GPU":
            import torch

            torch.cuda.set_device(int(args.get("model_instance_device_id", 0)))
        config = json.loads(args["model_config"])
        self.name = args.get("model_name", desc["name"])
        self.input_names = [i["name"] for i in config["input"]]
        self.profile = Profile() if os.environ.get(PROFILE_ENV) in ("1", "2") else None
        self.batched = desc.get("batched", True)
        import numpy as np

        _log(f"{self.name}: answers through {_answer_way()} (numpy {np.__version__})")
        if self.batched:
            model, runner = build_runner(desc, version_dir)
            buckets = ()
            mode = desc.get("buckets", "auto")  # auto: GPU backends specialise on the batch size (module docstring)
            if mode == "on" or (mode == "auto" and desc["device"].startswith("cuda")):
                most = int(config.get("max_batch_size") or 1)
                buckets = bucket_sizes(min(most, desc["max_streams"]) if desc["stream"] else most)
            self.handler = Handler(model.spec, runner, stream=desc["stream"], max_streams=desc["max_streams"],
                                   idle_timeout_s=desc["idle_timeout_s"], with_state=desc["with_state"],
                                   buckets=buckets)
            if buckets:
                seconds, stopped = self.handler.warm_up(model.seq_len)
                _log(f"{self.name}: batch buckets {','.join(map(str, buckets))} run at "
                     f"load (seq {model.seq_len}, {desc['backend']}): {seconds:.2f} s"
                     + (f"; {stopped}" if stopped else ""))
            self.handler.profile = self.profile  # the requests only, not the warm-up
            self.handler.again = os.environ.get(PROFILE_ENV) == "2"
            if self.profile:
                _log(f"{self.name}: {process_facts(runner)}")
            return
        import triton_python_backend_utils as pb_utils

        model = rebuild_model(desc)
        device = desc["device"].split(":")[0]
        self.handler = UnbatchedHandler(
            model, stream=desc["stream"], backend=desc["backend"], device=device, precision=desc["precision"],
            backend_options=desc.get("backend_options") or {}, fixed=desc.get("fixed") or {},
            outputs={o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]},
            ranks={i.name: len(i.dims or ()) for i in model.inputs}, max_streams=desc["max_streams"],
            idle_timeout_s=desc["idle_timeout_s"])

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        profile = self.profile
        begin = time.perf_counter() if profile else 0.0
        names = self.input_names
        # One request.inputs() a request: the stub builds that list anew on every call, and its
        # get_input_tensor_by_name calls it once per name.
        tensors = [{t.name(): t for t in request.inputs()} for request in requests]

        def array(given: dict[str, Any], name: str) -> Any:
            return _as_array(given[name]) if name in given else None

        if self.handler.stream:
            chunk = StreamChunk if self.batched else FeedsChunk
            work = [chunk(request.correlation_id(), bool(array(given, "START").reshape(-1)[0]),
                          bool(array(given, "END").reshape(-1)[0]),
                          array(given, "input") if self.batched else {n: array(given, n) for n in names})
                    for request, given in zip(requests, tensors)]
        else:
            work = [{n: array(given, n) for n in names} for given in tensors]
        if profile:
            mark = time.perf_counter()
        results = self.handler.step(work) if self.handler.stream else self.handler.infer(work)
        if profile:
            answered = time.perf_counter()
        responses = []
        response, error = pb_utils.InferenceResponse, pb_utils.TritonError
        for result in results:
            if isinstance(result, Exception):
                responses.append(response(error=error(str(result))))
            else:
                responses.append(response(output_tensors=[_output(pb_utils, n, v) for n, v in result.items()]))
        if profile:
            end = time.perf_counter()
            backend, self.handler.backend_s = getattr(self.handler, "backend_s", 0.0), 0.0
            times = {"inputs": mark - begin, "handler": answered - mark, "backend": backend,
                     "outputs": end - answered, "execute": end - begin}
            if getattr(self.handler, "again", False):
                times["again"], self.handler.again_s = self.handler.again_s, 0.0
            profile.add(len(requests), times)
        return responses

    def finalize(self) -> None:
        if self.profile:
            for line in self.profile.summary():
                _log(f"{self.name}: {line}")
        if self.batched:
            self.handler.runner.close()
        else:
            self.handler.close()
