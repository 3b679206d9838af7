"""Pipeline overhead of synthesis: the synthesize stage's time over the bare engine's time
on the same prompts, same engine, measured in one run.

    .venv/bin/python benchmarks/synth_overhead.py [--model tiny:vlm] [--max-new-tokens 512]
        [--repeats 3] [--kind transformers|vllm] [--device cpu|cuda]
        [--copies 1] [--rows-per-shard 256]

`--copies N` makes N pairs of each sample image (captions numbered), `--rows-per-shard`
cuts them into several shards: then the executor's reading ahead and writing behind can
overlap the engine (one shard of 24 pairs, the default, leaves only fixed costs).
The stage reads pairs, renders and caches every request, parses outputs and writes
Parquet; the bare run only calls engine.run on the same requests in the same batches.
Goal: under 1.05x.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from overhead import bare_engine, compare

from adamllm_core.dataset import Dataset
from adamllm_core.engines import EngineConfig, make_engine
from adamllm_core.engines.hf import HFRenderer
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.models import resolve_model
from adamllm_core.pipeline import synthesize
from adamllm_core.synthesis import SynthConfig, prompt_context, synth_request

REPO = Path(__file__).resolve().parents[1]


def copied_source(source: str, copies: int, folder: Path) -> str:
    """`source` (a folder with data.jsonl) with each record `copies` times, captions
    numbered so every copy is its own pair and request."""
    if copies == 1:
        return source
    shutil.copytree(Path(source) / "images", folder / "images")
    records = [json.loads(line) for line in (Path(source) / "data.jsonl").read_text().splitlines()]
    with open(folder / "data.jsonl", "w") as out:
        for copy in range(copies):
            for record in records:
                numbered = {**record, "caption": f"{record['caption']} ({copy})"}
                out.write(json.dumps(numbered) + "\n")
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default=str(REPO / "samples" / "biomed_pairs"))
    parser.add_argument("--model", default="tiny:vlm")
    parser.add_argument("--max-new-tokens", type=int, default=512)  # the paper's synthesis limit
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kind", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--device", default="auto", help="transformers: auto, cpu, cuda")
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--rows-per-shard", type=int, default=256)
    args = parser.parse_args()

    engine_options = (
        {"device": args.device} if args.kind == "transformers" else {"gpu_memory_utilization": 0.3}
    )
    config = SynthConfig(
        engine=EngineConfig(
            kind=args.kind, model=args.model, batch_size=args.batch_size, **engine_options
        ),
        max_new_tokens=args.max_new_tokens,
    )
    engine = make_engine(config.engine)
    with tempfile.TemporaryDirectory() as work:
        pairs = f"{work}/pairs"
        ingest(
            copied_source(args.source, args.copies, Path(work) / "source"),
            pairs,
            IngestConfig(domain="bench", rows_per_shard=args.rows_per_shard),
        )
        rows = list(Dataset(pairs).iter_rows(["caption", "image"]))
        context = prompt_context(HFRenderer(resolve_model(args.model)), config)
        requests = [synth_request(r["caption"], r["image"], config, context) for r in rows]
        engine.run(requests[: args.batch_size])  # load and warm up once, for both

        print(
            f"{len(requests)} requests, {args.model}, max_new_tokens={args.max_new_tokens}, batch {args.batch_size}"
        )
        compare(
            bare_engine(engine, requests, args.batch_size),
            lambda n: synthesize(
                pairs, f"{work}/triplets-{n}", config, cache_uri=f"{work}/cache-{n}", engine=engine
            ),
            args.repeats,
            "synthesize",
        )


if __name__ == "__main__":
    main()
