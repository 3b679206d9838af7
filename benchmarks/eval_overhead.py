"""Pipeline overhead of evaluation: the evaluate stage's time over the bare engine's time on
the same prompts, same engine, measured in one run.

    .venv/bin/python benchmarks/eval_overhead.py [--benchmark vqa_rad] [--data DIR] [--max-new-tokens 64]

The stage reads the benchmark, normalises images, renders and caches every request, parses
and scores answers and writes Parquet and a summary; the bare run only calls engine.run on
the same requests in the same batches. Goal: under 1.05x.
"""

import argparse
import tempfile
from pathlib import Path

from overhead import bare_engine, compare

from adamllm_core.engines import EngineConfig, make_engine
from adamllm_core.evaluation.adapters import read_items
from adamllm_core.evaluation.benchmarks import benchmark
from adamllm_core.evaluation.run import EvalConfig, eval_request, evaluate
from adamllm_core.images import normalise_image

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmark", default="vqa_rad")
    parser.add_argument("--data", default=str(REPO / "samples" / "eval_demo" / "vqa_rad"))
    parser.add_argument("--model", default="tiny:vlm")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = EvalConfig(
        benchmark=args.benchmark,
        data=args.data,
        max_new_tokens=args.max_new_tokens,
        engine=EngineConfig(model=args.model, batch_size=args.batch_size),
    )
    engine = make_engine(config.engine)
    spec = benchmark(args.benchmark)
    # the engine gets the images the stage sends it: normalised (the stage's own work is timed)
    items = [
        i.model_copy(update={"image": normalise_image(i.image, config.images).data})
        for i in read_items(spec.name, args.data)
    ]
    requests = [eval_request(spec, item, config) for item in items]
    engine.run(requests[: args.batch_size])  # load and warm up once, for both

    print(
        f"{len(requests)} questions ({spec.title}), {args.model}, max_new_tokens={args.max_new_tokens}, "
        f"batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory() as work:
        compare(
            bare_engine(engine, requests, args.batch_size),
            lambda n: evaluate(config, f"{work}/run-{n}", engine=engine),
            args.repeats,
            "evaluate",
        )


if __name__ == "__main__":
    main()
