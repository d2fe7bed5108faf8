"""Argument groups shared by the commands, after Polygraphy's argument groups.

Each group adds its flags to a parser (``add_to``) and reads them back into a typed frozen dataclass
(``parse``), so a command never reaches into the Namespace for another group's flags:

    ModelArgs    FILE / --preset / sizes / --model, the file's inputs, --seed, --seq-len, --batch -> ModelOptions
    BackendArgs  --backends, --device, --precision, --tf32, --threads, --cpu-mode       -> BackendOptions
    TimingArgs   --warmup, --duration, --iterations, --no-data-transfers, --raw-times    -> TimingOptions
    GridArgs     sweep's lists: --seq-len, --batch, --precision; --resume, --retry-errors -> GridOptions
    OutputArgs   --json FILE ('-': stdout), --out DIR                                     -> OutputOptions
    ExportArgs   --exporter

Every number is checked by its argparse ``type`` (commands/values.py), so a bad value is a one-line usage
error (exit 2) before any work starts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from lstminfer.commands.values import (
    MAX_SEED,
    int_list,
    non_negative_float,
    non_negative_int,
    positive_int,
    precision_list,
    seed_int,
    split_list,
)
from lstminfer.errors import UserError

SIZE_FLAGS = ("kind", "input_size", "hidden_size", "num_layers", "bidirectional", "batch_first", "bias", "proj_size")


def flag(dest: str) -> str:
    """A Namespace attribute's flag: input_size -> --input-size."""
    return "--" + dest.replace("_", "-")


# ---- the model -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileOptions:
    """A user's ONNX / TorchScript file and what its inputs need."""

    path: str | None = None
    shapes: str | None = None
    values: tuple[str, ...] = ()  # --input NAME=VALUE, as given
    inputs_npz: str | None = None
    state: tuple[str, ...] = ()
    onnx: str | None = None

    def given(self) -> list[str]:
        """The file flags that were given (they apply to a FILE only)."""
        return [f for f, value in (("--shapes", self.shapes), ("--input", self.values), ("--inputs", self.inputs_npz),
                                   ("--state", self.state), ("--onnx", self.onnx)) if value]

    def load(self, seq_len: int | None = None, batch: int | None = None, validate: bool = True) -> Any:
        from lstminfer.model.file import load_model_file
        from lstminfer.onnx.shapes import parse_values

        return load_model_file(self.path, shapes=self.shapes, values=parse_values(list(self.values) or None),
                               inputs_npz=self.inputs_npz, onnx=self.onnx, seq_len=seq_len, batch=batch,
                               state=list(self.state) or None, validate=validate)


class FileArgs:
    """The inputs of a user's file: trtexec-style shapes, values, arrays, state pairs, the ONNX twin of a .pt."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("model file (FILE)")
        g.add_argument("--shapes", default=None, metavar="NAME:AxB,...",
                       help="shapes of inputs with symbolic dims, trtexec syntax (the name is everything before the "
                            "last colon)")
        g.add_argument("--input", action="append", default=None, dest="input_values", metavar="NAME=VALUE",
                       help="fill input NAME with VALUE (e.g. sr=16000); repeatable")
        g.add_argument("--inputs", default=None, dest="inputs_npz", metavar="FILE.npz",
                       help="input arrays by name (dtype and shape must fit the model)")
        g.add_argument("--state", action="append", default=None, metavar="IN:OUT",
                       help="a recurrent state pair fed back between chunks (default: found by name)")
        g.add_argument("--onnx", default=None, metavar="FILE.onnx",
                       help="the ONNX export of a TorchScript FILE: its inputs, and the reference it is checked "
                            "against")

    @staticmethod
    def parse(args: argparse.Namespace) -> FileOptions:
        return FileOptions(path=getattr(args, "file", None), shapes=args.shapes,
                           values=tuple(args.input_values or ()), inputs_npz=args.inputs_npz,
                           state=tuple(args.state or ()), onnx=args.onnx)


@dataclass(frozen=True)
class ModelOptions:
    """What the model flags ask for: a FILE, a user's module, or a preset modified by size flags."""

    file: FileOptions
    preset: str | None = None
    sizes: tuple[tuple[str, Any], ...] = ()  # the size flags given, in SIZE_FLAGS order
    module_ref: str | None = None  # --model FILE.py:factory
    weights: str | None = None
    seed: int = 0
    with_state: bool = True
    seq_len: int | None = None
    batch: int | None = None
    dynamic: str | None = None  # --dynamic, a whole model's dynamic axes (model/whole.py)

    def load(self) -> Any:
        """The Model, with its default shape; one line on stdout says which model it is."""
        model = self._file_model() if self.file.path else self._torch_model()
        print(f"model: {describe_model(model)}")
        return model

    def _file_model(self) -> Any:
        clash = [f for f, on in (("--preset", self.preset), ("--model", self.module_ref),
                                 ("--weights", self.weights)) if on]
        clash += [flag(k) for k, _ in self.sizes]
        if clash:
            raise UserError(f"give a model FILE or {', '.join(clash)}, not both")
        return self.file.load(seq_len=self.seq_len, batch=self.batch)

    def _torch_model(self) -> Any:
        from lstminfer.model.base import Model
        from lstminfer.model.spec import build_module, check_memory, preset, spec_of_module
        from lstminfer.model.whole import module_or_whole

        # --shapes gives a whole model's example inputs (model/whole.py)
        given = [g for g in self.file.given() if not (self.module_ref and g == "--shapes")]
        if self.dynamic and not self.module_ref:
            raise UserError("--dynamic names the dynamic axes of a --model FILE.py:factory's inputs")
        if given:
            raise UserError(f"{given[0]} applies to a model FILE (e.g. `lstminfer verify model.onnx {given[0]} ...`)")
        sizes = dict(self.sizes)
        base = preset(self.preset or "seed")
        if self.module_ref:
            module = module_or_whole(self.module_ref, self.weights, shapes=self.file.shapes, dynamic=self.dynamic,
                                     seq_len=self.seq_len, batch=self.batch)
            if isinstance(module, Model):  # a whole model with recurrent layers inside
                if sizes:
                    raise UserError(f"{flag(next(iter(sizes)))} sets the size of a preset or of one recurrent stack, "
                                    f"not of a whole model like {self.module_ref}; drop it")
                return module
            spec = spec_of_module(module)  # not None: module_or_whole returns a bare module only then
            for key, value in sizes.items():
                if getattr(spec, key) != value:
                    raise UserError(f"{flag(key)} {value} does not match the model's {key} {getattr(spec, key)}; "
                                    "drop the flag or fix the model")
            name, seq_len, batch = self.module_ref, self.seq_len or 16, self.batch or 2
        else:
            if self.weights:
                raise UserError("--weights needs --model (built-in models take --seed)")
            # Size flags modify the chosen preset (default seed): `--no-bidirectional` is the seed model
            # without its backward direction, not a new 1-layer model.
            spec = replace(base.spec, **sizes)  # ModelSpec.__post_init__ checks the combination
            changed = [f"{k}={v}" for k, v in sizes.items() if getattr(base.spec, k) != v]
            name = (self.preset or "seed") + (f" with {', '.join(changed)}" if changed else "")
            seq_len, batch = self.seq_len or base.seq_len, self.batch or base.batch
            check_memory(spec, seq_len, batch)
            module = build_module(spec, seed=self.seed)
        return Model(name=name, spec=spec, module=module, seq_len=seq_len, batch=batch, with_state=self.with_state)


def describe_model(model: Any) -> str:
    """One line: the model's name, what it is, and the shape it runs at."""
    spec = model.spec
    if spec is not None:
        state = "h0/c0 given" if model.with_state and spec.kind == "lstm" else (
            "h0 given" if model.with_state else "no initial state")
        return f"{model.name}: {spec.describe()}, seq {model.seq_len} x batch {model.batch}, {state}"
    inputs = ", ".join(model.input_names)
    return f"{model.name}: inputs {inputs}, seq {model.seq_len} x batch {model.batch}"


class ModelArgs:
    """FILE, --preset, the size flags, --model/--weights, --seed, --no-state and (shape=True) --seq-len/--batch."""

    def __init__(self, shape: bool = True):
        self.shape = shape

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        from lstminfer.model.spec import KINDS, PRESETS

        parser.add_argument("file", nargs="?", default=None, metavar="FILE",
                            help="your own model file: ONNX (.onnx) or TorchScript (.pt); instead of "
                                 "--preset/--model")
        g = parser.add_argument_group("model (size flags modify the preset)")
        g.add_argument("--preset", choices=list(PRESETS), default=None,
                       help="a built-in model (default: seed, the tutorial's 10-layer bidirectional LSTM)")
        g.add_argument("--kind", choices=list(KINDS), default=None,
                       help="recurrent layer type: lstm (nn.LSTM) or gru (nn.GRU)")
        g.add_argument("--input-size", type=positive_int, default=None, metavar="N",
                       help="features per time step (nn.LSTM's input_size)")
        g.add_argument("--hidden-size", type=positive_int, default=None, metavar="N",
                       help="features of the hidden state h (nn.LSTM's hidden_size)")
        g.add_argument("--num-layers", type=positive_int, default=None, metavar="N", help="stacked layers")
        g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                       help="run each layer in both directions")
        g.add_argument("--batch-first", action=argparse.BooleanOptionalAction, default=None,
                       help="input laid out [batch, seq, features] instead of [seq, batch, features]")
        g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                       help="bias terms (--no-bias drops them)")
        g.add_argument("--proj-size", type=non_negative_int, default=None, metavar="N",
                       help="LSTM projection size (PyTorch only: no ONNX export)")
        g.add_argument("--model", default=None, metavar="FILE.py:factory",
                       help="your own model: a factory returning an nn.Module with nn.LSTM / nn.GRU layers inside, "
                            "or (module, example_inputs); without example inputs give --shapes")
        g.add_argument("--dynamic", default=None, metavar="NAME:AXIS=LABEL,...",
                       help="dynamic axes of --model's inputs, e.g. x:0=batch,1=seq (default: the first input's "
                            "batch and time axes, found by probing)")
        g.add_argument("--weights", default=None, metavar="FILE",
                       help="a state_dict for --model (torch.load weights_only)")
        g.add_argument("--seed", type=seed_int, default=0, metavar="N",
                       help=f"seed for the weights of built-in models and for inputs (0 to {MAX_SEED})")
        g.add_argument("--no-state", action="store_true", help="do not feed h0/c0 (the tutorial feeds them)")
        if self.shape:
            g.add_argument("--seq-len", type=positive_int, default=None, metavar="N",
                           help="sequence length (default: the preset's)")
            g.add_argument("--batch", type=positive_int, default=None, metavar="N",
                           help="batch size (default: the preset's)")
        FileArgs().add_to(parser)

    @staticmethod
    def parse(args: argparse.Namespace) -> ModelOptions:
        sizes = tuple((k, getattr(args, k)) for k in SIZE_FLAGS if getattr(args, k, None) is not None)
        return ModelOptions(file=FileArgs.parse(args), preset=args.preset, sizes=sizes, module_ref=args.model,
                            weights=args.weights, seed=args.seed, with_state=not args.no_state,
                            seq_len=getattr(args, "seq_len", None), batch=getattr(args, "batch", None),
                            dynamic=getattr(args, "dynamic", None))


def model_from_args(args: argparse.Namespace) -> Any:
    """The Model the model flags ask for (FILE / --preset / sizes / --model), with its default shape."""
    return ModelArgs.parse(args).load()


# ---- backends --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendOptions:
    backends: tuple[str, ...] | None = None  # NAME[:DEVICE], as given; None: every one available
    device: str = "all"
    precision: str = "fp32"
    tf32: bool = False
    threads: int | None = None
    cpu_mode: str = "latency"
    fused_tune: bool = False

    def runner_options(self, out_dir: Any = None) -> dict[str, Any]:
        """The options every Runner receives (TensorRT's engine cache lives under out_dir)."""
        options = {"tf32": self.tf32, "threads": self.threads, "cpu_mode": self.cpu_mode,
                   "fused_tune": self.fused_tune}
        return {**options, "out_dir": out_dir} if out_dir is not None else options


class BackendArgs:
    """--backends, --device, (precision=True) --precision, --tf32, --threads, --cpu-mode, --fused-tune."""

    def __init__(self, precision: bool = True):
        self.precision = precision

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        from lstminfer.backends.base import PRECISIONS

        g = parser.add_argument_group("backends")
        g.add_argument("--backends", default=None, metavar="NAME[:DEVICE],...",
                       help="comma-separated backends (default: every one available here; see `lstminfer backends`)")
        g.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                       help="run the backends on this device only (default all: every device here)")
        if self.precision:
            g.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                           help="weights and activations of the backends under test (default fp32; the reference "
                                "is always float64)")
        g.add_argument("--tf32", action="store_true",
                       help="let cuDNN/cuBLAS use TF32 for fp32 (off: fp32 is IEEE fp32)")
        g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="CPU backends: torch intra-op threads, ONNX Runtime intra-op threads, OpenVINO "
                            "inference threads (default: each runtime's own; the count that ran is recorded)")
        g.add_argument("--cpu-mode", choices=["latency", "throughput"], default="latency",
                       help="openvino: latency (one infer request) or throughput (the batch split over several "
                            "requests in flight); onnxruntime: throughput runs the batch as concurrent groups of at "
                            "most 4 rows, --threads divided among them (for LSTMs with batch > 4 on many cores; "
                            "docs/cpu.md)")
        g.add_argument("--fused-tune", action="store_true",
                       help="fused, fused-graph on CUDA: time a few candidate kernel plans of each shape at prepare "
                            "(seconds a shape, then cached in ~/.cache/lstminfer) and run the fastest that agrees "
                            "with the default plan's outputs (docs/fused_kernel.md, \"Tuning the plan\")")

    @staticmethod
    def parse(args: argparse.Namespace) -> BackendOptions:
        requested = split_list(args.backends)
        return BackendOptions(backends=tuple(requested) if requested else None, device=args.device,
                              precision=getattr(args, "precision", None) or "fp32", tf32=args.tf32,
                              threads=args.threads, cpu_mode=args.cpu_mode,
                              fused_tune=getattr(args, "fused_tune", False))


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """Runner options from any command with --tf32 / --threads / --cpu-mode (serve defines its own backend flags)."""
    return BackendOptions(tf32=getattr(args, "tf32", False), threads=getattr(args, "threads", None),
                          cpu_mode=getattr(args, "cpu_mode", None) or "latency").runner_options()


# ---- timing ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimingOptions:
    """trtexec's timing rules: warm-up by time, then at least `iterations` queries and `duration_s` seconds."""

    warmup_ms: float = 200.0
    duration_s: float = 3.0
    iterations: int = 10
    no_data_transfers: bool = False
    keep_raw: bool = False


class TimingArgs:
    """--warmup, --duration, --iterations, --no-data-transfers and (raw_times=True) --raw-times."""

    def __init__(self, raw_times: bool = True):
        self.raw_times = raw_times

    def add_to(self, parser: argparse.ArgumentParser) -> Any:
        """Adds the flags; returns the group, for a command's own timing flags."""
        g = parser.add_argument_group("timing (trtexec's defaults)")
        g.add_argument("--warmup", type=non_negative_float, default=200.0, metavar="MS",
                       help="warm-up time in ms: queries starting in it are not timed (default 200)")
        g.add_argument("--duration", type=non_negative_float, default=3.0, metavar="S",
                       help="minimum timed seconds (default 3)")
        g.add_argument("--iterations", type=positive_int, default=10, metavar="N",
                       help="minimum timed queries (default 10)")
        g.add_argument("--no-data-transfers", action="store_true", help="keep inputs and outputs on the device")
        if self.raw_times:
            g.add_argument("--raw-times", action="store_true", help="keep every query's raw timestamps in the JSON")
        return g

    @staticmethod
    def parse(args: argparse.Namespace) -> TimingOptions:
        return TimingOptions(warmup_ms=args.warmup, duration_s=args.duration, iterations=args.iterations,
                             no_data_transfers=args.no_data_transfers, keep_raw=getattr(args, "raw_times", False))


# ---- a sweep's grid --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridOptions:
    seq_lens: tuple[int, ...]
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    resume: bool = False
    retry_errors: bool = False


class GridArgs:
    """A sweep's lists (in place of the single --seq-len / --batch / --precision) and --resume."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        from lstminfer.backends.base import PRECISIONS

        g = parser.add_argument_group("grid")
        g.add_argument("--seq-len", dest="seq_lens", type=int_list, default="1,16,128,1024", metavar="N,...",
                       help="sequence lengths (default 1,16,128,1024)")
        g.add_argument("--batch", dest="batches", type=int_list, default="1,8,64", metavar="N,...",
                       help="batch sizes (default 1,8,64)")
        g.add_argument("--precision", dest="precisions", type=precision_list, default="fp32", metavar="P,...",
                       help=f"precisions, of {', '.join(PRECISIONS)} (default fp32)")
        g.add_argument("--resume", action="store_true",
                       help="continue the sweep in DIR/sweep.jsonl: points already there are not measured again")
        g.add_argument("--retry-errors", action="store_true", help="with --resume, measure failed points again")

    @staticmethod
    def parse(args: argparse.Namespace) -> GridOptions:
        return GridOptions(seq_lens=args.seq_lens, batches=args.batches, precisions=args.precisions,
                           resume=args.resume, retry_errors=args.retry_errors)


# ---- output ----------------------------------------------------------------------------------------------------
DEFAULT_OUT = "lstminfer-out"


@dataclass(frozen=True)
class OutputOptions:
    json: str | None = None  # '-': stdout (the human output then goes to stderr)
    out: str = DEFAULT_OUT


class OutputArgs:
    """--json FILE ('-' for stdout) and (out_dir=True) --out DIR."""

    def __init__(self, out_dir: bool = False, what: str = "the records"):
        self.out_dir = out_dir
        self.what = what

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", default=None, metavar="FILE",
                            help=f"write {self.what} as JSON to FILE ('-': stdout, and the tables go to stderr)")
        if self.out_dir:
            parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                                help=f"artifacts directory (default ./{DEFAULT_OUT})")

    @staticmethod
    def parse(args: argparse.Namespace) -> OutputOptions:
        return OutputOptions(json=getattr(args, "json", None), out=getattr(args, "out", None) or DEFAULT_OUT)


class ExportArgs:
    """--exporter: which exporter writes the ONNX file."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        from lstminfer.onnx.export import EXPORTERS

        parser.add_argument("--exporter", choices=EXPORTERS, default="auto",
                            help="torchscript (torch.onnx.export, dynamo=False), direct (written from the weights "
                                 "with onnx.helper), auto (torchscript, else direct; default)")

