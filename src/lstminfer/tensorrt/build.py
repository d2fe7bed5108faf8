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
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError
from lstminfer.measure.store import ensure_writable_dir, read_json, write_json_atomic, write_text_atomic
from lstminfer.model.base import TensorInfo
from lstminfer.onnx.inspect import export_batch_first, graph_dim_roles, graph_inputs
from lstminfer.onnx.shapes import Shapes, dim_roles, format_dims, format_shapes

DEFAULT_MAX_SEQ_LEN = 512
DEFAULT_MAX_BATCH = 64
DEFAULT_WORKSPACE_MB = 1024
INSTALL_HINT = 'pip install "lstminfer[tensorrt]"'
SIDECAR_SCHEMA = 1


# ---- ONNX inputs and profiles -------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxInputs:
    """A file's real inputs (``TensorInfo``: anonymous dims named ``input[axis]``), its metadata_props,
    and the role of each symbolic dim by the one rule ``inspect`` uses (``lstminfer.onnx.shapes.dim_roles``)."""

    inputs: list[TensorInfo]
    metadata: dict[str, str]
    roles: dict[str, str]

    @property
    def dynamic(self) -> list[TensorInfo]:
        return [i for i in self.inputs if i.dims and any(isinstance(d, str) for d in i.dims)]

    def role(self, inp: TensorInfo, axis: int) -> str:
        d = inp.dims[axis]
        if d not in self.roles:
            raise UserError(f"cannot tell what dynamic axis {axis} of input {inp.name!r} ({d}) is: give "
                            "--min-shapes/--opt-shapes/--max-shapes for it")
        return self.roles[d]


def onnx_inputs(onnx_path: str | Path) -> OnnxInputs:
    """The real inputs of an ONNX file (initializers excluded), its metadata_props and its dims' roles."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist; export one with `lstminfer export`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a bad file
        raise UserError(f"{path} is not a readable ONNX file: {str(err).splitlines()[0] if str(err) else err}") from err
    inputs = graph_inputs(proto)
    roles = dim_roles(inputs, graph_dim_roles(proto, inputs), export_batch_first(proto))
    return OnnxInputs(inputs, {p.key: p.value for p in proto.metadata_props}, roles)


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile: min / opt / max shape of every dynamic input."""

    min: Shapes = field(default_factory=dict)
    opt: Shapes = field(default_factory=dict)
    max: Shapes = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {k: {n: list(d) for n, d in getattr(self, k).items()} for k in ("min", "opt", "max")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        try:
            return cls(**{k: {n: tuple(int(x) for x in d) for n, d in data[k].items()} for k in ("min", "opt", "max")})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"not an optimization profile: {data!r}") from err

    def describe(self) -> str:
        return "; ".join(f"{n}: {format_dims(self.min[n])} .. {format_dims(self.max[n])} "
                         f"(opt {format_dims(self.opt[n])})" for n in self.min)

    def check(self, shapes: dict[str, Sequence[int]]) -> None:
        """UserError naming the profile's range when a shape lies outside it."""
        for name, shape in shapes.items():
            if name not in self.min:
                continue
            lo, hi, shape = self.min[name], self.max[name], tuple(int(s) for s in shape)
            if len(shape) != len(lo):
                raise UserError(f"input {name!r} has {len(shape)} dimensions ({format_dims(shape)}); the engine's "
                                f"profile has {len(lo)} (min {format_dims(lo)}, max {format_dims(hi)})")
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                if any(s > b for s, b in zip(shape, hi)):
                    fix = f"--max-shapes {name}:{format_dims(tuple(max(s, b) for s, b in zip(shape, hi)))}"
                else:
                    fix = f"--min-shapes {name}:{format_dims(tuple(min(s, a) for s, a in zip(shape, lo)))}"
                raise UserError(f"input {name!r} has shape {format_dims(shape)}, outside the engine's profile "
                                f"(min {format_dims(lo)}, max {format_dims(hi)}); rebuild with {fix}")


def example_shape(metadata: dict[str, str]) -> tuple[int, int] | None:
    """(seq_len, batch) that `lstminfer export` stored in the file, if it did."""
    m = re.fullmatch(r"(\d+)x(\d+)", metadata.get("lstminfer.example_shape", ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def derive_profile(onnx_path: str | Path | None = None, seq_len: int | None = None, batch: int | None = None,
                   max_seq_len: int | None = None, max_batch: int | None = None,
                   min_shapes: Shapes | None = None, opt_shapes: Shapes | None = None,
                   max_shapes: Shapes | None = None, inputs: OnnxInputs | None = None,
                   points: Sequence[tuple[int, int]] = ()) -> Profile:
    """The default profile of a model's dynamic inputs, with the user's trtexec-style overrides on top.

    Sequence and batch axes: min 1, opt the bench shape (``seq_len``, ``batch``; default the first of
    ``points``, else the export's example shape), max the largest of ``points`` -- the points a runner
    must serve -- or, for an engine built on its own (``lstminfer build``), ``max(DEFAULT_MAX_SEQ_LEN,
    seq_len)`` / ``max(DEFAULT_MAX_BATCH, batch)``; ``max_seq_len`` / ``max_batch`` override either.
    Static axes keep their size. An input named in ``min_shapes`` etc. takes the user's shape.
    """
    if inputs is None:
        if onnx_path is None:
            raise ValueError("derive_profile needs onnx_path or inputs")
        inputs = onnx_inputs(onnx_path)
    if points:
        seq_len, batch = seq_len or points[0][0], batch or points[0][1]
    example = example_shape(inputs.metadata)
    by_name = {i.name: i for i in inputs.inputs}
    overrides = {"min": min_shapes or {}, "opt": opt_shapes or {}, "max": max_shapes or {}}
    for kind, given in overrides.items():
        for name, dims in given.items():
            if name not in by_name:
                raise UserError(f"--{kind}-shapes names {name!r}, which is not an input of the model "
                                f"(inputs: {', '.join(by_name) or 'none'})")
            _check_rank(by_name[name], dims, kind)
    needs_default = [i for i in inputs.dynamic if not all(i.name in overrides[k] for k in overrides)]
    roles = {inputs.role(i, axis) for i in needs_default for axis, d in enumerate(i.dims) if isinstance(d, str)}
    if "seq" in roles and seq_len is None:
        if example is None:
            raise UserError("the model has a dynamic sequence axis: give --seq-len (the length to optimize for)")
        seq_len = example[0]
    if "batch" in roles and batch is None:
        batch = example[1] if example else 1
    if points:
        largest = (max(max(s for s, _ in points), seq_len or 1), max(max(b for _, b in points), batch or 1))
    else:
        largest = (max(DEFAULT_MAX_SEQ_LEN, seq_len or 1), max(DEFAULT_MAX_BATCH, batch or 1))
    sizes = {"seq": (1, seq_len, max_seq_len or largest[0]), "batch": (1, batch, max_batch or largest[1])}
    out: dict[str, Shapes] = {"min": {}, "opt": {}, "max": {}}
    for inp in inputs.dynamic:
        for k, kind in enumerate(("min", "opt", "max")):
            if inp.name in overrides[kind]:
                out[kind][inp.name] = tuple(overrides[kind][inp.name])
                continue
            out[kind][inp.name] = tuple(d if isinstance(d, int) else int(sizes[inputs.role(inp, axis)][k])
                                        for axis, d in enumerate(inp.dims))
    profile = Profile(**out)
    _check_order(profile)
    return profile


def _check_rank(inp: TensorInfo, dims: Sequence[int], kind: str) -> None:
    if len(dims) != len(inp.dims):
        raise UserError(f"--{kind}-shapes {inp.name}:{format_dims(dims)} has {len(dims)} dimensions; "
                        f"the model's {inp.name} has {len(inp.dims)}")
    for axis, (d, static) in enumerate(zip(dims, inp.dims)):
        if isinstance(static, int) and d != static:
            raise UserError(f"--{kind}-shapes {inp.name}:{format_dims(dims)}: axis {axis} is fixed at {static} "
                            "in the model")


def _check_order(profile: Profile) -> None:
    for name in profile.min:
        lo, mid, hi = profile.min[name], profile.opt[name], profile.max[name]
        if not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise UserError(f"profile for {name!r} must satisfy min <= opt <= max on every axis, got "
                            f"min {format_dims(lo)}, opt {format_dims(mid)}, max {format_dims(hi)}")


def shapes_at(profile: Profile, inputs: OnnxInputs, seq_len: int, batch: int) -> Shapes:
    """Concrete input shapes at one (seq_len, batch) point, for every dynamic input of the profile."""
    return {inp.name: tuple(d if isinstance(d, int) else (seq_len if inputs.role(inp, axis) == "seq" else batch)
                            for axis, d in enumerate(inp.dims))
            for inp in inputs.dynamic}


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
