"""What tracing costs: processing and enqueue rates with and without OpenTelemetry, one run.

    python benchmarks/bench_tracing.py [--n 5000] [--rounds 3]

Variants, alternated round by round on fresh SQLite files so that drift hits them alike:

- ``no [otel]``: ``litetask_async.tracing`` as if the OpenTelemetry API were not installed;
- ``[otel], no SDK``: the API installed, no SDK configured (its default no-op provider): what a
  user who installed the extra but exports nothing pays;
- ``[otel] + SDK``: an SDK ``TracerProvider`` that records every span and exports none (no
  processor): the cost of the spans themselves, for scale.

Each round enqueues ``n`` no-op async tasks one ``adelay()`` at a time (enqueue rate) and then
runs them with one in-process worker at concurrency 10 (processing rate). Medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from litetask_async import LiteTask, tracing  # noqa: E402
from litetask_async.worker import Worker  # noqa: E402

API = tracing.trace


async def noop() -> None:
    return None


async def one_round(url: str, n: int) -> tuple[float, float]:
    app = LiteTask(url)
    task = app.task(name="bench.noop")(noop)
    await app.broker()
    t0 = time.perf_counter()
    for _ in range(n):
        await task.adelay()
    enqueue = n / (time.perf_counter() - t0)
    worker = Worker(app, concurrency=10, install_signal_handlers=False)
    t0 = time.perf_counter()
    run = asyncio.create_task(worker.run())
    while worker.processed < n:
        await asyncio.sleep(0.005)
    processing = n / (time.perf_counter() - t0)
    worker.stop()
    await run
    await app.aclose()
    return enqueue, processing


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if API is None:
        sys.exit("the OpenTelemetry API is not installed: pip install 'litetask_async[otel]' opentelemetry-sdk")
    from opentelemetry.sdk.trace import TracerProvider

    sdk = TracerProvider()  # records spans, exports none (no processor)
    real_provider = API.get_tracer_provider

    def variant(name: str) -> None:
        tracing.trace = None if name == "no [otel]" else API  # type: ignore[assignment]
        API.get_tracer_provider = (lambda: sdk) if name == "[otel] + SDK" else real_provider  # type: ignore[method-assign]

    names = ["no [otel]", "[otel], no SDK", "[otel] + SDK"]
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    workdir = tempfile.mkdtemp(prefix="litetask_bench_tracing_")
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        for name in names:
            variant(name)
            url = f"sqlite:///{workdir}/r{r}-{names.index(name)}.db"
            results[name].append(asyncio.run(one_round(url, args.n)))
    variant("[otel], no SDK")
    base = statistics.median(p for _, p in results["no [otel]"])
    base_e = statistics.median(e for e, _ in results["no [otel]"])
    print(f"n={args.n}, rounds={args.rounds}, SQLite, 1 worker at concurrency 10, "
          f"load avg {load:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"{'variant':16s} {'enqueue/s':>10s} {'vs no otel':>10s} {'process/s':>10s} {'vs no otel':>10s}")
    for name in names:
        e = statistics.median(x for x, _ in results[name])
        p = statistics.median(x for _, x in results[name])
        print(f"{name:16s} {e:10.0f} {e / base_e:9.2f}x {p:10.0f} {p / base:9.2f}x")


if __name__ == "__main__":
    main()
