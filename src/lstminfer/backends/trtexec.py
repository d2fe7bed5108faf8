"""trtexec as a backend: `bench --backends trtexec` runs NVIDIA's own tool and imports what it measured.

It is self-timed (``self_timed = True``): bench calls ``benchmark(config)`` instead of timing
``infer``. trtexec returns no outputs, so ``infer`` raises and ``verify`` must skip this backend
(it skips every self-timed one). The engine trtexec builds is kept in the cache directory
(``<out>/trt-cache/trtexec-*.engine``) and loaded, not rebuilt, for the next point.

Not yet run against a real trtexec: see docs/tensorrt.md.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from lstminfer.backends.base import Runner
from lstminfer.errors import UserError
from lstminfer.measure.store import ensure_writable_dir, write_text_atomic
from lstminfer.tensorrt import build as tb
from lstminfer.tensorrt import profile as tp
from lstminfer.tensorrt import trtexec
from lstminfer.tensorrt.trtexec_times import load_times

TIMEOUT_S = 3600  # an LSTM engine build can take minutes; a hung trtexec should not hang a sweep forever


class TrtexecRunner(Runner):
    name: ClassVar[str] = "trtexec"
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    install_hint: ClassVar[str] = "install TensorRT and put its bin/ directory (trtexec) on PATH"
    self_timed: ClassVar[bool] = True

    @classmethod
    def available_impl(cls, device: str) -> tuple[bool, str]:
        if shutil.which("trtexec") is None:
            return False, "trtexec is not on PATH"
        return True, ""

    def supports_impl(self) -> tuple[bool, str]:
        if self.model.onnx_path is None:
            return False, "needs the model's ONNX file (lstminfer exports it first)"
        return True, ""

    def infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        raise UserError("trtexec only times an engine and cannot return its outputs; `verify` skips it "
                        "(use the tensorrt backend to check TensorRT's numbers)")

    # ---- the run ---------------------------------------------------------------------------------
    def prepare_impl(self) -> None:
        """The profile from the points to serve and the engine's cache key, once: not per point."""
        self.exe = shutil.which("trtexec")
        if self.exe is None:
            raise UserError(f"trtexec is not on PATH; {self.install_hint}")
        self.onnx_path = Path(self.model.onnx_path)
        self.inputs = tp.onnx_inputs(self.onnx_path)
        self.profile = self.options.get("profile") or tb.derive_profile(
            inputs=self.inputs, points=self.shapes, max_seq_len=self.options.get("max_seq_len"),
            max_batch=self.options.get("max_batch"))
        self.cache_dir = ensure_writable_dir(self.options.get("cache_dir")
                                             or tb.default_cache_dir(self.options.get("out_dir") or "lstminfer-out"))
        self.major = _major_from_help(_help(self.exe))
        self.tf32 = bool(self.options.get("tf32", True))
        key = hashlib.sha256(f"{tb.sha256_file(self.onnx_path)}|{self.precision}|{self.profile.to_dict()}|{self.exe}|"
                             f"{self.major}|{self.tf32}".encode()).hexdigest()[:16]
        self.engine = self.cache_dir / f"trtexec-{self.onnx_path.stem}-{self.precision}-{key}.engine"

    def benchmark(self, config: Any) -> dict[str, Any]:
        """Run trtexec at (config.seq_len, config.batch) with config's warm-up/duration/iterations; one record.

        Like bench's other backends, a failure becomes ``{"error": one line}`` and the sweep goes on.
        """
        ok, why = self.supports()
        if not ok:
            return {"skipped": why}
        try:
            self.prepare()
            return self._benchmark(config)
        except UserError as err:
            return {"error": str(err)}

    def _benchmark(self, config: Any) -> dict[str, Any]:
        shapes = tp.shapes_at(self.profile, self.inputs, config.seq_len, config.batch)
        self.profile.check(shapes)
        stem = f"trtexec-{self.onnx_path.stem}-{self.precision}"
        times = self.cache_dir / f"{stem}-{config.seq_len}x{config.batch}.times.json"
        times.unlink(missing_ok=True)  # never import a previous run's trace
        argv = trtexec.timing_command(self.engine, shapes, config.warmup_ms, config.duration_s, config.iterations,
                                      data_transfers=not config.no_data_transfers, trt_major=self.major,
                                      export_times=times, executable=self.exe)
        if not self.engine.is_file():  # build and time in one run; the engine is saved for the next point
            build = trtexec.build_command(self.onnx_path, self.engine, self.profile, self.precision,
                                          timing_cache=tb.timing_cache_path(self.cache_dir), trt_major=self.major,
                                          executable=self.exe, tf32=self.tf32)
            argv = build[:2] + argv[2:] + [a for a in build[2:] if a != "--skipInference"]
        log_path = times.with_suffix("").with_suffix(".log")
        text = _run(argv, log_path)
        log = trtexec.parse_log(text, source=str(log_path))
        record = trtexec.to_bench_record(log, load_times(times) if times.is_file() else None,
                                         model=self.model.name, seq_len=config.seq_len, batch=config.batch,
                                         precision=self.precision)
        record.update({"engine": str(self.engine), "log": str(log_path), "profile": self.profile.to_dict()})
        return record


def _help(exe: str) -> str:
    try:
        done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"cannot run {exe} --help: {err}") from err
    return done.stdout + done.stderr


def _major_from_help(text: str) -> int:
    """TensorRT major version of this trtexec: its banner, or TensorRT 11's new flags."""
    m = re.search(r"\[TensorRT v(\d+)\]", text)
    if m:
        return int(trtexec.decode_version(m.group(1)).split(".")[0])
    return 11 if "--includeDataTransfers" in text else 10


def _run(argv: list[str], log_path: Path) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        command = trtexec.command_string(argv)
        raise UserError(f"trtexec ran longer than {TIMEOUT_S} s and was stopped: {command}") from err
    except OSError as err:
        raise UserError(f"cannot run trtexec: {err}") from err
    text = done.stdout + done.stderr
    write_text_atomic(log_path, text)
    if done.returncode != 0:
        errors = [line.split("] ", 2)[-1] for line in text.splitlines() if "[E]" in line]
        first = errors[0] if errors else f"exit code {done.returncode}"  # the first error is the cause
        raise UserError(f"trtexec failed ({first}); full log: {log_path}")
    return text
