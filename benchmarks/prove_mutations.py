"""Proving ground mutation checks: does the proving ground catch a broken method?

On a finished `adamllm prove --out OUT` run, post-trains the base on two broken single-stage
mixtures and scores them on the domain benchmark beside the run's own variants:

- `inverted_filter`: the consistency filter keeps what it should reject (labels No and Open)
  and rejects what it should keep;
- `masked_synthetic`: the single-stage mixture with no loss on the synthetic task's turns
  (only the caption is learnt; the synthetic turns stay in the context).

The single-stage gain should disappear in both. Judge labels and the synthetic data are
reused from the run (the filter's request cache), so only post-training and evaluation run.

    .venv/bin/python benchmarks/prove_mutations.py OUT
"""

import argparse
import json
from pathlib import Path
from unittest import mock

from adamllm_core.config import load_domain_config
from adamllm_core.evaluation.run import evaluate
from adamllm_core.parallel import run_parallel
from adamllm_core.pipeline import CAPTION_PROMPTS, assemble
from adamllm_core.proving.experiment import ProveConfig, benchmark_config, summary_of
from adamllm_core.training import encoding, trainer
from adamllm_core.training.trainer import load_train_config, train_to


def caption_replies_only(renderer, turns):
    """The mutation: only replies to a caption request are trained; the synthetic task's
    replies are masked (they stay in the context)."""
    segments = encoding.conversation_segments(renderer, turns)
    asked = [
        turns[i - 1]["content"].removeprefix("<image>")
        for i, turn in enumerate(turns)
        if turn["role"] == "assistant"
    ]
    return [
        (text, trained and asked[index // 2] in CAPTION_PROMPTS)
        for index, (text, trained) in enumerate(segments)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="a finished `adamllm prove --out` folder")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    report = json.loads((out / "report.json").read_text())
    config = ProveConfig.model_validate(report["config"])
    domain = load_domain_config(out / "proving.yaml")
    base = report["models"]["base"]
    post = load_train_config({**config.post_train, "model": base})
    world = str(out / "world")

    inverted_filter = domain.filter.model_copy(update={"keep": ("No", "Open")})
    kept, _ = run_parallel(
        "filter_triplets",
        [domain.uri("triplets"), domain.uri("filtered-inverted"), domain.uri("rejected-inverted")],
        inverted_filter,
        cache_uri=domain.uri("_cache/filter"),
        overwrite=True,
    )
    mixture = domain.uri("mixture-inverted")
    assemble(
        domain.uri("pairs"),
        domain.uri("filtered-inverted"),
        {"single_stage": mixture},
        domain.assemble.model_copy(update={"variants": ("single_stage",)}),
        overwrite=True,
    )
    runs = {"inverted_filter": train_to(post, mixture, domain.uri("model-inverted-filter"))}
    with mock.patch.object(trainer, "conversation_segments", caption_replies_only):
        runs["masked_synthetic"] = train_to(
            post, domain.uri("mixture"), domain.uri("model-masked-synthetic")
        )
    accuracy = dict(report["adamllm"]["accuracy"])
    for name, run in runs.items():
        summary = evaluate(
            benchmark_config(config, world, run["final"]), str(out / f"eval/{name}"), overwrite=True
        )
        accuracy[name] = summary_of(summary)[0]
    print(f"inverted filter kept {kept.rows} triplets")
    for name, value in accuracy.items():
        print(f"{name:18s} {value}")
    (out / "mutations.json").write_text(json.dumps(accuracy, indent=2))


if __name__ == "__main__":
    main()
