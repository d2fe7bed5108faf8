"""TensorRT engines from ONNX files: optimization profiles, the build, the cache and its sidecars.

Everything but ``build_serialized_engine`` and ``runtime_facts`` works without TensorRT, so profiles,
cache keys and sidecar checks are tested on any machine. TensorRT is imported lazily (10 or 11).

Cache layout (default ``<--out>/trt-cache``)::

    trt-cache/
      <onnx stem>-<precision>-<key>.engine       serialized engine
      <onnx stem>-<precision>-<key>.engine.json  sidecar: what it was built from and on
      timing.cache                               TensorRT's timing cache, shared by every build

``key`` hashes the ONNX file's sha256, precision, profile, workspace, TF32, TensorRT version and GPU:
change any of them and the next run builds a new engine instead of using a stale one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError
from lstminfer.measure.store import ensure_writable_dir, read_json, write_json_atomic, write_text_atomic
from lstminfer.onnx.shapes import format_shapes
from lstminfer.tensorrt.profile import Profile, derive_profile

DEFAULT_WORKSPACE_MB = 1024
INSTALL_HINT = 'pip install "lstminfer[tensorrt]"'
SIDECAR_SCHEMA = 1


# ---- cache, sidecars ----------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    return digest.hexdigest()


def cache_key(onnx_sha256: str, precision: str, profile: Profile, tensorrt_version: str, gpu_name: str,
              compute_capability: str, workspace_mb: int = DEFAULT_WORKSPACE_MB, tf32: bool = True) -> str:
    """16 hex digits naming one engine: everything that changes the engine is in it."""
    facts = {"onnx_sha256": onnx_sha256, "precision": precision, "profile": profile.to_dict(),
             "tensorrt_version": tensorrt_version, "gpu": gpu_name, "compute_capability": compute_capability,
             "workspace_mb": int(workspace_mb), "tf32": bool(tf32)}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir(out_dir: str | Path = "lstminfer-out") -> Path:
    return Path(out_dir) / "trt-cache"


def cached_engine_path(cache_dir: str | Path, onnx_path: str | Path, precision: str, key: str) -> Path:
    return Path(cache_dir) / f"{Path(onnx_path).stem}-{precision}-{key}.engine"


def timing_cache_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "timing.cache"


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise UserError(f"engine {engine_path} has no sidecar {path.name}: lstminfer cannot tell what it was built "
                        "from; rebuild it with `lstminfer build`")
    try:
        data = read_json(path)
    except UserError as err:
        raise UserError(f"sidecar of engine {engine_path} is unreadable ({err}); rebuild the engine") from err
    needed = {"tensorrt_version", "gpu", "compute_capability", "precision", "profile", "onnx_sha256",
              "engine_sha256", "engine_bytes"}
    if not isinstance(data, dict) or not needed <= set(data):
        raise UserError(f"sidecar {path} lacks {', '.join(sorted(needed - set(data or {})))}; rebuild the engine")
    return data


def check_sidecar(sidecar: dict[str, Any], engine_path: str | Path, tensorrt_version: str, gpu_name: str,
                  compute_capability: str) -> None:
    """An engine runs only on the TensorRT version and GPU it was built with: say so before TensorRT does."""
    built = (sidecar["tensorrt_version"], sidecar["gpu"], sidecar["compute_capability"])
    here = (tensorrt_version, gpu_name, compute_capability)
    if built != here:
        raise UserError(f"engine {engine_path} was built with TensorRT {built[0]} on {built[1]} (sm {built[2]}); "
                        f"this is TensorRT {here[0]} on {here[1]} (sm {here[2]}): rebuild it "
                        "(`lstminfer build`, or delete it from the cache)")


def read_engine(engine_path: str | Path, sidecar: dict[str, Any]) -> bytes:
    """The engine's bytes, after checking size and sha256 against the sidecar (truncated/corrupt -> UserError)."""
    path = Path(engine_path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read engine {path}: {err.strerror}") from err
    if len(data) != sidecar["engine_bytes"]:
        raise UserError(f"engine {path} is truncated or was overwritten ({len(data)} bytes, the sidecar says "
                        f"{sidecar['engine_bytes']}); rebuild it")
    if hashlib.sha256(data).hexdigest() != sidecar["engine_sha256"]:
        raise UserError(f"engine {path} is corrupt (its sha256 differs from the sidecar's); rebuild it")
    return data


def make_sidecar(engine: bytes, onnx_path: str | Path, onnx_sha256: str, precision: str, profile: Profile,
                 facts: dict[str, str], workspace_mb: int, tf32: bool, build_time_s: float) -> dict[str, Any]:
    from lstminfer import __version__

    return {"schema": SIDECAR_SCHEMA, "lstminfer": __version__, **facts, "precision": precision,
            "profile": profile.to_dict(), "onnx": str(onnx_path), "onnx_sha256": onnx_sha256,
            "workspace_mb": int(workspace_mb), "tf32": bool(tf32), "build_time_s": round(build_time_s, 3),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "engine_bytes": len(engine), "engine_sha256": hashlib.sha256(engine).hexdigest()}


def write_engine(engine_path: str | Path, engine: bytes, sidecar: dict[str, Any]) -> Path:
    """Engine first, sidecar last (both atomic): a sidecar never describes a missing or half engine."""
    write_text_atomic(engine_path, engine)
    write_json_atomic(sidecar_path(engine_path), sidecar)
    return Path(engine_path)


# ---- TensorRT itself ----------------------------------------------------------------------------


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as err:
        raise UserError(f"TensorRT is not installed ({err}); {INSTALL_HINT}") from err
    return tensorrt


def runtime_facts() -> dict[str, str]:
    """TensorRT version, GPU name and compute capability here (what an engine is tied to)."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise UserError("TensorRT needs a CUDA GPU and torch sees none")
    major, minor = torch.cuda.get_device_capability(0)
    return {"tensorrt_version": trt.__version__, "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}"}


def format_parser_errors(onnx_path: str | Path, errors: Sequence[Any]) -> str:
    """One line: every ONNX parser error with its node (index, name, operator) and description."""
    parts = []
    for err in errors:
        where = []
        for attr, label in (("node", "node"), ("node_name", ""), ("node_operator", "")):
            value = _call(err, attr)
            if value not in (None, "", -1):
                where.append(f"{label} {value}".strip())
        desc = " ".join(str(_call(err, "desc") or err).split())
        parts.append(f"{' '.join(where)}: {desc}" if where else desc)
    return f"TensorRT cannot parse {onnx_path}: " + "; ".join(parts)


def _call(obj: Any, attr: str) -> Any:
    fn = getattr(obj, attr, None)
    try:
        return fn() if callable(fn) else fn
    except (AttributeError, TypeError, RuntimeError):  # an older parser lacks some accessors
        return None


def build_serialized_engine(onnx_path: str | Path, profile: Profile, precision: str = "fp32",
                            workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: str | Path | None = None,
                            tf32: bool = True) -> bytes:
    """Parse the ONNX file and build an engine with one optimization profile (TensorRT 10/11 Python API)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode from TensorRT 10 on
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise UserError(format_parser_errors(onnx_path, [parser.get_error(i) for i in range(parser.num_errors)]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision != "fp32":
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is None:  # TensorRT 11: strongly typed only, the ONNX types decide
            raise UserError(f"TensorRT {trt.__version__} builds strongly typed networks and has no {precision} "
                            f"builder flag: export the ONNX file in {precision} and build it as fp32")
        config.set_flag(flag)
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    trt_profile = builder.create_optimization_profile()
    for name in profile.min:
        trt_profile.set_shape(name, profile.min[name], profile.opt[name], profile.max[name])
    config.add_optimization_profile(trt_profile)
    cache = None
    if timing_cache is not None:
        path = Path(timing_cache)
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path} (its messages are above); "
                        f"profile {profile.describe()}")
    if cache is not None:
        write_text_atomic(timing_cache, bytes(memoryview(cache.serialize())))
    return bytes(memoryview(serialized))


@dataclass
class EngineRequest:
    """What to build: one ONNX file, precision and profile, and where the cache lives."""

    onnx_path: Path
    profile: Profile
    precision: str = "fp32"
    cache_dir: Path = field(default_factory=default_cache_dir)
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    tf32: bool = True
    engine_path: Path | None = None  # an explicit -o FILE instead of the cache's name

    def path_for(self, facts: dict[str, str], onnx_sha256: str) -> Path:
        if self.engine_path is not None:
            return Path(self.engine_path)
        key = cache_key(onnx_sha256, self.precision, self.profile, facts["tensorrt_version"], facts["gpu"],
                        facts["compute_capability"], self.workspace_mb, self.tf32)
        return cached_engine_path(self.cache_dir, self.onnx_path, self.precision, key)


def reusable(engine_path: Path, sidecar: dict[str, Any], onnx_sha256: str, request: EngineRequest) -> bool:
    """Whether an existing engine was built from exactly this request (an explicit -o path may be stale)."""
    return (sidecar.get("onnx_sha256") == onnx_sha256 and sidecar.get("precision") == request.precision
            and sidecar.get("profile") == request.profile.to_dict()
            and sidecar.get("workspace_mb", request.workspace_mb) == request.workspace_mb
            and sidecar.get("tf32", request.tf32) == request.tf32)


def ensure_engine(request: EngineRequest, force: bool = False,
                  facts: dict[str, str] | None = None) -> tuple[Path, dict[str, Any], bool]:
    """(engine path, sidecar, built now?): the cached engine when it matches, else a fresh build."""
    facts = facts or runtime_facts()
    onnx_sha256 = sha256_file(request.onnx_path)
    engine_path = request.path_for(facts, onnx_sha256)
    if not force and engine_path.is_file() and sidecar_path(engine_path).is_file():
        sidecar = read_sidecar(engine_path)
        if reusable(engine_path, sidecar, onnx_sha256, request):
            check_sidecar(sidecar, engine_path, facts["tensorrt_version"], facts["gpu"], facts["compute_capability"])
            read_engine(engine_path, sidecar)  # truncated/corrupt -> UserError now, not in TensorRT
            return engine_path, sidecar, False
    start = time.perf_counter()
    engine = build_serialized_engine(request.onnx_path, request.profile, request.precision, request.workspace_mb,
                                     timing_cache_path(request.cache_dir), request.tf32)
    sidecar = make_sidecar(engine, request.onnx_path, onnx_sha256, request.precision, request.profile, facts,
                           request.workspace_mb, request.tf32, time.perf_counter() - start)
    write_engine(engine_path, engine, sidecar)
    return engine_path, sidecar, True


# ---- ONNX Runtime's TensorRT execution provider -------------------------------------------------


def ort_tensorrt_provider_options(onnx_path: str | Path, profile: Profile | None, cache_dir: str | Path,
                                  precision: str = "fp32", workspace_mb: int = DEFAULT_WORKSPACE_MB) -> dict[str, Any]:
    """Options for ``("TensorrtExecutionProvider", options)`` that stop mid-run engine rebuilds.

    Without explicit profile shapes the provider rebuilds its engine whenever an input shape leaves the
    range it has seen so far (inside a benchmark or a stream); with them it builds once, and the engine
    and timing caches make the next session load instead of build. ``onnx_path`` only names the cache
    subdirectory, so two models never share (and evict) one another's engines. ``profile=None`` derives
    the default profile from the file (opt = the export's example shape).
    """
    if precision not in ("fp32", "fp16", "bf16"):
        raise UserError(f"unknown precision {precision!r}: use fp32, fp16 or bf16")
    if profile is None:
        profile = derive_profile(onnx_path)
    cache = ensure_writable_dir(Path(cache_dir) / "ort-trt" / f"{Path(onnx_path).stem}-{precision}")
    options: dict[str, Any] = {
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
        "trt_max_workspace_size": int(workspace_mb) << 20,
        "trt_fp16_enable": precision == "fp16",
    }
    if precision == "bf16":
        options["trt_bf16_enable"] = True  # ONNX Runtime 1.19 on
    if profile.min:
        options.update({"trt_profile_min_shapes": format_shapes(profile.min),
                        "trt_profile_opt_shapes": format_shapes(profile.opt),
                        "trt_profile_max_shapes": format_shapes(profile.max)})
    return options
