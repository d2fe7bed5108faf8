"""The Runner interface every backend implements, and the registry that finds them.

Life cycle (after Polygraphy's runners): ``prepare(shapes)`` loads and allocates for every (seq_len,
batch) the runner will serve, ``infer(inputs)`` runs any number of times, ``close()`` frees. The shapes
reach a runner by this one route (``self.shapes``, ``self.max_seq_len``, ...), never from the model's
default shape, so an engine profile or a kernel plan covers every point of a sweep. A backend overrides
only the ``*_impl`` hooks; the public methods here own the checks, so ``verify`` and ``bench`` never
special-case a backend by name. Process-wide switches a backend needs (TF32, thread counts) come from
``settings()``, a context entered by ``prepare`` and exited by ``close``: nothing leaks past a runner.

Timing contract: ``infer`` is split into ``upload`` (host -> device copy), ``execute`` (enqueue the
computation) and ``download`` (device -> host). ``bench`` stamps each stage with ``clock()`` markers:
CUDA events on ``stream`` for GPU backends, the host clock for CPU ones, exactly like trtexec's
H2D / compute / D2H brackets.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lstminfer.errors import BackendUnavailable, UserError

if TYPE_CHECKING:
    from lstminfer.model.base import Model

PRECISIONS = ("fp32", "fp16", "bf16")


class Runner:
    """One backend on one device at one precision for one model.

    Subclasses set ``name``, ``devices`` and implement the ``*_impl`` hooks.  ``upload_impl`` /
    ``download_impl`` default to identity, which suits backends that take and return numpy arrays.
    """

    name: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    install_hint: ClassVar[str] = ""
    # A backend that times itself (e.g. an external trtexec run) sets this and implements benchmark().
    self_timed: ClassVar[bool] = False
    # Why `applies_to` is False for a model: the one line `supports()` answers with.
    not_applicable: ClassVar[str] = "this backend does not apply to this model"

    def __init__(self, model: Model, device: str = "cpu", precision: str = "fp32", **options: Any):
        self.model = model
        self.device = device
        self.precision = precision
        self.options = options
        self.stream = None  # a torch.cuda.Stream for GPU runners; bench records events on it
        self.shapes: tuple[tuple[int, int], ...] = ()  # (seq_len, batch) of every point to serve; set by prepare
        self._prepared = False
        self._settings = contextlib.ExitStack()

    # ---- availability, never raises -------------------------------------------------------------
    @classmethod
    def available(cls, device: str = "cpu") -> tuple[bool, str]:
        """(True, "") when this backend can run on `device` here, else (False, reason with install hint)."""
        if device not in cls.devices:
            return False, f"runs on {'/'.join(cls.devices)} only"
        try:
            return cls.available_impl(device)
        except Exception as err:  # availability probes must never crash the listing
            return False, f"probe failed: {err}"

    @classmethod
    def available_impl(cls, device: str) -> tuple[bool, str]:
        return True, ""

    @classmethod
    def applies_to(cls, model: Model) -> bool:
        """Whether this backend is meant for this kind of model at all (a TorchScript runner for a
        TorchScript file, say). Default selections leave out backends that do not apply; asked for by
        name, they run and say why they cannot."""
        return True

    def supports(self) -> tuple[bool, str]:
        """Whether this runner can run ``self.model`` at ``self.precision``; (False, reason) if not."""
        if self.precision not in self.precisions:
            return False, f"precision {self.precision} not supported (supports {', '.join(self.precisions)})"
        if not self.applies_to(self.model):
            return False, self.not_applicable
        return self.supports_impl()

    def supports_impl(self) -> tuple[bool, str]:
        return True, ""

    @property
    def label(self) -> str:
        return f"{self.name}[{self.device}]"

    # ---- life cycle -----------------------------------------------------------------------------
    def prepare(self, shapes: Sequence[tuple[int, int]] = ()) -> None:
        """Load and allocate for every (seq_len, batch) in `shapes` (default: the model's own shape).

        The first shape is the one to optimize for (an engine profile's opt); the largest bound what
        is allocated.
        """
        if self._prepared:
            return
        ok, why = self.supports()
        if not ok:
            raise UserError(f"backend {self.name} cannot run this model: {why}")
        self.shapes = tuple(dict.fromkeys((int(s), int(b)) for s, b in shapes)) or ((self.model.seq_len,
                                                                                      self.model.batch),)
        self._settings.enter_context(self.settings())
        try:
            self.prepare_impl()
        except BaseException:
            self._settings.close()
            raise
        self._prepared = True

    @property
    def shape(self) -> tuple[int, int]:
        """The (seq_len, batch) to optimize for: the first shape given to prepare."""
        return self.shapes[0]

    @property
    def max_seq_len(self) -> int:
        return max(s for s, _ in self.shapes)

    @property
    def max_batch(self) -> int:
        return max(b for _, b in self.shapes)

    def settings(self) -> contextlib.AbstractContextManager:
        """Process-wide switches for this runner's lifetime (e.g. `torch_settings`); restored by close()."""
        return contextlib.nullcontext()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host arrays in, host float arrays out (names from the model's outputs)."""
        if not self._prepared:
            self.prepare()
        with self.on_stream():  # all three stages on one stream: no copy races a kernel on another
            return self.download(self.execute(self.upload(inputs)))

    def on_stream(self) -> Any:
        """A context that makes the runner's stream current (nothing for CPU runners)."""
        if self.stream is None:
            return contextlib.nullcontext()
        import torch

        return torch.cuda.stream(self.stream)

    def upload(self, inputs: dict[str, np.ndarray]) -> Any:
        return self.upload_impl(inputs)

    def execute(self, device_inputs: Any) -> Any:
        return self.execute_impl(device_inputs)

    def download(self, device_outputs: Any) -> dict[str, np.ndarray]:
        return self.download_impl(device_outputs)

    def close(self) -> None:
        try:
            if self._prepared:
                self.close_impl()
        finally:
            self._prepared = False
            self._settings.close()

    def __enter__(self) -> Runner:
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- hooks ------------------------------------------------------------------------------------
    def prepare_impl(self) -> None:
        pass

    def upload_impl(self, inputs: dict[str, np.ndarray]) -> Any:
        return inputs

    def execute_impl(self, device_inputs: Any) -> Any:
        raise NotImplementedError

    def download_impl(self, device_outputs: Any) -> dict[str, np.ndarray]:
        return device_outputs

    def close_impl(self) -> None:
        pass

    def synchronize(self) -> None:
        """Wait for work queued on this runner's stream (no-op on CPU)."""
        if self.stream is not None:
            self.stream.synchronize()

    def describe(self) -> dict[str, Any]:
        """Extra facts recorded with every result (e.g. tf32, provider, engine file)."""
        return {}

    def describe_at(self, seq_len: int, batch: int) -> dict[str, Any]:
        """The facts recorded with a result at one shape: `describe()`, plus what depends on the shape (the
        fused kernel's launch plan), so a sweep's records show each point's own, not the first point's."""
        return self.describe()

    def benchmark(self, config: Any) -> dict[str, Any]:  # only for self_timed backends
        raise NotImplementedError


@contextlib.contextmanager
def torch_settings(tf32: bool | None = None, threads: int | None = None) -> Iterator[None]:
    """TF32 for cuDNN and cuBLAS, and torch's intra-op thread count, set inside and restored on exit.

    PyTorch keeps both process-wide; a runner that set them for good would change every backend after it.
    """
    import torch

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads())
    try:
        if tf32 is not None:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        if threads:
            torch.set_num_threads(int(threads))
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[:2]
        if torch.get_num_threads() != before[2]:
            torch.set_num_threads(before[2])


class OnnxFileRunner(Runner):
    """A backend that runs the model's ONNX file (exported by lstminfer, or the user's own)."""

    not_applicable = "the model has no ONNX file (export failed or was refused, e.g. proj_size)"

    @classmethod
    def applies_to(cls, model: Model) -> bool:
        return model.onnx_path is not None


# ---- registry -----------------------------------------------------------------------------------
# name -> "module:Class"; imported lazily so that `import lstminfer` never pulls in heavy libraries.
BACKENDS: dict[str, str] = {
    "torch": "lstminfer.backends.pytorch:TorchRunner",
    "torch-graph": "lstminfer.backends.pytorch:TorchGraphRunner",
    "onnxruntime": "lstminfer.backends.onnxrt:OrtCpuRunner",
    "onnxruntime-cuda": "lstminfer.backends.onnxrt:OrtCudaRunner",
    "onnxruntime-trt": "lstminfer.backends.onnxrt:OrtTensorrtRunner",
    "openvino": "lstminfer.backends.openvino:OpenVinoRunner",
    "tensorrt": "lstminfer.backends.tensorrt:TensorRTRunner",
    "tensorrt-graph": "lstminfer.backends.tensorrt:TensorRTGraphRunner",
    "trtexec": "lstminfer.backends.trtexec:TrtexecRunner",
    "fused": "lstminfer.backends.fused:FusedRunner",
    "fused-graph": "lstminfer.backends.fused:FusedGraphRunner",
    "torchscript": "lstminfer.backends.torchscript:TorchScriptRunner",
}


def runner_class(name: str) -> type[Runner]:
    if name == "fused-resident":  # measure/stream_resident.py: a kernel that stays resident between chunks
        raise UserError("backend fused-resident streams only (lstminfer stream, lstminfer.Session): use fused-graph "
                        "for verify, bench, run and sweep")
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)} (see `lstminfer backends`)")
    module_name, _, class_name = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


@dataclass(frozen=True)
class BackendChoice:
    """One (backend, device) pair and whether it can run here."""

    name: str
    device: str
    available: bool
    reason: str
    install_hint: str

    @property
    def label(self) -> str:
        return f"{self.name}[{self.device}]"


def list_backends() -> list[BackendChoice]:
    """Every registered (backend, device) pair, available or not, with the reason."""
    choices = []
    for name in BACKENDS:
        cls = runner_class(name)
        for device in cls.devices:
            ok, why = cls.available(device)
            choices.append(BackendChoice(name, device, ok, why, cls.install_hint))
    return choices


def select_backends(requested: list[str] | None, device: str = "all",
                    model: Model | None = None) -> list[BackendChoice]:
    """Resolve ``--backends`` (names, optionally ``name:device``) and ``--device`` into choices.

    With no request: every available pair that applies to `model`.  A pair asked for by name that cannot run here raises
    BackendUnavailable with the reason and the install line.
    """
    every = list_backends()
    if device not in ("all", "cpu", "cuda"):
        raise UserError(f"unknown device {device!r}: use cpu, cuda or all")
    if not requested:
        chosen = [c for c in every if c.available and device in ("all", c.device)
                  and (model is None or runner_class(c.name).applies_to(model))]
        if not chosen:  # e.g. --device cuda without CUDA: running nothing must not look like success
            why = "; ".join(f"{c.label}: {c.reason}" for c in every if c.device == device and not c.available)
            raise UserError(f"no backend can run on {device} here ({why or 'none applies to this model'}); "
                            "see `lstminfer backends`")
        return chosen
    chosen = []
    for item in requested:
        name, _, dev = item.partition(":")
        runner_class(name)  # unknown name -> UserError
        matches = [c for c in every if c.name == name and (dev or device) in ("all", c.device)]
        if not matches:
            raise UserError(f"backend {name!r} has no device {dev or device!r}")
        usable = [c for c in matches if c.available]
        if not usable:
            c = matches[0]
            hint = f"; {c.install_hint}" if c.install_hint else ""
            raise BackendUnavailable(f"backend {c.label} is unavailable: {c.reason}{hint}")
        chosen.extend(u for u in usable if u not in chosen)
    return chosen
