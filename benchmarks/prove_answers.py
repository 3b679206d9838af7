"""Proving ground: do the evaluated models answer from the image, or by one answer per question type?

For each evaluation under a finished `adamllm prove --out OUT` run (and the mutation checks'),
prints per skill: the number of distinct answers, the most common answer and its share, and
the accuracy. A model that answers every colour question "red" has learnt a prior, not to look;
its accuracy is the share of that answer in the benchmark.

    .venv/bin/python benchmarks/prove_answers.py OUT
"""

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from adamllm_core.dataset import Dataset
from adamllm_core.proving.experiment import BENCHMARK


def answer_spread(predictions: str) -> dict[str, dict[str, object]]:
    """Per skill: distinct answers, the most common one and its share (%), accuracy (%)."""
    by_skill: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for row in Dataset(predictions).iter_rows(["group", "parsed", "score"]):
        by_skill[row["group"]].append((row["parsed"] or "", row["score"] or 0.0))
    spread = {}
    for skill, rows in sorted(by_skill.items()):
        answers = Counter(answer for answer, _ in rows)
        top, count = answers.most_common(1)[0]
        spread[skill] = {
            "distinct": len(answers),
            "top": top,
            "top_share": round(100 * count / len(rows)),
            "accuracy": round(100 * sum(score for _, score in rows) / len(rows), 1),
        }
    return spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the OUT of a finished `adamllm prove` run")
    args = parser.parse_args()
    for evaluation in sorted((args.out / "eval").iterdir()):
        predictions = evaluation / BENCHMARK / "predictions"
        if not predictions.exists():
            continue
        cells = [
            f"{skill} {s['distinct']}/{s['top']} {s['top_share']}%/{s['accuracy']}"
            for skill, s in answer_spread(str(predictions)).items()
        ]
        print(f"{evaluation.name:18s} " + "  ".join(cells))
    print("(skill distinct-answers/most-common share/accuracy)")


if __name__ == "__main__":
    main()
