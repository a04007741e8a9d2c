"""One inference process serving 16 client processes that send single rows of the heavy MLP.

Needs only onnxruntime (``onnxruntime-gpu`` for CUDA), numpy and abx's transport
(``service/inference/{wire,host,process,batching,sessions}.py``), so it runs on a bare GPU
machine (``../shared/gpu/README.md``: carry ``onnxruntime-gpu``, run with ``PYTHONPATH``):

    python benchmarks/gpu_serving.py [--providers cuda|cpu] [--clients 16] [--threads 8]
        [--seconds 5] [--max-batch 512] [--model mlp_heavy.onnx]

Two rounds in the same run, each ``--seconds`` long with ``--clients`` processes:

* ``separate sessions`` (today's layout, the baseline): each client process holds its own
  session on the provider and runs its single rows itself, one after the other;
* ``inference process``: one ``abx infer`` core (started here as a child process, without the
  CLI) owns the only session; each client process runs ``--threads`` threads, each sending one
  row at a time over the Unix socket, so up to clients x threads rows wait to share a run.

It prints rows/s, the ratio to the baseline, p50 and p99 of each request, and the mean rows
per run, beside the figure the issue measured for 16 separate CUDA sessions (39,207 rows/s).
Targets on the GPU machine: at least 10x that, p99 under 5 ms. On a CPU machine it runs too
(``--providers cpu``), for a smoke figure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.inference.host import ModelHost, file_sha256  # noqa: E402
from service.inference.providers import CPU, CUDA, session_providers  # noqa: E402
from service.inference.wire import InferenceClient, TransportError  # noqa: E402

ISSUE_BASELINE_ROWS_PER_SECOND = 39_207
"""16 processes each with its own CUDA session, 8 rows per run, on the H200 (issue 23)."""


def providers_for(name: str) -> list[str]:
    return [CUDA, CPU] if name == "cuda" else [CPU]


def serve_main(socket_path: str, root: Path, model: str, providers: str, max_batch: int) -> None:
    from service.inference.process import serve

    host = ModelHost(root, os.cpu_count() or 1, max_batch, 0.0, providers_for(providers))
    hosted = host.load_file(model)
    print(f"inference process: {model} on {hosted.model.provider}", flush=True)
    serve(host, socket_path)


def _client_rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, 20)).astype(np.float32)


def separate_session(args: tuple[str, str, float, float, int]) -> tuple[int, list[float]]:
    import onnxruntime as ort

    path, providers, start_at, seconds, seed = args
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        path, options, providers=session_providers(providers_for(providers))
    )
    row = {"features": _client_rows(seed)}
    session.run(None, row)
    latencies: list[float] = []
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.perf_counter() + seconds
    while (began := time.perf_counter()) < deadline:
        session.run(None, row)
        latencies.append(time.perf_counter() - began)
    return len(latencies), latencies


def process_client(args: tuple[str, str, str, float, float, int, int]) -> tuple[int, list[float]]:
    import threading

    socket_path, sha, model, start_at, seconds, threads, seed = args
    results: list[list[float]] = [[] for _ in range(threads)]

    def loop(index: int) -> None:
        client = InferenceClient(socket_path, connect_timeout=5)
        feeds = {"features": _client_rows(seed * 100 + index)}
        header = {"op": "run", "model": sha, "path": model, "timeout": 5.0}
        client.call(header, feeds, 10)
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.perf_counter() + seconds
        while (began := time.perf_counter()) < deadline:
            reply, _ = client.call(header, feeds, 10)
            if not reply.get("ok"):
                raise RuntimeError(reply)
            results[index].append(time.perf_counter() - began)
        client.close()

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies = [value for part in results for value in part]
    return len(latencies), latencies


def report(label: str, results: list[tuple[int, list[float]]], seconds: float) -> float:
    rows = sum(count for count, _ in results)
    latencies = sorted(value for _, part in results for value in part)
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
    p99 = (
        latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000
        if latencies
        else float("nan")
    )
    rate = rows / seconds
    print(f"{label}: {rate:,.0f} rows/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    return rate


def wait_ready(socket_path: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    client = InferenceClient(socket_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the inference process exited during start-up")
        try:
            client.call({"op": "ping"}, {}, 1.0)
            client.close()
            return
        except (TransportError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError("the inference process did not start")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--providers", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=8, help="request threads per client")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument("--models", type=Path, default=ROOT / "experiments" / "models")
    parser.add_argument("--model", default="mlp_heavy.onnx")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.serve, args.models, args.model, args.providers, args.max_batch)
        return
    path = args.models / args.model
    sha = file_sha256(path)
    print(
        f"{args.model} on {args.providers}, {args.clients} client processes, "
        f"{args.seconds:.0f} s per round, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.clients) as pool:
        start_at = time.time() + 3.0
        baseline = report(
            f"separate sessions ({args.clients} processes, 1 row per run)",
            pool.map(
                separate_session,
                [
                    (str(path), args.providers, start_at, args.seconds, i)
                    for i in range(args.clients)
                ],
            ),
            args.seconds,
        )
        socket_path = f"/tmp/abx-gpu-serving-{os.getpid()}.sock"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", socket_path, "--models", str(args.models),
             "--model", args.model, "--providers", args.providers, "--max-batch", str(args.max_batch)],
        )  # fmt: skip
        try:
            wait_ready(socket_path, server, 120)
            status_client = InferenceClient(socket_path)
            start_at = time.time() + 3.0
            results = pool.map(
                process_client,
                [
                    (socket_path, sha, args.model, start_at, args.seconds, args.threads, i)
                    for i in range(args.clients)
                ],
            )
            status = status_client.call({"op": "status"}, {}, 5)[0]["models"][sha]
            status_client.close()
            rate = report(
                f"inference process ({args.clients} processes x {args.threads} threads, single rows)",
                results,
                args.seconds,
            )
        finally:
            server.terminate()
            server.wait(10)
    print(f"inference process / separate sessions = {rate / baseline:.2f}x (same run)")
    print(
        f"inference process / the issue's 16 separate CUDA sessions (39,207 rows/s) = "
        f"{rate / ISSUE_BASELINE_ROWS_PER_SECOND:.2f}x (target >= 10x on the GPU machine)"
    )
    print(
        f"rows per run in the process: {status['batching']['mean_rows']} (provider {status['provider']})"
    )


if __name__ == "__main__":
    main()
