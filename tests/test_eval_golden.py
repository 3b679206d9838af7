"""Every benchmark's items and scores stay what they were before the benchmarks became one
registered class each: digests of the items read from the real samples in ../shared/data and
of their scores under fixed predictions, recorded with the code before that change."""

import hashlib
import json
import random
from pathlib import Path

import pytest

from adamllm_core.evaluation.adapters import read_items
from adamllm_core.evaluation.benchmarks import benchmark
from adamllm_core.evaluation.scoring import gold_text, score_item

# Recorded at 2d28c17 (the adapters before the registry), equal after it.
GOLDEN = {
    (
        "vqa_rad",
        "vqa_rad_train",
    ): "511d2777c23dedfbedf08ab31c70979d6a0e090f983941f0375847b74e33667b",
    ("food101", "food101_mini"): "595dd3c1f3320fe2de451527d82cf3bd5c5a1df4450ebed54324f5d8a86b05ea",
}


def digest(name: str, path: Path) -> str:
    spec = benchmark(name)
    rows = []
    for item in read_items(name, str(path)):
        rng = random.Random(item.qid)
        option = rng.choice(item.choices) if item.choices else "x"
        predictions = [gold_text(item), "yes", "", "no idea", option, "1"]
        scores = [list(score_item(spec, item, p, seed=3).__dict__.values()) for p in predictions]
        rows.append(
            [
                item.qid,
                item.question,
                item.answer,
                item.answer_type,
                item.choices,
                item.prompt,
                hashlib.sha256(item.image).hexdigest(),
                Path(item.source).name,
                json.dumps(item.metadata, sort_keys=True),
                scores,
            ]
        )
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()


@pytest.mark.parametrize(("name", "folder"), sorted(GOLDEN))
def test_items_and_scores_are_unchanged(shared_data: Path, name: str, folder: str) -> None:
    assert digest(name, shared_data / folder) == GOLDEN[(name, folder)]
