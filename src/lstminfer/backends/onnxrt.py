"""ONNX Runtime runners, one per execution provider (CPU; CUDA and TensorRT with onnxruntime-gpu).

The CPU runner's ``cpu_mode`` "throughput" avoids a trap of ONNX Runtime's CPU LSTM kernel
(``onnxruntime/core/providers/cpu/rnn/uni_directional_lstm.cc``, ``SetNumThreads``): above 4 batch rows it
shares the rows out over its threads, each thread then reading the whole recurrent weight matrix every step;
at 4 rows or fewer it splits each step's GEMM instead. So the query's batch is cut into groups of at most 4
rows, the groups run at the same time on sessions of their own, the intra-op threads divided among them, and
the outputs are joined along the batch axis (docs/cpu.md).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lstminfer.backends.base import OnnxFileRunner
from lstminfer.backends.batch import CPU_MODES, batch_axes, group_sizes, join_rows, split_rows
from lstminfer.errors import UserError
from lstminfer.onnx.load import _ort_message

# ORT's CPU LSTM splits each step's GEMM over its threads at 4 batch rows or fewer, the batch rows above
# that (uni_directional_lstm.cc, SetNumThreads: `num_rows > 4 || (num_rows >= 2 && hidden_size <= 256)`)
GROUP_ROWS = 4


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


class OrtRunner(OnnxFileRunner):
    """An InferenceSession on the model's ONNX file with one execution provider.

    ONNX Runtime synchronizes inside ``run``, so its GPU runners are timed with the host clock
    (``host_clock = True``): compute time includes ORT's own copies and synchronization.
    """

    provider: ClassVar[str] = "CPUExecutionProvider"
    host_clock: ClassVar[bool] = True
    install_hint = "pip install onnxruntime"

    @classmethod
    def available_impl(cls, device: str) -> tuple[bool, str]:
        try:
            ort = _ort()
        except ImportError:
            return False, "onnxruntime is not installed"
        if cls.provider not in ort.get_available_providers():
            providers = ", ".join(ort.get_available_providers())
            return False, f"{cls.provider} is not in this onnxruntime build ({providers})"
        if device == "cuda":
            from lstminfer.backends.pytorch import cuda_available

            return cuda_available()
        return True, ""

    def provider_options(self) -> dict[str, Any]:
        return {}

    def session_options(self, threads: int | None = None) -> Any:
        opts = _ort().SessionOptions()
        opts.log_severity_level = 4  # a refusal becomes our one-line error, not also ORT's log line
        threads = threads or self.options.get("threads")
        if self.device == "cpu" and threads:
            opts.intra_op_num_threads = int(threads)
        return opts

    def new_session(self, threads: int | None = None) -> Any:
        try:
            return _ort().InferenceSession(
                str(self.model.onnx_path), sess_options=self.session_options(threads),
                providers=[(self.provider, self.provider_options())],
            )
        except Exception as err:  # a file ORT refuses (layout=1, an op it lacks): one line, wherever it is used
            raise UserError(f"ONNX Runtime refuses {self.model.onnx_path}: {_ort_message(err)}") from err

    def prepare_impl(self) -> None:
        self.session = self.new_session()
        self.output_names = [o.name for o in self.session.get_outputs()]

    def execute_impl(self, device_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, device_inputs)
        return dict(zip(self.output_names, outs))

    def download_impl(self, device_outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating) else v
                for k, v in device_outputs.items()}

    def close_impl(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": self.provider, "onnxruntime": _ort().__version__}
        if self.device == "cpu" and self._prepared:
            # Read back; 0 is ORT's default, one intra-op thread per physical core.
            out["threads"] = self.session.get_session_options().intra_op_num_threads or physical_cores()
        return out


def physical_cores(cpuinfo: str | None = None) -> int:
    """Physical cores as /proc/cpuinfo lists them (ONNX Runtime's default intra-op thread count)."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.cpu_count() or 1
    cores, physical = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            physical = value.strip()
        elif key.strip() == "core id":
            cores.add((physical, value.strip()))
    return len(cores) or os.cpu_count() or 1


class OrtCpuRunner(OrtRunner):
    """ONNX Runtime's CPU provider; ``cpu_mode`` "throughput" runs the batch as concurrent row groups.

    Throughput plan for a batch of B rows on T intra-op threads (``--threads``, else ORT's default, one per
    physical core): ``ceil(B / GROUP_ROWS)`` groups, but never more than T, each group on its own session
    with ``T / groups`` threads (the remainder to the first groups), so the threads add up to T. Groups stay
    at GROUP_ROWS rows or fewer unless each has a single thread, where ORT has no split to choose.  B <= 4
    is one group on the one session: the same as latency mode.
    """

    name = "onnxruntime"
    devices = ("cpu",)

    @property
    def cpu_mode(self) -> str:
        return self.options.get("cpu_mode") or "latency"

    def supports_impl(self) -> tuple[bool, str]:
        if self.cpu_mode not in CPU_MODES:
            return False, f"cpu mode {self.cpu_mode!r} is not one of {', '.join(CPU_MODES)}"
        if self.cpu_mode == "throughput" and self._batch_axes() is None:
            return False, ("cpu mode throughput cuts the batch, and the batch axis of every input and output is "
                           "known only for lstminfer's own models, not this one; use --cpu-mode latency")
        return True, ""

    def _batch_axes(self) -> dict[str, int] | None:
        return batch_axes(self.model, self.model.input_names + self.model.output_names)

    def prepare_impl(self) -> None:
        super().prepare_impl()
        self.threads = self.session.get_session_options().intra_op_num_threads or physical_cores()
        self.axes = self._batch_axes() if self.cpu_mode == "throughput" else None
        self.group_sessions: dict[tuple[int, ...], list[Any]] = {}  # threads of each group -> their sessions
        self.pool: ThreadPoolExecutor | None = None
        self.pool_workers = 0
        for _, batch in self.shapes:  # the points it will serve get their sessions now, outside any timing
            self._sessions_for(self.plan(batch)[1])

    def plan(self, batch: int) -> tuple[list[int], tuple[int, ...]]:
        """(rows of each group, threads of each group) for one query of `batch` rows."""
        if self.axes is None:
            return [batch], (self.threads,)
        rows = group_sizes(batch, min(-(-batch // GROUP_ROWS), self.threads))
        return rows, tuple(group_sizes(self.threads, len(rows)))  # the remainder to the first groups, as the rows

    def _sessions_for(self, threads: tuple[int, ...]) -> list[Any]:
        if len(threads) == 1:
            return [self.session]
        if threads not in self.group_sessions:
            self.group_sessions[threads] = [self.new_session(t) for t in threads]
            if len(threads) - 1 > self.pool_workers:  # the calling thread runs the first group
                if self.pool is not None:
                    self.pool.shutdown()
                self.pool_workers = len(threads) - 1
                self.pool = ThreadPoolExecutor(self.pool_workers, thread_name_prefix="ort-group")
        return self.group_sessions[threads]

    def upload_impl(self, inputs: dict[str, np.ndarray]) -> Any:
        if self.axes is None:
            return inputs
        first = self.model.input_names[0]
        rows, threads = self.plan(inputs[first].shape[self.axes[first]])
        if len(rows) == 1:
            return inputs
        return self._sessions_for(threads), split_rows(inputs, self.axes, rows)

    def execute_impl(self, device_inputs: Any) -> Any:
        if isinstance(device_inputs, dict):  # one group: the query as it is
            return super().execute_impl(device_inputs)
        sessions, groups = device_inputs
        # ORT's Run is thread-safe and releases the GIL: the other groups on the pool, the first one here
        futures = [self.pool.submit(s.run, self.output_names, g) for s, g in zip(sessions[1:], groups[1:])]
        parts = [sessions[0].run(self.output_names, groups[0]), *(f.result() for f in futures)]
        return [dict(zip(self.output_names, p)) for p in parts]

    def download_impl(self, device_outputs: Any) -> dict[str, np.ndarray]:
        if isinstance(device_outputs, list):  # the groups' outputs, joined on the host like any download
            device_outputs = join_rows(device_outputs, self.axes)
        return super().download_impl(device_outputs)

    def close_impl(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.pool, self.pool_workers, self.group_sessions = None, 0, {}
        super().close_impl()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cpu_mode": self.cpu_mode}

    def describe_at(self, seq_len: int, batch: int) -> dict[str, Any]:
        """With the throughput plan at this batch: its row groups and each group's threads (read back)."""
        out = self.describe()
        if self._prepared and self.axes is not None:
            rows, threads = self.plan(batch)
            sessions = self._sessions_for(threads)
            out["row_groups"] = rows
            out["group_threads"] = [s.get_session_options().intra_op_num_threads or physical_cores()
                                    for s in sessions]
        return out


class OrtCudaRunner(OrtRunner):
    name = "onnxruntime-cuda"
    devices = ("cuda",)
    provider = "CUDAExecutionProvider"
    install_hint = "pip install onnxruntime-gpu (instead of onnxruntime)"


class OrtTensorrtRunner(OrtRunner):
    """The TensorRT execution provider with explicit profiles and caches, so no engine is rebuilt mid-run."""

    name = "onnxruntime-trt"
    devices = ("cuda",)
    provider = "TensorrtExecutionProvider"
    precisions = ("fp32", "fp16", "bf16")
    install_hint = 'pip install onnxruntime-gpu "lstminfer[tensorrt]"'

    def provider_options(self) -> dict[str, Any]:
        from lstminfer.tensorrt.build import default_cache_dir, derive_profile, ort_tensorrt_provider_options

        profile = derive_profile(self.model.onnx_path, points=self.shapes)
        cache_dir = default_cache_dir(self.options.get("out_dir") or Path(self.model.onnx_path).parent)
        return ort_tensorrt_provider_options(self.model.onnx_path, profile, cache_dir, precision=self.precision)
