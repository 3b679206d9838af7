"""Training streams its data: peak RSS of a few training steps on a small and a large mixture.

    .venv/bin/python benchmarks/train_memory.py [--small 2000] [--large 20000] [--steps 20]

For each size N: writes N image-caption pairs of the proving ground's world (as
`benchmarks/scale.py` does), ingests them, assembles a caption-only mixture for tiny:vlm
(the real assemble: the mixture names its pairs' images, it holds none), then trains
tiny:vlm on it for a few steps in a fresh process (DataLoader workers as given) and prints
that process's peak RSS. A trainer that encoded the whole mixture up front held every
example's pixels: its peak grew with N.

Goal: peak RSS at the large size within 1.3x of the small size's.
"""

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import run_child, write_world


def prepare(work: str) -> int:
    from adamllm_core.ingest import IngestConfig, ingest
    from adamllm_core.pipeline import AssembleConfig, assemble
    from adamllm_core.proving.bundles import commit_rows, dataset_writer
    from adamllm_core.schemas import JUDGED

    ingest(f"{work}/source/data.jsonl", f"{work}/pairs", IngestConfig(domain="bench"))
    # no synthetic task survived: every record is the caption task (what is measured here is
    # the trainer's memory, not the mixture's makeup)
    commit_rows(dataset_writer(f"{work}/kept", JUDGED, "bench", {}), JUDGED, [])
    config = AssembleConfig(target_model="tiny:vlm", variants=("caption_only",))
    mixture = assemble(f"{work}/pairs", f"{work}/kept", {"caption_only": f"{work}/mixture"}, config)
    return mixture["caption_only"].rows


def train(work: str, steps: int, workers: int) -> dict:
    from adamllm_core.training.trainer import preset, train_to

    config = preset(
        "tiny",
        task="post_train",
        max_steps=steps,
        global_batch_size=8,
        per_device_batch_size=8,
        save_steps=10_000,
        dataloader_workers=workers,
    )
    started = time.perf_counter()
    summary = train_to(config, f"{work}/mixture", f"{work}/run")
    return {
        "examples": summary["examples"],
        "steps": summary["steps"],
        "seconds": round(time.perf_counter() - started, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure(count: int, steps: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        write_world(Path(work) / "source", count)
        rows = run_child(__file__, "prepare", work)["rows"]
        result = run_child(__file__, "train", work, str(steps), str(workers))
    print(
        f"{count:>7} pairs: mixture {rows} records, {result['steps']} steps in "
        f"{result['seconds']} s, peak RSS {result['peak_mb']} MB",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "prepare":
            print(json.dumps({"rows": prepare(args.child[1])}))
        else:
            print(json.dumps(train(args.child[1], int(args.child[2]), int(args.child[3]))))
        return
    small = measure(args.small, args.steps, args.workers)
    large = measure(args.large, args.steps, args.workers)
    ratio = large["peak_mb"] / small["peak_mb"]
    print(f"peak RSS {args.large} / {args.small}: {large['peak_mb']} / {small['peak_mb']} MB")
    print(f"peak RSS ratio: {ratio:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
