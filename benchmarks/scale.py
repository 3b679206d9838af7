"""Bounded memory as data grows: peak RSS and rows/s of every data stage at two sizes.

    .venv/bin/python benchmarks/scale.py [--small 5000] [--large 50000]

For each size N: writes N image-caption pairs of the proving ground's world (generated
96 px scenes and their captions: an annotation file and one PNG per pair), then runs
ingest → synthesize (tiny:vlm, 8 new tokens) → filter (tiny:lm judge, short template)
→ assemble
(tiny:vlm target, four variants), each stage in a fresh process, and prints that
process's peak RSS and rows/s. A random tiny synthesizer's short outputs do not parse as
tasks (they are quarantined, which is what the synthesize stage is measured on), so the
filter and assemble stages read a triplets dataset written from the world's own
questions, one per pair, shard k from pairs shard k as synthesize writes it.

Goal: every stage's peak RSS at the large size within 1.25x of the small size's.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

STAGES = ("ingest", "synthesize", "filter", "assemble")


def write_world(root: Path, count: int) -> None:
    from adamllm_core.pipeline import seeded_rng
    from adamllm_core.proving.world import WorldConfig, caption, render, sample_scene

    world = WorldConfig()
    (root / "images").mkdir(parents=True)
    with (root / "data.jsonl").open("w") as handle:
        for index in range(count):
            rng = seeded_rng(0, "scale", str(index))
            scene = sample_scene(rng, world.general, world)
            (root / "images" / f"{index:07d}.png").write_bytes(render(scene, world.image_size, rng))
            record = {
                "image": f"images/{index:07d}.png",
                "caption": f"{caption(scene, rng)} (scene {index})",
                "scene": scene.to_json(),
            }
            handle.write(json.dumps(record) + "\n")


def derived_writer(parent_uri: str, out: str, schema, stage: str) -> tuple:
    """The parent dataset, and a prepared writer of `schema` at `out` that descends from
    it (as a stage's output does, so assembly's shard-by-shard join applies)."""
    from adamllm_core.dataset import Dataset, DatasetWriter, ParentRef

    parent = Dataset(parent_uri)
    writer = DatasetWriter(
        out,
        schema=schema,
        stage=stage,
        parents=[ParentRef(uri=parent_uri, fingerprint=parent.manifest.fingerprint)],
        config={},
        config_hash=stage,
    )
    writer.prepare()
    return parent, writer


def write_triplets(pairs_uri: str, out: str) -> None:
    """One task per pair from its scene's own questions, aligned shard by shard."""
    from adamllm_core.pipeline import seeded_rng
    from adamllm_core.proving.world import Scene, questions
    from adamllm_core.schemas import QUARANTINE, TRIPLETS, TaskTriplet
    from adamllm_core.synthesis import triplet_id

    pairs, writer = derived_writer(pairs_uri, out, TRIPLETS, "world-tasks")
    for index in range(len(pairs.manifest.shards)):
        rows = []
        for pair in pairs.read_shard(index, ["id", "domain", "metadata"]):
            metadata = pair["metadata"]
            metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
            scene = Scene.from_json(metadata["scene"])
            rng = seeded_rng(0, "task", pair["id"])
            question = rng.choice(questions(scene, rng))
            rows.append(
                TaskTriplet(
                    id=triplet_id(pair["id"], question.question),
                    pair_id=pair["id"],
                    domain=pair["domain"],
                    instruction=question.question,
                    precise=question.answer,
                    informative=question.informative,
                    synthesizer="world",
                    turns=4,
                    raw_output="",
                    prompt_tokens=0,
                    completion_tokens=0,
                )
            )
        writer.write_shard(
            index, TRIPLETS.to_table(rows), QUARANTINE.to_table([]), rows_in=len(rows)
        )
    writer.commit(len(pairs.manifest.shards))


def run_stage(stage: str, work: str) -> dict:
    from adamllm_core.engines import EngineConfig
    from adamllm_core.filtering import FilterConfig
    from adamllm_core.ingest import IngestConfig, ingest
    from adamllm_core.pipeline import AssembleConfig, assemble, filter_triplets, synthesize
    from adamllm_core.synthesis import SynthConfig

    started = time.perf_counter()
    if stage == "ingest":
        manifest = ingest(
            f"{work}/source/data.jsonl", f"{work}/pairs", IngestConfig(domain="bench")
        )
    elif stage == "synthesize":
        config = SynthConfig(engine=EngineConfig(model="tiny:vlm", batch_size=64), max_new_tokens=8)
        manifest = synthesize(f"{work}/pairs", f"{work}/synthesized", config)
    elif stage == "filter":
        write_triplets(f"{work}/pairs", f"{work}/triplets")
        started = time.perf_counter()
        config = FilterConfig(
            engine=EngineConfig(model="tiny:lm", batch_size=64),
            keep=("Yes", "No", "Open"),
            template="short",  # the proving ground's; the paper's is 2K tokens a request
        )
        manifest, _ = filter_triplets(
            f"{work}/triplets", f"{work}/kept", f"{work}/rejected", config
        )
    else:
        config = AssembleConfig(
            target_model="tiny:vlm",
            variants=("single_stage", "two_stage", "caption_only", "synthetic_only"),
        )
        outs = {
            v: f"{work}/mix-{v}"
            for v in (
                "single_stage",
                "two_stage_1",
                "two_stage_2",
                "caption_only",
                "synthetic_only",
            )
        }
        manifest = assemble(f"{work}/pairs", f"{work}/kept", outs, config)["single_stage"]
    seconds = time.perf_counter() - started
    return {
        "rows_in": manifest.stats.rows_in,
        "rows_out": manifest.rows,
        "seconds": round(seconds, 1),
        "peak_mb": peak_mb(),
    }


def peak_mb() -> float:
    """This process's peak resident memory so far, in MB: VmHWM, which starts afresh at exec.
    ru_maxrss does not (getrusage(2): kept across execve), so a child of a parent that held
    more reported the parent's peak (select_memory's parent holds the pool it wrote)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_ratio_main(
    description: str,
    child: Callable[..., None],
    measure: Callable[[int], dict],
    *,
    small: int,
    large: int,
    unit: str,
    goal: float,
) -> None:
    """The command line of a peak-RSS benchmark at two sizes: `--child ARGS` is the fresh
    process `run_child` starts (it runs `child(*ARGS)`); else `measure` at each size, then
    the ratio of the two peak RSS (`peak_mb` in what it returns) against `goal`."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=small)
    parser.add_argument("--large", type=int, default=large)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    at_small, at_large = measure(args.small), measure(args.large)
    ratio = at_large["peak_mb"] / at_small["peak_mb"]
    print(
        f"peak RSS {args.large} / {args.small} {unit}: {at_large['peak_mb']} / "
        f"{at_small['peak_mb']} MB = {ratio:.2f}x (goal <= {goal}x)"
    )


def run_child(script: str, *args: str) -> dict:
    """`script --child ARGS` in a fresh process (its own peak RSS); its last line's JSON."""
    done = subprocess.run(
        [sys.executable, script, "--child", *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(count: int, stages: list[str]) -> dict[str, dict]:
    results = {}
    with tempfile.TemporaryDirectory() as work:
        write_world(Path(work) / "source", count)
        for stage in stages:
            results[stage] = run_child(__file__, stage, work)
            row = results[stage]
            print(
                f"{count:>7} pairs  {stage:<10} rows in {row['rows_in']:>7}, out {row['rows_out']:>7},"
                f" {row['rows_in'] / max(row['seconds'], 1e-9):8.1f} rows/s,"
                f" peak RSS {row['peak_mb']:7.1f} MB",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=50000)
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="the last stage to run")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_stage(*args.child)))
        return
    stages = list(STAGES[: STAGES.index(args.until) + 1])
    small, large = measure(args.small, stages), measure(args.large, stages)
    worst = 0.0
    for stage in stages:
        ratio = large[stage]["peak_mb"] / small[stage]["peak_mb"]
        worst = max(worst, ratio)
        print(
            f"{stage:<10} peak RSS {args.large} / {args.small} pairs: "
            f"{large[stage]['peak_mb']} / {small[stage]['peak_mb']} MB = {ratio:.2f}x"
        )
    print(f"worst ratio {worst:.2f}x (goal <= 1.25x)")


if __name__ == "__main__":
    main()
