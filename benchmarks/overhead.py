"""Shared timing for the *_overhead.py scripts: a stage against the bare engine, interleaved."""

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def bare_engine(engine: Any, requests: list, batch_size: int) -> Callable[[], None]:
    """The engine alone on the same requests in the same batches."""

    def run() -> None:
        for i in range(0, len(requests), batch_size):
            engine.run(requests[i : i + batch_size])

    return run


def compare(
    bare: Callable[[], None], stage: Callable[[int], Any], repeats: int, stage_name: str
) -> None:
    """Median times over `repeats` interleaved runs (drift hits both alike) and their ratio."""
    bare_times, stage_times = [], []
    for n in range(repeats):
        bare_times.append(timed(bare))
        stage_times.append(timed(lambda n=n: stage(n)))
    b, s = statistics.median(bare_times), statistics.median(stage_times)
    print(f"bare engine:  {b:.3f} s")
    print(f"{stage_name} stage:  {s:.3f} s")
    print(f"overhead ratio:  {s / b:.3f}x  (goal < 1.05x)")
