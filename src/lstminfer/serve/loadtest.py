"""What perf_analyzer reports, through tritonclient (perf_analyzer itself is not installable from our
registries, FACTS.md section 7): per concurrency level, latency percentiles and throughput.

Two modes:
- ``stateless``: `concurrency` workers, each sending one request after the other to ``NAME`` (state in and
  out explicitly; zero state);
- ``stream``: `concurrency` streams open at once on ``NAME_stream``, each worker running one stream after the
  other (START on the first chunk, END on the last, a fresh sequence id per stream).

Every level is bounded in time (``warmup_s + duration_s``) and in count (``max_requests``). Requests that
start during the warm-up are not counted. Every answer is checked against the model's config: an output that
is missing, unreadable, empty, or of another shape or dtype makes its request a failure (under numpy 2 the
stub once answered fp32 tensors with 0 bytes, and a load test that counted only exceptions saw no failure).
Latency is the client's clock around one ``infer`` call; throughput is the counted requests over the counted
window (from the end of the warm-up to the end of the last counted request). Percentiles are trtexec's
(nearest rank, ``measure/stats.py``), so they read like every other number of ours.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lstminfer.errors import UserError
from lstminfer.serve.repository import STREAM_SUFFIX

LOAD_MODES = ("stateless", "stream")
DTYPES = {"TYPE_FP32": ("FP32", "float32"), "TYPE_FP16": ("FP16", "float16"), "TYPE_INT64": ("INT64", "int64"),
          "TYPE_INT32": ("INT32", "int32")}


@dataclass(frozen=True)
class LoadRecord:
    """One concurrency level of one mode: the JSON record `lstminfer loadtest --json` writes."""

    mode: str  # one of LOAD_MODES
    model: str
    protocol: str
    concurrency: int
    requests: int  # completed in the counted window
    failed: int
    duration_s: float  # the counted window
    throughput_rps: float
    latency_ms: dict[str, float]  # p50, p90, p95, p99, mean, min, max
    seq_len: int
    batch: int
    errors: list[str] = field(default_factory=list)  # up to three distinct messages

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def series(self) -> str:
        """What one line of the report's plot is: mode, model and protocol ("stateless seed http")."""
        return f"{self.mode} {self.model} {self.protocol}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoadRecord:
        """A record as `to_dict` wrote it; anything else is a one-line UserError (the report's file boundary)."""
        from lstminfer.measure.records import _float, _get

        what = "a loadtest record"
        mode = _get(d, "mode", str, what)
        if mode not in LOAD_MODES:
            raise UserError(f"{what} has mode={mode!r}, not one of {', '.join(LOAD_MODES)}; is this a file that "
                            "`lstminfer loadtest --json` wrote?")
        latency = _get(d, "latency_ms", Mapping, what)
        latency = {str(k): _float(latency, k, f"{what}'s latency_ms") for k in latency}
        errors = _get(d, "errors", list, what, optional=True) or []
        return cls(mode=mode, model=_get(d, "model", str, what), protocol=_get(d, "protocol", str, what),
                   concurrency=_get(d, "concurrency", int, what), requests=_get(d, "requests", int, what),
                   failed=_get(d, "failed", int, what), duration_s=_float(d, "duration_s", what) or 0.0,
                   throughput_rps=_float(d, "throughput_rps", what) or 0.0,
                   latency_ms={k: v for k, v in latency.items() if v is not None},
                   seq_len=_get(d, "seq_len", int, what, optional=True) or 1,
                   batch=_get(d, "batch", int, what, optional=True) or 1, errors=[str(e) for e in errors])


def split_url(url: str, protocol: str) -> str:
    """tritonclient wants host:port: strip a scheme and a trailing slash."""
    if protocol not in ("http", "grpc"):
        raise UserError(f"--protocol {protocol!r}: use http or grpc")
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    url = url.rstrip("/")
    if ":" not in url:
        raise UserError(f"server address {url!r} needs a port, e.g. 127.0.0.1:8000 (HTTP) or 127.0.0.1:8001 (gRPC)")
    return url


def client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as err:
        raise UserError(f"tritonclient[{protocol}] is not installed ({err}): pip install 'lstminfer[serve]'") from None
    return module


def make_client(url: str, protocol: str, timeout_s: float = 30.0) -> Any:
    module = client_module(protocol)
    if protocol == "grpc":
        return module.InferenceServerClient(url)
    return module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)


def model_config(client: Any, model: str, protocol: str) -> dict[str, Any]:
    if protocol == "grpc":
        return client.get_model_config(model, as_json=True)["config"]
    return client.get_model_config(model)


def served_models(client: Any, protocol: str) -> list[str]:
    """Names of the ready models."""
    if protocol == "grpc":
        index = client.get_model_repository_index(as_json=True).get("models", [])
    else:
        index = client.get_model_repository_index()
    return sorted(m["name"] for m in index if m.get("state", "READY") == "READY")


def resolve_model(client: Any, protocol: str, model: str | None) -> tuple[str | None, str | None]:
    """(stateless model, stream model) for `--model NAME`, or for the one model the server serves."""
    names = served_models(client, protocol)
    if model is None:
        bases = sorted({n[: -len(STREAM_SUFFIX)] if n.endswith(STREAM_SUFFIX) else n for n in names})
        if len(bases) != 1:
            raise UserError(f"the server serves {', '.join(names) or 'no ready model'}: choose one with --model")
        model = bases[0]
    stateless = model if model in names else None
    stream = model + STREAM_SUFFIX if model + STREAM_SUFFIX in names else None
    if stateless is None and stream is None:
        raise UserError(f"the server has no ready model {model!r} (it serves {', '.join(names) or 'none'})")
    return stateless, stream


def make_inputs(config: dict[str, Any], seq_len: int, batch: int, seed: int = 0) -> dict[str, Any]:
    """Standard-normal arrays for every input of a model config; -1 dims become `seq_len`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batched = int(config.get("max_batch_size", 0)) > 0
    arrays = {}
    for tensor in config["input"]:
        dims = [seq_len if int(d) < 0 else int(d) for d in tensor["dims"]]
        shape = ([batch] if batched else []) + dims
        dtype = DTYPES.get(tensor["data_type"], ("FP32", "float32"))[1]
        arrays[tensor["name"]] = rng.standard_normal(shape).astype(dtype)
    return arrays


class WrongAnswer(Exception):
    """The server answered, but not what the model's config declares."""


def expected_outputs(config: dict[str, Any], batch: int) -> dict[str, tuple[tuple[int | None, ...], str | None]]:
    """Every output of a model config: name -> (shape, numpy dtype). A -1 dim (None) takes any positive size;
    a dtype outside DTYPES (None) is not checked."""
    batched = int(config.get("max_batch_size", 0)) > 0
    expected = {}
    for tensor in config["output"]:
        dims = tuple(None if int(d) < 0 else int(d) for d in tensor["dims"])
        dtype = DTYPES.get(tensor.get("data_type", "TYPE_FP32"), (None, None))[1]
        expected[tensor["name"]] = (((batch,) if batched else ()) + dims, dtype)
    return expected


def check_answer(result: Any, expected: dict[str, tuple[tuple[int | None, ...], str | None]]) -> str | None:
    """Why a tritonclient result is not the answer `expected` (``expected_outputs``) declares; None if it is."""
    for name, (shape, dtype) in expected.items():
        try:
            value = result.as_numpy(name)
        except Exception as err:  # tritonclient reshapes the raw bytes: a short answer raises here
            return f"output {name} unreadable: {_short(err)}"
        if value is None:
            return f"output {name} missing from the answer"
        if value.size == 0:
            return f"output {name} is empty (shape {list(value.shape)})"
        if len(value.shape) != len(shape) or any(e is not None and e != v for e, v in zip(shape, value.shape)):
            want = ["*" if e is None else e for e in shape]
            return f"output {name} has shape {list(value.shape)}, the config says {want}"
        if dtype is not None and value.dtype.name != dtype:
            return f"output {name} is {value.dtype.name}, the config says {dtype}"
    return None


def _infer_checked(client: Any, model: str, inputs: list[Any], expected: dict[str, Any], **kwargs: Any) -> None:
    """One request; raises WrongAnswer when the answer is not what the config declares."""
    reason = check_answer(client.infer(model, inputs, **kwargs), expected)
    if reason is not None:
        raise WrongAnswer(reason)


def _infer_inputs(module: Any, arrays: dict[str, Any]) -> list[Any]:
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


@dataclass
class Counted:
    """What the workers of one level (or of one load-generator process) counted: picklable, merged exactly."""

    latencies: list[float]  # ms, one per successful counted request
    failed: int
    errors: list[str]  # up to three distinct messages
    count_from: float  # perf_counter() at the end of the warm-up: the counted window's start
    last_done: float  # perf_counter() at the end of the last counted request (count_from if none)

    def note_error(self, message: str) -> None:
        """Keeps `message` if it is new and fewer than three are kept."""
        if message not in self.errors and len(self.errors) < 3:
            self.errors.append(message)

    @staticmethod
    def merge(parts: list[Counted]) -> Counted:
        """The counts of several processes' workers as if one process had run them all."""
        merged = Counted(latencies=[t for part in parts for t in part.latencies],
                         failed=sum(part.failed for part in parts), errors=[],
                         count_from=min(part.count_from for part in parts),
                         last_done=max(part.last_done for part in parts))
        for message in (m for part in parts for m in part.errors):
            merged.note_error(message)
        return merged


class _Tally:
    """Latencies and failures of the counted window, shared by the workers (threads) of one process."""

    def __init__(self, count_from: float, stop_at: float, max_requests: int):
        self.lock = threading.Lock()
        self.count_from = count_from
        self.stop_at = stop_at
        self.max_requests = max_requests
        self.counted = Counted(latencies=[], failed=0, errors=[], count_from=count_from, last_done=count_from)
        self.sent = 0

    def take(self) -> bool:
        """Whether a worker may send one more request."""
        with self.lock:
            if time.perf_counter() >= self.stop_at or self.sent >= self.max_requests:
                return False
            self.sent += 1
            return True

    def done(self, start: float, end: float, error: BaseException | None) -> None:
        if start < self.count_from:
            return
        counted = self.counted
        with self.lock:
            counted.last_done = max(counted.last_done, end)
            if error is None:
                counted.latencies.append((end - start) * 1e3)
                return
            counted.failed += 1
            counted.note_error(_short(error))


def _stateless_worker(url: str, protocol: str, model: str, arrays: dict[str, Any], expected: dict[str, Any],
                      tally: _Tally, timeout_s: float) -> None:
    module = client_module(protocol)
    client = make_client(url, protocol, timeout_s)
    inputs = _infer_inputs(module, arrays)
    kwargs = {"client_timeout": timeout_s} if protocol == "grpc" else {}
    try:
        while tally.take():
            start = time.perf_counter()
            error = None
            try:
                _infer_checked(client, model, inputs, expected, **kwargs)
            except Exception as err:  # a failed request is data, not a crash
                error = err
            tally.done(start, time.perf_counter(), error)
    finally:
        client.close()


def _stream_worker(url: str, protocol: str, model: str, arrays: dict[str, Any], expected: dict[str, Any],
                   tally: _Tally, timeout_s: float, chunks: int, first_id: int) -> None:
    module = client_module(protocol)
    client = make_client(url, protocol, timeout_s)
    inputs = _infer_inputs(module, arrays)
    kwargs = {"client_timeout": timeout_s} if protocol == "grpc" else {}
    sequence_id = first_id
    try:
        while True:
            for k in range(chunks):
                last = k == chunks - 1
                if not tally.take():
                    if k:  # close the open stream so the server frees its state now
                        try:
                            client.infer(model, inputs, sequence_id=sequence_id, sequence_end=True, **kwargs)
                        except Exception:
                            pass
                    return
                start = time.perf_counter()
                error = None
                try:
                    _infer_checked(client, model, inputs, expected, sequence_id=sequence_id, sequence_start=k == 0,
                                   sequence_end=last, **kwargs)
                except Exception as err:
                    error = err
                tally.done(start, time.perf_counter(), error)
                if error is not None:
                    break  # this stream is broken: start a new one
            sequence_id += 1
    finally:
        client.close()


@dataclass(frozen=True)
class _Level:
    """One level's work, the same for every load-generator process (picklable: it crosses to spawned ones)."""

    url: str
    protocol: str
    model: str
    mode: str
    arrays: dict[str, Any]
    expected: dict[str, Any]
    warmup_s: float
    duration_s: float
    timeout_s: float
    chunks: int
    first_sequence_id: int


def _run_workers(level: _Level, workers: list[int], begin: float, max_requests: int) -> Counted:
    """Threads for the worker indices `workers` (a stream worker w uses the sequence ids from first + w * 10**6),
    from `begin` (perf_counter) for warm-up + duration or `max_requests` requests."""
    tally = _Tally(begin + level.warmup_s, begin + level.warmup_s + level.duration_s, max_requests)
    threads = []
    common = (level.url, level.protocol, level.model, level.arrays, level.expected, tally, level.timeout_s)
    for w in workers:
        if level.mode == "stream":
            target, extra = _stream_worker, (level.chunks, level.first_sequence_id + w * 1_000_000)
        else:
            target, extra = _stateless_worker, ()
        threads.append(threading.Thread(target=target, args=(*common, *extra), daemon=True, name=f"loadtest-{w}"))
    for t in threads:
        t.start()
    for t in threads:  # each worker stops by itself at stop_at; the join bound covers one hung request
        t.join(timeout=max(begin - time.perf_counter(), 0) + level.warmup_s + level.duration_s + level.timeout_s + 5)
    with tally.lock:
        counted = tally.counted
        return Counted(list(counted.latencies), counted.failed, list(counted.errors), counted.count_from,
                       counted.last_done)


# How long a spawned load-generator process may take to import tritonclient and report ready.
PROCESS_START_S = 60.0


def _process_main(rank: int, level: _Level, workers: list[int], max_requests: int, start: Any, begin: Any,
                  messages: Any) -> None:
    """One load-generator process (spawned): ready, then the common start, then its workers' counts back.
    Messages: ("ready", rank), ("done", Counted) or ("error", one line)."""
    try:
        client_module(level.protocol)  # the imports before the start, not in the counted window
        messages.put(("ready", rank))
        if start.wait(PROCESS_START_S):  # False: the parent gave up on another process
            messages.put(("done", _run_workers(level, workers, begin.value, max_requests)))
    except BaseException as err:  # noqa: BLE001 - the parent turns it into one line
        messages.put(("error", f"{type(err).__name__}: {_short(err)}"))


def _collect(messages: Any, children: list[Any], deadline: float, late: str) -> list[Any]:
    """One message's value from every child ("ready" or "done": each child sends them in that order), by
    `deadline` (perf_counter); a child's error, a child that died without a word, or the deadline is a
    one-line UserError."""
    import queue

    got: list[Any] = []
    while len(got) < len(children):
        try:
            what, value = messages.get(timeout=0.2)
        except queue.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            if dead:
                raise UserError(f"a load-generator process exited with code {dead[0].exitcode}") from None
            if time.perf_counter() > deadline:
                raise UserError(f"a load-generator process {late}; try fewer --processes") from None
            continue
        if what == "error":
            raise UserError(f"a load-generator process failed: {value}")
        got.append(value)
    return got


def _run_processes(level: _Level, concurrency: int, processes: int, max_requests: int) -> Counted:
    """The level's workers spread over `processes` spawned processes (worker w in process w % processes), each
    with its share of `max_requests`, started together once all are ready; their counts merged exactly.
    perf_counter is the system-wide monotonic clock on Linux, so one start time holds for every process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # not fork: a gRPC or gevent client does not survive a fork
    start = context.Event()
    begin = context.Value("d", 0.0)
    messages = context.Queue()
    children = []
    for k in range(processes):
        share = max_requests // processes + (k < max_requests % processes)
        children.append(context.Process(target=_process_main, daemon=True, name=f"loadtest-process-{k}",
                                        args=(k, level, list(range(k, concurrency, processes)), share, start, begin,
                                              messages)))
    try:
        for child in children:
            child.start()
        _collect(messages, children, time.perf_counter() + PROCESS_START_S,
                 f"did not start within {PROCESS_START_S:g} s")
        begin.value = time.perf_counter()
        start.set()
        bound = level.warmup_s + level.duration_s + level.timeout_s + 30
        parts = _collect(messages, children, begin.value + bound,
                         f"did not report within {bound:.0f} s of the start")
    except BaseException:  # one process failed, or Ctrl-C: the others are ended now, not waited for
        for child in children:
            if child.is_alive():
                child.terminate()
        raise
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
    return Counted.merge(parts)


def processes_for(concurrency: int, processes: int | str) -> int:
    """How many load-generator processes a level uses: `processes` (at most one per worker), or with "auto"
    one per AUTO_WORKERS_PER_PROCESS workers and at most a quarter of the CPU cores (the rest are the
    server's), so a level up to that many workers, or any level on a machine of fewer than 8 cores, runs in
    this process."""
    import math
    import os

    if processes == "auto":
        processes = min(math.ceil(concurrency / AUTO_WORKERS_PER_PROCESS), max(1, (os.cpu_count() or 1) // 4))
    return max(1, min(int(processes), concurrency))


# "auto": one process per this many workers (threads). One process's threads share its GIL: on the H200
# host, with 64 of them the server's executions held only 2.5-5 requests; on the 2-core CPU machine a second
# process took cores from the server and lowered throughput (docs/serving.md, "Where an execution's time
# goes, and the load generator").
AUTO_WORKERS_PER_PROCESS = 8


def run_level(url: str, protocol: str, model: str, mode: str, concurrency: int, *, seq_len: int = 1, batch: int = 1,
              duration_s: float = 5.0, warmup_s: float = 1.0, max_requests: int = 1_000_000, chunks: int = 20,
              timeout_s: float = 30.0, first_sequence_id: int = 1, processes: int | str = 1) -> LoadRecord:
    """One concurrency level: `concurrency` workers for `warmup_s + duration_s` or `max_requests` requests,
    threads of this process or spread over several processes (``processes_for``)."""
    from lstminfer.measure.stats import summarize

    client = make_client(url, protocol, timeout_s)
    try:
        config = model_config(client, model, protocol)
    finally:
        client.close()
    arrays = make_inputs(config, seq_len, batch)
    expected = expected_outputs(config, batch)
    # A stream model's config lists only what a chunk sends (input; a file's own chunk inputs), so all of them.
    level = _Level(url=url, protocol=protocol, model=model, mode=mode, arrays=arrays, expected=expected,
                   warmup_s=warmup_s, duration_s=duration_s, timeout_s=timeout_s, chunks=chunks,
                   first_sequence_id=first_sequence_id)
    count = processes_for(concurrency, processes)
    if count == 1:
        counted = _run_workers(level, list(range(concurrency)), time.perf_counter(), max_requests)
    else:
        counted = _run_processes(level, concurrency, count, max_requests)
    # The window ends when the last counted request did (trtexec's rule: up to the last query's end).
    window = max(counted.last_done - counted.count_from, 1e-9)
    if counted.latencies:
        s = summarize(counted.latencies)
        latency = {"p50": s.median, "p90": s.p90, "p95": s.p95, "p99": s.p99, "mean": s.mean, "min": s.min,
                   "max": s.max}
    else:
        latency = {}
    return LoadRecord(mode=mode, model=model, protocol=protocol, concurrency=concurrency,
                      requests=len(counted.latencies), failed=counted.failed, duration_s=round(window, 4),
                      throughput_rps=len(counted.latencies) / window, latency_ms=latency, seq_len=seq_len,
                      batch=batch, errors=counted.errors)


def loadtest(url: str, *, protocol: str = "http", model: str | None = None, concurrency: list[int] | None = None,
             streams: list[int] | None = None, **level_options: Any) -> list[LoadRecord]:
    """The concurrency sweep of stateless requests, then of streams (`streams`: concurrent stream counts)."""
    url = split_url(url, protocol)
    client = make_client(url, protocol)
    try:
        if not client.is_server_ready():
            raise UserError(f"the server at {url} is not ready")
        stateless, stream = resolve_model(client, protocol, model)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot reach a Triton server at {url} over {protocol}: {_short(err)}") from None
    finally:
        client.close()
    if streams and stream is None:
        raise UserError(f"--streams: the server has no stream model {((model or stateless) or '') + STREAM_SUFFIX} "
                        "(a bidirectional model cannot stream)")
    records = []
    if stateless is not None:
        for level in concurrency or []:
            records.append(run_level(url, protocol, stateless, "stateless", level, **level_options))
    # Fresh sequence ids on every run: a stream an earlier run left open (a killed client) is not resumed.
    next_id = random.randrange(1 << 40, 1 << 56)
    # seq_len and batch shape the stateless requests; a stream chunk is one step of one row (docs/serving.md:
    # Triton's sequence batcher takes one row a request)
    chunk_options = {**level_options, "seq_len": 1, "batch": 1}
    for level in streams or []:
        records.append(run_level(url, protocol, stream, "stream", level, first_sequence_id=next_id, **chunk_options))
        next_id += level * 1_000_000
    return records
