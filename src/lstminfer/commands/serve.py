"""`lstminfer serve | export-triton | loadtest`: Triton Inference Server (the serve extra)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from lstminfer.commands.args import ModelArgs, backend_options, model_from_args
from lstminfer.commands.console import print_table, stderr_console, write_json_output
from lstminfer.commands.values import (
    non_negative_float,
    non_negative_int,
    parse_int_list,
    port_number,
    positive_float,
    positive_int,
)
from lstminfer.errors import UserError
from lstminfer.serve.loadtest import AUTO_WORKERS_PER_PROCESS

# Model arguments that name files: made absolute, since Triton's stub process rebuilds the model elsewhere.
PATH_ARGS = ("file", "weights", "inputs_npz", "onnx")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="serve a model on Triton Inference Server (stateless requests and "
                                            "streams) until Ctrl-C / SIGTERM")
    ModelArgs().add_to(p)
    _add_served_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, loopback; 0.0.0.0 exposes the server to the "
                        "network)")
    g.add_argument("--http-port", type=port_number, default=8000, metavar="PORT",
                   help="HTTP/REST (KServe v2 protocol); 0: any free port (default 8000)")
    g.add_argument("--grpc-port", type=port_number, default=8001, metavar="PORT",
                   help="gRPC; 0: any free port (default 8001)")
    g.add_argument("--metrics-port", type=port_number, default=8002, metavar="PORT",
                   help="Prometheus /metrics; 0: any free port (default 8002)")
    g.add_argument("--repository", default=None, metavar="DIR",
                   help="write the model repository here and keep it (default: a temporary folder)")
    g.add_argument("--ready-timeout", type=positive_float, default=180.0, metavar="S",
                   help="how long the server may take to load the model (default 180)")
    g.add_argument("--log", default=None, metavar="FILE", help="tritonserver's log (default: a file in the temp dir)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the endpoints as JSON to FILE once ready")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("export-triton", help="write a Triton model repository (Python backend with any "
                                                    "lstminfer backend, or stock onnxruntime / tensorrt)")
    ModelArgs().add_to(p)
    p.add_argument("-o", "--output", required=True, metavar="REPO", help="the model repository folder to write")
    p.add_argument("--platform", choices=["python", "onnxruntime", "tensorrt"], default="python",
                   help="python: Triton's Python backend runs lstminfer (default); onnxruntime / tensorrt: a stock "
                        "Triton, implicit state for streams")
    p.add_argument("--max-seq-len", type=positive_int, default=512, metavar="N",
                   help="tensorrt: the longest chunk (time steps per request) the plan takes (default 512)")
    _add_served_args(p)
    p.add_argument("--json", default=None, metavar="FILE", help="write what was written as JSON to FILE")
    p.set_defaults(func=cmd_export_triton)

    p = subparsers.add_parser("loadtest", help="latency percentiles and throughput of a Triton server per "
                                               "concurrency level (stateless requests and streams)")
    p.add_argument("url", metavar="URL", help="host:port of the server (HTTP port, or gRPC with --protocol grpc)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="model name; NAME_stream for --streams (default: the one model the server serves)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http",
                   help="how the client talks to the server; give URL's port to match (default http)")
    p.add_argument("--concurrency", default="1,2,4,8", metavar="N,...",
                   help="stateless requests in flight, one level each (default 1,2,4,8; 0 skips)")
    p.add_argument("--streams", default=None, metavar="N,...",
                   help="streams open at once on NAME_stream, one level each (default: none)")
    p.add_argument("--duration", type=positive_float, default=5.0, metavar="S",
                   help="counted seconds per level (default 5)")
    p.add_argument("--warmup", type=non_negative_float, default=1.0, metavar="S",
                   help="uncounted seconds first (default 1)")
    p.add_argument("--max-requests", type=positive_int, default=1_000_000, metavar="N",
                   help="at most N requests per level, whatever --duration says (default 1000000)")
    p.add_argument("--seq-len", type=positive_int, default=1, metavar="N",
                   help="time steps of each stateless request (default 1; stream chunks are 1 step)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="N",
                   help="rows of each stateless request (default 1; a stream chunk has 1 row)")
    p.add_argument("--chunks", type=positive_int, default=20, metavar="N",
                   help="chunks per stream before END, then a new stream (default 20)")
    p.add_argument("--timeout", type=positive_float, default=30.0, metavar="S", help="per-request timeout (default 30)")
    p.add_argument("--processes", type=count_or_auto, default="auto", metavar="N|auto",
                   help="load-generator processes per level, the concurrency's workers spread over them, so one "
                        "Python process (its GIL) does not bound a high level; auto: one per "
                        f"{AUTO_WORKERS_PER_PROCESS} workers, at most a quarter of the CPU cores (default auto)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the records as JSON to FILE")
    p.set_defaults(func=cmd_loadtest)


def count_or_auto(text: str) -> int | str:
    """`--processes` and `--instances`: a positive integer or "auto" (resolved later: the load generator's
    processes by the levels' workers, the instances by the device in repository.instances_for)."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") from None


def _add_served_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("served model")
    g.add_argument("--name", default=None,
                   help="model name on the server (default: the preset's name, --model's factory or FILE's stem)")
    g.add_argument("--backend", default="onnxruntime",
                   help="the lstminfer backend that runs it (default onnxruntime; any of `lstminfer backends`)")
    g.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where the backend runs (default: the backend's first device, cuda for GPU-only backends)")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="the backend's compute precision; requests and answers keep the model's dtypes "
                        "(fp32 for a model lstminfer builds; default fp32)")
    g.add_argument("--tf32", action="store_true", help="let cuDNN/cuBLAS use TF32 for fp32")
    g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU backends' intra-op threads (default: the backend's own choice)")
    g.add_argument("--max-batch", type=positive_int, default=64, metavar="N",
                   help="rows Triton batches into one execution (dynamic batching; streams batched together; "
                        "default 64)")
    g.add_argument("--queue-delay-us", type=non_negative_int, default=0, metavar="US",
                   help="how long Triton may hold a request to fill a batch (default 0: requests that queue while "
                        "the model is busy are batched anyway; a delay only adds latency at low load)")
    g.add_argument("--instances", type=count_or_auto, default="auto", metavar="N|auto",
                   help="model instances, each its own process and runner; auto: 2 with --device cuda (executions "
                        "overlap), 1 on a CPU (default auto)")
    g.add_argument("--max-streams", type=positive_int, default=64, metavar="N",
                   help="streams open at once per instance (default 64)")
    g.add_argument("--idle-timeout", type=positive_float, default=60.0, metavar="S",
                   help="a stream with no chunk for S seconds is dropped, its state freed (default 60)")
    g.add_argument("--batch-buckets", choices=["auto", "on", "off"], default="auto",
                   help="pad each backend call's rows up to 1, 2, 4, ... --max-batch and run every size once at "
                        "load, so a GPU backend never captures or compiles a new size on the request path "
                        "(default auto: on with --device cuda, off on a CPU)")
    g.add_argument("--no-stream", action="store_true", help="serve only the stateless NAME (no NAME_stream)")


# ---- shared by serve and export-triton ---------------------------------------------------------------------------
def model_args_of(args: argparse.Namespace) -> dict[str, Any]:
    """The model argument group's values, file paths made absolute: what the served model is rebuilt from."""
    probe = argparse.ArgumentParser(add_help=False)
    ModelArgs().add_to(probe)
    values = {a.dest: getattr(args, a.dest, a.default) for a in probe._actions}
    for name in PATH_ARGS:
        if values.get(name):
            values[name] = str(Path(values[name]).resolve())
    factory = values.get("model")
    if factory:
        target, sep, attr = factory.rpartition(":")
        if sep and (target.endswith(".py") or "/" in target):
            values["model"] = f"{Path(target).resolve()}:{attr}"
    return values


def _options(args: argparse.Namespace, device: str) -> Any:
    from lstminfer.serve.repository import ServeOptions, instances_for

    kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
    return ServeOptions(max_batch=args.max_batch, queue_delay_us=args.queue_delay_us,
                        instances=instances_for(args.instances, kind), kind=kind, max_streams=args.max_streams,
                        idle_timeout_s=args.idle_timeout, buckets=args.batch_buckets)


def _device(args: argparse.Namespace) -> str:
    from lstminfer.backends.base import runner_class, select_backends

    device = args.device or runner_class(args.backend).devices[0]
    select_backends([f"{args.backend}:{device}"])  # unavailable here -> one line with the install hint
    return device


def _spec_model(args: argparse.Namespace) -> Any:
    model = model_from_args(args)
    if model.spec is None:
        raise UserError(f"{model.name}: a stock repository (--platform onnxruntime/tensorrt) is written for a "
                        "model with one LSTM/GRU stack (--preset, sizes, --model returning one); serve a file or a "
                        "whole model with --platform python")
    return model


def _export_onnx(model: Any, folder: Path) -> Path | None:
    """The model's ONNX export (None for proj_size: no ONNX file, torch backends only)."""
    from lstminfer.onnx.export import export_model

    if model.spec.proj_size:
        return None
    with stderr_console().status("exporting and checking the ONNX file"):
        return export_model(model, folder / "model.onnx").path


def write_python_repository(args: argparse.Namespace, repo: Path, scratch: Path) -> tuple[Any, list[str]]:
    """The Python-backend repository for `args` (serve and export-triton --platform python)."""
    from lstminfer.backends.base import runner_class
    from lstminfer.serve.repository import ServedModel, served_tensors, write_python_models

    device = _device(args)
    model = model_from_args(args)
    runner_cls = runner_class(args.backend)
    if args.precision not in runner_cls.precisions:  # before the export: the cheap refusal first
        raise UserError(f"backend {args.backend} cannot serve {model.name}: precision {args.precision} not "
                        f"supported (supports {', '.join(runner_cls.precisions)})")
    options = _options(args, device)
    tensors = None
    if model.spec is None:  # a user's file or a whole model: served as it is
        tensors = served_tensors(model)
        onnx_path = None
    else:
        onnx_path = _export_onnx(model, scratch)
        model.onnx_path = onnx_path
    ok, why = runner_cls(model, device=device, precision=args.precision).supports()
    if not ok:  # refused here in one line, not by a model that fails to load inside the server
        raise UserError(f"backend {args.backend} cannot serve {model.name}: {why}")
    served = ServedModel(name=_name(args, model), model_args=model_args_of(args),
                         spec=model.spec.to_dict() if model.spec else None, backend=args.backend, device=device,
                         precision=args.precision, backend_options=backend_options(args),
                         with_state=model.with_state)
    names = write_python_models(repo, served, model.spec, options, onnx_path,
                                stream=False if args.no_stream else None, tensors=tensors)
    return model, names


def _name(args: argparse.Namespace, model: Any) -> str:
    if args.name:
        name = args.name
    elif getattr(args, "file", None):
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(args.file).stem)
    else:
        name = args.preset or (args.model.rpartition(":")[2] if args.model else "seed")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"--name {name!r}: use letters, digits, '-' and '_'")
    return name


def _describe(model: Any) -> str:
    return model.spec.describe() if model.spec is not None else model.name


# ---- serve -----------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from lstminfer.serve.server import ServerConfig, TritonServer, find_tritonserver, port_is_free

    install = find_tritonserver()  # the extra missing: one line, before any work
    config = ServerConfig(repository=Path("."), host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port)
    config.resolve_ports()
    for flag, port in (("--http-port", config.http_port), ("--grpc-port", config.grpc_port),
                       ("--metrics-port", config.metrics_port)):
        if not port_is_free(config.host, port):
            raise UserError(f"cannot start the server: port {port} on {config.host} is taken; pass another {flag} "
                            "(0 picks a free one) or stop what listens there")
    console = stderr_console()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] listening on {args.host}: reachable from other machines, "
                      "with no authentication")
    with tempfile.TemporaryDirectory(prefix="lstminfer-serve-") as scratch:
        repo = Path(args.repository) if args.repository else Path(scratch) / "repository"
        if repo.exists() and any(repo.iterdir()):
            raise UserError(f"--repository {repo} is not empty: give a new folder")
        model, names = write_python_repository(args, repo, Path(scratch))
        device = _device(args)
        instances = _options(args, device).instances
        config.repository = repo.resolve()
        server = TritonServer(config, log_path=Path(args.log) if args.log else None, install=install)
        with console.status(f"starting Triton Inference Server {install.version} with {', '.join(names)}"):
            server.start(ready_timeout_s=args.ready_timeout)
        try:
            info = {"models": names, "http": config.http_url, "grpc": config.grpc_url, "metrics": config.metrics_url,
                    "repository": str(config.repository), "log": str(server.log_path), "pid": os.getpid(),
                    "backend": args.backend, "device": device, "instances": instances, "model": model.name}
            rows = [{"endpoint": "HTTP/REST", "address": f"http://{config.http_url}/v2/models/{names[0]}/infer"},
                    {"endpoint": "gRPC", "address": config.grpc_url},
                    {"endpoint": "metrics", "address": config.metrics_url},
                    {"endpoint": "ready", "address": f"http://{config.http_url}/v2/health/ready"}]
            chosen = " (auto)" if args.instances == "auto" else ""
            print_table(f"Serving {', '.join(names)} ({_describe(model)}, backend {args.backend} on {device}, "
                        f"{instances} instance{'s' if instances > 1 else ''} each{chosen}); Ctrl-C stops", rows)
            write_json_output(args.json, info)
            print(f"ready: lstminfer loadtest {config.http_url}", flush=True)
            server.run_until_signal()
        finally:
            server.close()
    print("stopped", flush=True)
    return 0


# ---- export-triton ----------------------------------------------------------------------------------------------
def _plan_builder(max_seq_len: int, precision: str, tf32: bool) -> Any:
    def build(onnx_path: Path, plan_path: Path, spec: Any, options: Any, stream: bool) -> None:
        from lstminfer.tensorrt.build import Profile, build_serialized_engine, import_tensorrt

        import_tensorrt()  # absent: one line with the install hint
        states = spec.num_layers * spec.num_directions
        batch = options.max_batch
        low = {"input": (1, 1, spec.input_size), "h0": (1, states, spec.state_size)}
        high = {"input": (batch, max_seq_len, spec.input_size), "h0": (batch, states, spec.state_size)}
        if spec.kind == "lstm":
            low["c0"], high["c0"] = (1, states, spec.hidden_size), (batch, states, spec.hidden_size)
        if stream:
            low["START"], high["START"] = (1, 1), (batch, 1)
        profile = Profile(min=low, opt=high, max=high)
        plan_path.write_bytes(bytes(build_serialized_engine(onnx_path, profile, precision, tf32=tf32)))

    return build


def cmd_export_triton(args: argparse.Namespace) -> int:
    from lstminfer.serve.repository import write_stock_models

    repo = Path(args.output)
    if repo.exists() and any(repo.iterdir()):
        raise UserError(f"-o {repo} is not empty: give a new folder (Triton loads every model in it)")
    with tempfile.TemporaryDirectory(prefix="lstminfer-export-triton-") as scratch:
        if args.platform == "python":
            model, names = write_python_repository(args, repo, Path(scratch))
        else:
            model = _spec_model(args)
            if args.no_stream:
                raise UserError("--no-stream applies to --platform python; stock repositories always carry both")
            onnx_path = _export_onnx(model, Path(scratch))
            if onnx_path is None:
                raise UserError("proj_size models have no ONNX file (ONNX's LSTM has no projection): use "
                                "--platform python with a torch backend")
            builder = None
            if args.platform == "tensorrt":
                builder = _plan_builder(args.max_seq_len, args.precision, args.tf32)
            device = "cuda" if args.platform == "tensorrt" else (args.device or "cpu")
            names = write_stock_models(repo, _name(args, model), model.spec, onnx_path, _options(args, device),
                                       platform=args.platform, plan_builder=builder)
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    print_table(f"Triton model repository {repo} ({args.platform})", [{"file": f} for f in files])
    if args.platform == "python":
        print("serve it with a Triton whose Python can import lstminfer: tritonserver --model-repository "
              f"{repo.resolve()}  (or `lstminfer serve` with the same model arguments)")
    else:
        print(f"serve it with a stock Triton that has the {args.platform} backend: tritonserver --model-repository "
              f"{repo.resolve()}")
    write_json_output(args.json, {"repository": str(repo.resolve()), "platform": args.platform, "models": names,
                                  "files": files})
    return 0


# ---- loadtest --------------------------------------------------------------------------------------------------
def cmd_loadtest(args: argparse.Namespace) -> int:
    from lstminfer.report.tables import loadtest_rows
    from lstminfer.serve.loadtest import loadtest

    concurrency = [] if args.concurrency.strip() == "0" else parse_int_list(args.concurrency, "concurrency")
    streams = parse_int_list(args.streams, "streams") if args.streams else []
    if not concurrency and not streams:
        raise UserError("nothing to run: give --concurrency levels and/or --streams levels")
    levels = len(concurrency) + len(streams)
    with stderr_console().status(f"{levels} level(s) of {args.warmup + args.duration:g} s against {args.url}"):
        records = loadtest(args.url, protocol=args.protocol, model=args.model, concurrency=concurrency,
                           streams=streams, seq_len=args.seq_len, batch=args.batch, duration_s=args.duration,
                           warmup_s=args.warmup, max_requests=args.max_requests, chunks=args.chunks,
                           timeout_s=args.timeout, processes=args.processes)
    print_table(f"Load test of {args.url} ({args.protocol}, seq {args.seq_len} x batch {args.batch})",
                loadtest_rows(records))
    failed = [r for r in records if r.failed]
    for r in failed:
        print(f"{r.mode} at concurrency {r.concurrency}: {r.failed} failed: {'; '.join(r.errors)}")
    if args.json:
        from lstminfer.measure.store import machine_info

        write_json_output(args.json, {"loadtest": [r.to_dict() for r in records], "server": args.url,
                                      "machine": machine_info()})
    return 1 if failed else 0
