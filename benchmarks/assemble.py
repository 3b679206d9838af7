"""Assembly throughput: rows/s of the assemble stage on N pairs, and its time over a bare
scan of the same shards (the columns assembly reads, nothing done with them).

    .venv/bin/python benchmarks/assemble.py [--pairs 50000] [--repeats 1]

The pairs are the proving ground's generated 96 px scenes (benchmarks/scale.py), ingested
with two workers; each pair gets one kept task from its scene's own questions, written
shard by shard as the filter writes them, so assembly joins shard k to shard k. The target
is tiny:vlm with the four variants of the paper's main comparison. Token counts come from
each image's stored size (no pixels read) where the target processor has a size rule.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from scale import derived_writer, write_triplets, write_world

VARIANTS = ("single_stage", "two_stage", "caption_only", "synthetic_only")


def write_kept(triplets_uri: str, out: str) -> None:
    """Every triplet kept (label Yes), its response the informative answer then the precise
    one, shard k from triplets shard k."""
    from adamllm_core.schemas import JUDGED, QUARANTINE, JudgedTriplet

    triplets, writer = derived_writer(triplets_uri, out, JUDGED, "world-kept")
    for index in range(len(triplets.manifest.shards)):
        rows = [
            JudgedTriplet(
                id=t["id"],
                pair_id=t["pair_id"],
                triplet_id=t["id"],
                domain=t["domain"],
                instruction=t["instruction"],
                precise=t["precise"],
                informative=t["informative"],
                label="Yes",
                score_yes=1.0,
                score_no=0.0,
                score_open=0.0,
                judge="world",
                response=f"{t['informative']} So the answer is: {t['precise']}",
                response_rule="informative_concludes",
            )
            for t in triplets.read_shard(index)
        ]
        writer.write_shard(index, JUDGED.to_table(rows), QUARANTINE.to_table([]), rows_in=len(rows))
    writer.commit(len(triplets.manifest.shards))


def bare_scan(pairs: str, kept: str, pair_columns: list[str]) -> float:
    """Read every shard of both inputs, the columns assembly reads."""
    from adamllm_core.dataset import Dataset
    from adamllm_core.pipeline import KEPT_COLUMNS

    start = time.perf_counter()
    for uri, columns in ((pairs, pair_columns), (kept, KEPT_COLUMNS)):
        dataset = Dataset(uri)
        for index in range(len(dataset.manifest.shards)):
            dataset.read_shard(index, columns)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from adamllm_core.ingest import IngestConfig, ingest
    from adamllm_core.pipeline import AssembleConfig, assemble, variant_outputs

    config = AssembleConfig(target_model="tiny:vlm", variants=VARIANTS)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        start = time.perf_counter()
        write_world(work / "source", args.pairs)
        pairs = str(work / "pairs")
        ingest(str(work / "source"), pairs, IngestConfig(domain="bench", workers=2))
        write_triplets(pairs, str(work / "triplets"))
        write_kept(str(work / "triplets"), str(work / "kept"))
        print(f"{args.pairs} pairs and kept tasks written in {time.perf_counter() - start:.0f} s")

        columns = ["id", "caption", "domain", "metadata", "width", "height"]
        scans, runs = [], []
        for repeat in range(args.repeats):
            scans.append(bare_scan(pairs, str(work / "kept"), columns))
            outs = {name: str(work / f"mix-{repeat}-{name}") for name in variant_outputs(config)}
            start = time.perf_counter()
            manifests = assemble(pairs, str(work / "kept"), outs, config)
            runs.append(time.perf_counter() - start)
        scan, took = statistics.median(scans), statistics.median(runs)
        records = sum(m.rows for m in manifests.values())
        print(f"bare scan of the shards: {scan:.2f} s")
        print(
            f"assemble ({len(VARIANTS)} variants, {records} records): {took:.2f} s,"
            f" {args.pairs / took:.0f} pairs/s"
        )
        print(f"assemble over the bare scan: {took / scan:.1f}x")


if __name__ == "__main__":
    main()
