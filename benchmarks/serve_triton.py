"""The server's overhead: a model behind Triton Inference Server (`lstminfer serve`) vs its backend called alone.

For each concurrency level c it prints the load test (`lstminfer loadtest`: p50/p99 latency, requests per
second) beside the backend alone: one Runner call at the request's shape (the latency floor) and at c
requests' rows stacked (what the dynamic / sequence batcher can at best form), whose c / t is the throughput
ceiling. `server share` = served rps / ceiling: near 1 means the backend is the bottleneck, well below 1 the
server (HTTP/gRPC, Python backend, batching) is. Before any load, one request per served model is compared
with the backend alone on the same arrays (`answers: ... max |served - alone|`; exit 1 past 1e-4, as for a
failed request); the load test itself checks every answer's shape and dtype.

That tight loop of back-to-back calls is the backend at its fastest: its code, weights and buffers stay in the
caches. Inside the server every call follows a wait (the stub idles until Triton hands it the next batch, while
Triton, HTTP/gRPC and the client run), and a call after a wait costs more (docs/serving.md, "Why the backend
is slower inside the stub"). So after each level the backend alone is timed again *paced*: every call after a
sleep of the level's mean gap between one instance's executions (Triton's executions over the level's time,
times the instances, less the backend's own call), at the request's shape and at c requests' rows: `alone_paced_p50_ms`,
`alone_paced_batched_ms`, `ceiling_paced_rps` and `server_share_paced` beside the tight loop's
`alone_p50_ms`, `alone_batched_ms`, `ceiling_rps` and `server_share` (kept as they were). `pause_us` is that
sleep. Under saturation the gap is the server's own work, not idle time, so the paced baseline is then an
upper bound.

CPU (the docs' numbers):
    python benchmarks/serve_triton.py --preset seed --concurrency 1,8 --protocols http,grpc
    python benchmarks/serve_triton.py --preset seed --no-bidirectional --num-layers 2 --streams 1,8 --concurrency 0
H200 (issue 16's targets; the fused kernel behind the server; benchmarks/serve_gpu.sh runs both, bounded):
    python benchmarks/serve_triton.py --preset seed --backend fused-graph --device cuda --concurrency 1,2,4,8,16,32,64
    python benchmarks/serve_triton.py --preset seed --no-bidirectional --num-layers 1 --input-size 128 \
        --hidden-size 128 --backend fused-graph --device cuda --concurrency 0 --streams 1,2,4,8,16,32,64

`--processes N|auto` spreads each level's load generator over processes (`lstminfer loadtest --processes`);
with LSTMINFER_SERVE_PROFILE=1 in the environment the served model logs where its execute's time goes
(pymodel.Profile; keep the log with --server-log).

Needs the serve extra (pip install 'lstminfer[serve]'). The server listens on loopback only. Each row is
printed, and the JSON files rewritten, as soon as its level is measured: a run stopped by a time limit keeps
the levels it finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The served answer against the same backend alone, same device: only the transport and the padding differ
# (a padded batch may pick another kernel), so anything past float32 rounding noise is a wrong answer.
ANSWER_ATOL = 1e-4


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    from lstminfer.commands import serve

    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    own.add_argument("--concurrency", default="1,8", help="stateless levels (0: none)")
    own.add_argument("--streams", default="", help="stream levels (needs a unidirectional model)")
    own.add_argument("--protocols", default="http,grpc")
    own.add_argument("--duration", type=float, default=5.0, help="counted seconds per level")
    own.add_argument("--warmup", type=float, default=1.0)
    own.add_argument("--direct-calls", type=int, default=2000, help="backend-alone calls per shape (and <= 5 s)")
    own.add_argument("--processes", type=serve.count_or_auto, default=1, metavar="N|auto",
                     help="load-generator processes per level, N or auto (lstminfer loadtest --processes; default 1)")
    own.add_argument("--out-json", default=None, metavar="FILE", help="the table's rows (rewritten after each level)")
    own.add_argument("--server-log", default=None, metavar="FILE",
                     help="keep tritonserver's log here (default: in the scratch folder, removed at the end)")
    own.add_argument("--loadtest-json", default=None, metavar="FILE",
                     help="the levels as `lstminfer loadtest --json` writes them, for `lstminfer report`")
    mine, rest = own.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="serve_triton.py")
    sub = parser.add_subparsers(dest="command")
    serve.register(sub)
    served = parser.parse_args(["serve", *rest, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"])
    return mine, served


def levels(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip() and int(v) > 0]


def direct_latency_ms(runner, feeds: dict, calls: int, limit_s: float = 5.0) -> float:
    """Median of the backend's own infer() at one shape, the host clock around each call (warm-up first)."""
    for _ in range(20):
        runner.infer(feeds)
    times = []
    deadline = time.perf_counter() + limit_s
    while len(times) < calls and time.perf_counter() < deadline:
        start = time.perf_counter()
        runner.infer(feeds)
        runner.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def paced_latency_ms(runner, feeds: dict, pause_s: float, calls: int, limit_s: float = 2.0) -> float:
    """Median of the backend's infer() when each call follows a sleep of `pause_s` (the gap the server left
    between executions), the host clock around the call only: the backend as the server calls it, after a
    wait, against ``direct_latency_ms``'s back-to-back calls. At least 20 calls, else up to `calls` or
    `limit_s` seconds (the sleeps included), whichever comes first."""
    runner.infer(feeds)
    times = []
    deadline = time.perf_counter() + limit_s
    while len(times) < 20 or (len(times) < calls and time.perf_counter() < deadline):
        time.sleep(pause_s)
        start = time.perf_counter()
        runner.infer(feeds)
        runner.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def pause_between_executions(rps: float, stats: dict, alone_ms: float, instances: int = 1) -> float:
    """Seconds one instance's backend waited between two of its calls at a level, on average: the mean
    interval between the server's executions (requests an execution over requests a second) times the
    instances that share them, less the backend's own call; 0 when it never waited or nothing was counted.
    Capped at 50 ms (a slow level is paced like a slow client)."""
    requests_per_exec = stats.get("requests_per_exec") or 0.0
    if rps <= 0 or requests_per_exec <= 0:
        return 0.0
    return min(max(instances * requests_per_exec / rps - alone_ms / 1e3, 0.0), 0.05)


def server_stats(http_url: str, model: str) -> dict:
    """Triton's cumulative statistics of one model (the statistics extension)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    try:
        return client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()


def stats_delta(before: dict, after: dict) -> dict:
    """What the server itself spent over one level: rows per execution, and per request the mean time
    queued, inside the model's execute (the Python model: our batching and the backend), and moving the
    tensors in and out (Triton <-> the Python stub's shared memory)."""
    def ns(key: str) -> int:
        return int(after["inference_stats"][key]["ns"]) - int(before["inference_stats"][key]["ns"])

    requests = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    if not requests or not executions:
        return {}
    return {"rows_per_exec": inferences / executions, "requests_per_exec": requests / executions,
            "queue_us": ns("queue") / requests / 1e3,
            "infer_us": ns("compute_infer") / requests / 1e3,
            "in_out_us": (ns("compute_input") + ns("compute_output")) / requests / 1e3}


def served_vs_alone(url: str, model_name: str, runner, spec, mode: str, seq_len: int, rows: int) -> float:
    """The largest |served - alone| over one request's outputs: the server's answer (HTTP; a stream: one chunk
    from the zero state) against the same Runner called here on the same arrays, transposed here."""
    import numpy as np

    from lstminfer.serve.loadtest import _infer_inputs, client_module, make_client, make_inputs, model_config

    client = make_client(url, "http")
    try:
        arrays = make_inputs(model_config(client, model_name, "http"), seq_len, rows, seed=1)
        kwargs = {"sequence_id": 7, "sequence_start": True, "sequence_end": True} if mode == "stream" else {}
        result = client.infer(model_name, _infer_inputs(client_module("http"), arrays), **kwargs)
    finally:
        client.close()
    feeds = dict(arrays)
    if mode == "stream":  # the served stream starts from the zero state
        states = spec.num_layers * spec.num_directions
        width = {"h0": spec.state_size, "c0": spec.hidden_size}
        feeds.update({n: np.zeros((rows, states, width[n]), np.float32)
                      for n in (["h0", "c0"] if spec.kind == "lstm" else ["h0"])})

    def swap(name: str, array):  # batch-major <-> the model's layout
        keep = name in ("input", "output") and spec.batch_first
        return np.ascontiguousarray(array if keep else np.asarray(array).transpose(1, 0, 2))

    want = runner.infer({n: swap(n, a) for n, a in feeds.items()})
    names = ["output"] if mode == "stream" else list(want)
    return max(float(np.max(np.abs(result.as_numpy(n) - swap(n, want[n])))) for n in names)


def runner_feeds(model, seq_len: int, rows: int, with_state: bool) -> dict:
    import numpy as np

    spec = model.spec
    shapes = spec.shapes(seq_len, rows)
    names = ["input", *(["h0", "c0"] if spec.kind == "lstm" else ["h0"])] if with_state else ["input"]
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in names}


def main(argv: list[str]) -> int:
    import dataclasses

    from lstminfer.backends.base import runner_class
    from lstminfer.commands.args import backend_options
    from lstminfer.commands.serve import write_python_repository
    from lstminfer.serve.loadtest import processes_for, run_level
    from lstminfer.serve.repository import instances_for
    from lstminfer.serve.server import ServerConfig, TritonServer

    mine, args = parse_args(argv)
    concurrency, streams = levels(mine.concurrency), levels(mine.streams)
    protocols = [p.strip() for p in mine.protocols.split(",") if p.strip()]
    rows_out = []
    answers: dict[str, float] = {}  # served model -> max |served - alone| of one request
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        repo = Path(scratch) / "repository"
        model, names = write_python_repository(args, repo, Path(scratch))
        name = names[0]
        seq_len, batch = model.seq_len, model.batch
        # The backend alone: the same Runner the served model builds, on the same ONNX file.
        device = args.device or runner_class(args.backend).devices[0]
        stream_model = dataclasses.replace(model, with_state=True)
        stream_model.onnx_path = repo / name / "1" / "model.onnx"
        runner = runner_class(args.backend)(stream_model, device=device, precision=args.precision,
                                            **backend_options(args))
        runner.prepare()
        instances = instances_for(args.instances, "KIND_GPU" if device == "cuda" else "KIND_CPU")
        alone, feeds_at = {}, {}
        for c in sorted(set([1, *concurrency])):
            feeds_at[("stateless", c)] = runner_feeds(model, seq_len, c * batch, True)
        for c in sorted(set([1, *streams])):
            feeds_at[("stream", c)] = runner_feeds(model, 1, c, True)
        for key, feeds in feeds_at.items():
            alone[key] = direct_latency_ms(runner, feeds, mine.direct_calls)

        header = ["protocol", "mode", "concurrency", "processes", "requests", "failed", "rps", "p50_ms", "p99_ms",
                  "alone_p50_ms", "overhead_p50_ms", "alone_batched_ms", "ceiling_rps", "server_share",
                  "pause_us", "alone_paced_p50_ms", "alone_paced_batched_ms", "server_share_paced",
                  "rows_per_exec", "queue_us", "infer_us", "in_out_us"]
        print(f"{model.name}: {model.spec.describe()}, request seq {seq_len} x batch {batch} (streams: 1 step x 1 "
              f"row); backend {args.backend}[{device}] {args.precision} threads {args.threads or 'default'}",
              flush=True)
        print("  ".join(f"{h:>15}" for h in header), flush=True)
        records = []
        config = ServerConfig(repository=repo, http_port=0, grpc_port=0, metrics_port=0)
        log_path = Path(mine.server_log) if mine.server_log else Path(scratch) / "tritonserver.log"
        with TritonServer(config, log_path=log_path) as server:
            # The answers themselves, once per served model, before any load: equal to the backend alone?
            checks = [("stateless", name, seq_len, batch)] if concurrency else []
            checks += [("stream", f"{name}_stream", 1, 1)] if streams else []
            for mode, model_name, seq, rows in checks:
                try:
                    diff, why = served_vs_alone(config.http_url, model_name, runner, model.spec, mode, seq, rows), ""
                except Exception as err:  # no answer, an unreadable one (0 bytes): a wrong answer, said in one line
                    diff, why = float("inf"), f" ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
                answers[model_name] = diff
                print(f"answers: {model_name} ({mode}, {rows} x {seq}): max |served - alone| = {diff:.3g}"
                      + ("" if diff <= ANSWER_ATOL else f" > {ANSWER_ATOL:g}: WRONG{why}"), flush=True)
            for protocol in protocols:
                url = config.grpc_url if protocol == "grpc" else config.http_url
                plan = [("stateless", name, c, seq_len, batch) for c in concurrency]
                plan += [("stream", f"{name}_stream", c, 1, 1) for c in streams]
                for mode, model_name, c, seq, rows in plan:
                    before = server_stats(config.http_url, model_name)
                    # run_level gives worker w the ids from first + w * 10**6: levels 10**9 apart never share one
                    record = run_level(url, protocol, model_name, mode, c, seq_len=seq, batch=rows,
                                       duration_s=mine.duration, warmup_s=mine.warmup, chunks=50,
                                       first_sequence_id=1 + len(rows_out) * 10**9, processes=mine.processes)
                    inside = stats_delta(before, server_stats(config.http_url, model_name))
                    floor, at_c = alone[(mode, 1)], alone[(mode, c)]
                    ceiling = c / at_c * 1e3
                    # The backend alone at this level's pace (the server idle now; the runner is this process's)
                    pause = pause_between_executions(record.throughput_rps, inside, at_c, instances)
                    paced_floor = paced_latency_ms(runner, feeds_at[(mode, 1)], pause, mine.direct_calls // 2)
                    paced_at_c = paced_floor if c == 1 else paced_latency_ms(runner, feeds_at[(mode, c)], pause,
                                                                             mine.direct_calls // 2)
                    ceiling_paced = c / paced_at_c * 1e3
                    rows_out.append({
                        "protocol": protocol, "mode": mode, "concurrency": c, "instances": instances,
                        "processes": processes_for(c, mine.processes), "requests": record.requests,
                        "failed": record.failed, "rps": record.throughput_rps,
                        "p50_ms": record.latency_ms.get("p50"), "p99_ms": record.latency_ms.get("p99"),
                        "alone_p50_ms": floor, "overhead_p50_ms": (record.latency_ms.get("p50") or 0) - floor,
                        "alone_batched_ms": at_c, "ceiling_rps": ceiling,
                        "server_share": record.throughput_rps / ceiling, "pause_us": pause * 1e6,
                        "alone_paced_p50_ms": paced_floor,
                        "overhead_paced_p50_ms": (record.latency_ms.get("p50") or 0) - paced_floor,
                        "alone_paced_batched_ms": paced_at_c, "ceiling_paced_rps": ceiling_paced,
                        "server_share_paced": record.throughput_rps / ceiling_paced, **inside,
                        "errors": record.errors})
                    records.append(record)
                    row = rows_out[-1]
                    print("  ".join(f"{row.get(h):>15.4g}" if isinstance(row.get(h), float)
                                    else f"{row.get(h, '-')!s:>15}" for h in header), flush=True)
                    write_json(mine, model, f"{args.backend}[{device}] x{instances}", rows_out, records, answers)
            print(f"server log: {server.log_path}" + ("" if mine.server_log else " (removed with the scratch folder)"))
        runner.close()
    for row in rows_out:
        for error in row["errors"]:
            print(f"{row['protocol']} {row['mode']} at concurrency {row['concurrency']}: {error}")
    return 1 if any(r["failed"] for r in rows_out) or any(d > ANSWER_ATOL for d in answers.values()) else 0


def write_json(mine: argparse.Namespace, model, served: str, rows: list, records: list, answers: dict) -> None:
    """Both JSON files as they stand (after every level, so a stopped run keeps what it measured). `served`:
    backend[device] xN instances, the load-test records' model suffix, so runs of several instance counts
    stay apart in one report."""
    from lstminfer.measure.store import machine_info

    if mine.out_json:
        Path(mine.out_json).write_text(json.dumps({"model": model.name, "spec": model.spec.to_dict(),
                                                   "served": served, "rows": rows,
                                                   "answers_max_abs_diff": answers}, indent=2))
    if mine.loadtest_json:
        Path(mine.loadtest_json).write_text(json.dumps({
            "loadtest": [{**r.to_dict(), "model": f"{r.model} ({served})"} for r in records],
            "server": "benchmarks/serve_triton.py", "machine": machine_info()}, indent=2))


if __name__ == "__main__":
    from lstminfer.errors import UserError

    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as err:  # the server could not start, a backend is missing: one line, as the CLI says it
        print(f"serve_triton.py: {err}", file=sys.stderr)
        sys.exit(2)
