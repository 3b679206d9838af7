"""The engine pool's fixed costs: the synthesize stage on a 2-actor Ray pool over the same
stage in this process, same tiny model and pairs, measured in one run.

    .venv/bin/python benchmarks/ray_overhead.py [--max-new-tokens 64] [--rows-per-shard 4]

Starts a local Ray (2 CPUs) once, before timing. The pool's time includes starting the
actors and loading an engine in each; in process, the engine is loaded before timing, so
the ratio shows what the pool costs on top of the work. On 2 cores the two actors share
the cores the single process had (Ray gives each actor one thread), so a ratio near 1.0
means the pool's costs are small; on a cluster each actor has its own GPU.
"""

import argparse
import tempfile
import time
from pathlib import Path

from adamllm_core.engines import EngineConfig, make_engine
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.pipeline import synthesize
from adamllm_core.pool import run_on_pool
from adamllm_core.synthesis import SynthConfig

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default=str(REPO / "samples" / "biomed_pairs"))
    parser.add_argument("--model", default="tiny:vlm")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rows-per-shard", type=int, default=4)
    args = parser.parse_args()
    import ray

    config = SynthConfig(engine=EngineConfig(model=args.model), max_new_tokens=args.max_new_tokens)
    pooled = config.model_copy(
        update={"engine": config.engine.model_copy(update={"data_parallel_size": 2})}
    )
    with tempfile.TemporaryDirectory() as work:
        pairs = f"{work}/pairs"
        ingest(args.source, pairs, IngestConfig(domain="bench", rows_per_shard=args.rows_per_shard))
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started

        engine = make_engine(config.engine)
        synthesize(pairs, f"{work}/warm", config, engine=engine)  # loads the model, warms up
        started = time.perf_counter()
        one = synthesize(pairs, f"{work}/one", config, engine=engine)
        in_process = time.perf_counter() - started

        reports = []
        started = time.perf_counter()
        two = run_on_pool("synthesize", [pairs, f"{work}/two"], pooled, report=reports.append)
        on_pool = time.perf_counter() - started
        ray.shutdown()
    assert two.fingerprint == one.fingerprint, "the pool wrote another dataset"
    stats = reports[0]
    busy = sum(actor["seconds"] for actor in stats.actors.values())
    first = [s for _, s, is_first in stats.shard_seconds.values() if is_first]
    later = [s for _, s, is_first in stats.shard_seconds.values() if not is_first]
    print(
        f"{one.rows} triplets from {len(one.shards)} shards, {args.model}, "
        f"max_new_tokens={args.max_new_tokens}"
    )
    print(f"local Ray start (once, not timed below): {ray_start:.2f} s")
    print(f"in process: {in_process:.2f} s")
    print(
        f"2-actor pool: {on_pool:.2f} s (actors busy {busy:.2f} s in all; the rest is starting"
        f" actors, loading engines and handing out shards)"
    )
    per_shard = in_process / len(one.shards)
    print(
        f"per shard: in process {per_shard:.3f} s; on the pool, an actor's first shard"
        f" {sum(first) / len(first):.3f} s (its engine loads in it), later shards"
        f" {sum(later) / max(len(later), 1):.3f} s"
    )
    print(
        f"fixed cost per stage (actor start and engine load): about"
        f" {sum(first) / len(first) - per_shard:.2f} s; per shard: about"
        f" {sum(later) / max(len(later), 1) - per_shard:.3f} s"
    )
    print(f"pool over in process: {on_pool / in_process:.2f}x")


if __name__ == "__main__":
    main()
