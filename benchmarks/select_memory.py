"""Peak RSS of error-driven selection's pool stages against the size of the pool.

    .venv/bin/python benchmarks/select_memory.py [--small 4000] [--large 20000]

For each size N: writes a pool of N samples in Vision-Flan's annotation form (the proving
ground's world, bundles.write_pool), then runs each stage in a fresh process and prints its
peak RSS and seconds:
- import: annotation.json → the pool dataset (records streamed, images normalised);
- labels: one skill label per sample, written shard by shard as a teacher's part would be
  (the skill its world question exercises; no model, so only the data path is measured);
- index: the BM25 skill index built over the labels and saved beside them;
- select: the index loaded, error-driven selection at a budget of N / 10, the selection
  written as training conversations.
Then the ratio large / small per stage. Import, labels and the selection's writing stream
shards (goal at most 1.15x for 5x the pool); the index holds the pool's labels by nature
(bm25s keeps its sparse matrix and ids in memory), so index and select grow with the pool:
their MB per 1,000 samples above the small size's is printed too.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from scale import derived_writer, peak_mb, run_child  # benchmarks/scale.py

STAGES = ("import", "labels", "index", "select")
SKILLS = {"count": "counting objects", "row": "vertical position", "size": "size comparison"}


def skill_of_task(task: str) -> str:
    from adamllm_core.proving.bundles import POOL_TASKS

    return next(skill for skill, tasks in POOL_TASKS.items() if task in tasks)


def child(stage: str, work: str) -> None:
    from adamllm_core.dataset import Dataset
    from adamllm_core.schemas import POOL_LABELS, QUARANTINE, PoolLabel
    from adamllm_core.selection.choose import SkillTable, choose, skill_index
    from adamllm_core.selection.pool_source import PoolConfig, import_pool
    from adamllm_core.selection.stages import PoolLabels, write_selection

    started = time.perf_counter()
    labels = PoolLabels(root=f"{work}/labels/teacher", parts=[f"{work}/labels/teacher/part-0"])
    facts: dict = {}
    if stage == "import":
        facts["rows"] = import_pool(
            f"{work}/source/annotation.json", f"{work}/pool", PoolConfig()
        ).rows
    elif stage == "labels":
        pool, writer = derived_writer(f"{work}/pool", labels.parts[0], POOL_LABELS, "label_pool")
        for index in range(len(pool.manifest.shards)):
            rows = [
                PoolLabel(
                    id=row["id"],
                    task=row["task"],
                    skills=[name := skill_of_task(row["task"])],
                    raw=name,
                    teacher="benchmark",
                )
                for row in pool.read_shard(index, ["id", "task"])
            ]
            writer.write_shard(
                index, POOL_LABELS.to_table(rows), QUARANTINE.to_table([]), rows_in=len(rows)
            )
        facts["rows"] = writer.commit(len(pool.manifest.shards)).rows
    elif stage == "index":
        index, _ = skill_index(labels)
        facts["rows"] = len(index)
    else:
        rows = Dataset(f"{work}/pool").manifest.rows
        table = SkillTable(
            counts={SKILLS["count"]: 6, SKILLS["row"]: 3, SKILLS["size"]: 1},
            mapping={name: name for name in SKILLS.values()},
        )
        selection = choose(
            "error_driven",
            rows // 10,
            skills=table,
            skill_labels=skill_index(labels)[0],
            instructions=None,  # as the task: error-driven reads only the skill index
            wrong_questions=[],
            validation_questions=[],
            split="proportional",
            per_task_cap=None,
            seed=0,
        )
        facts["rows"] = write_selection(
            f"{work}/pool", selection.samples, "error_driven", f"{work}/selected"
        ).rows
    print(
        json.dumps(
            {**facts, "seconds": round(time.perf_counter() - started, 1), "peak_mb": peak_mb()}
        )
    )


def measure(count: int) -> dict[str, dict]:
    from adamllm_core.proving.bundles import write_pool
    from adamllm_core.proving.world import WorldConfig

    results = {}
    with tempfile.TemporaryDirectory() as work:
        write_pool(Path(work) / "source", seed=1, world=WorldConfig(), count=count)
        for stage in STAGES:
            results[stage] = row = run_child(__file__, stage, work)
            print(
                f"{count:>7} samples  {stage:<7} {row['rows']:>7} rows  {row['seconds']:6.1f} s"
                f"  peak RSS {row['peak_mb']:7.1f} MB",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=4000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    small, large = measure(args.small), measure(args.large)
    for stage in STAGES:
        ratio = large[stage]["peak_mb"] / small[stage]["peak_mb"]
        growth = (large[stage]["peak_mb"] - small[stage]["peak_mb"]) / (args.large - args.small)
        print(
            f"{stage:<7} peak RSS {args.large} / {args.small} samples: {large[stage]['peak_mb']} /"
            f" {small[stage]['peak_mb']} MB = {ratio:.2f}x, {growth * 1000:+.1f} MB per 1,000 samples"
        )


if __name__ == "__main__":
    sys.exit(main())
