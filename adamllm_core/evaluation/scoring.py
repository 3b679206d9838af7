"""Scoring one prediction, and a benchmark's summary (Table 13's metrics, x100).

VQA benchmarks (SLAKE, PathVQA, VQA-RAD) follow LLaVA-Med as AdaMLLM runs it: OPEN is token
recall; CLOSED counts a hit when the prediction contains yes or no and contains the gold
answer. That rule scores 0 on CLOSED questions whose answer is not yes/no (e.g. "MRI"),
however right the prediction, so a corrected CLOSED accuracy is reported beside it.
"""

import random
import re
from dataclasses import dataclass

from adamllm_core.evaluation.items import EvalItem
from adamllm_core.evaluation.metrics import (
    closed_hit_corrected,
    closed_hit_paper,
    normalize_answer,
    open_recall,
    parse_choice,
    parse_class,
    parse_labels,
    rouge_l,
    set_f1,
    set_recall,
)
from adamllm_core.evaluation.spec import BenchmarkSpec, option_letters


@dataclass(frozen=True)
class ItemScore:
    group: str  # "open" / "closed" for VQA, else the benchmark's metric
    parsed: str  # the answer read from the prediction (option, class, labels joined by "; ")
    score: float  # in [0, 1]; for CLOSED the paper-compatible rule
    score_corrected: float | None  # CLOSED only: the corrected rule
    fallback: bool  # the option was drawn at random (nothing parseable)


def stored_score(row: dict) -> ItemScore:
    """An ItemScore back from a predictions row (dict or Prediction fields)."""
    return ItemScore(
        row["group"], row["parsed"], row["score"], row["score_corrected"], row["fallback"]
    )


def gold_text(item: EvalItem) -> str:
    return "; ".join(item.answer) if isinstance(item.answer, list) else item.answer


def _gold_letter(item: EvalItem) -> str:
    letters = option_letters(len(item.choices or []))
    answer = str(item.answer).strip()
    if answer.upper() in letters:
        return answer.upper()
    for letter, text in zip(letters, item.choices or []):
        if text.strip().lower() == answer.lower():
            return letter
    raise ValueError(
        f"{item.source or item.qid}: answer {answer!r} is neither an option letter nor an option text"
    )


_NUMBER = re.compile(r"\d+")


def score_item(spec: BenchmarkSpec, item: EvalItem, prediction: str, seed: int = 0) -> ItemScore:
    prediction = prediction or ""
    rng_key = f"{seed}:{item.qid}"  # the random fallback is reproducible per question
    if spec.metric == "vqa":
        answer = str(item.answer)
        if (item.answer_type or "").upper() == "CLOSED":
            return ItemScore(
                "closed",
                normalize_answer(prediction),
                closed_hit_paper(prediction, answer),
                closed_hit_corrected(prediction, answer),
                False,
            )
        return ItemScore(
            "open", normalize_answer(prediction), open_recall(prediction, answer), None, False
        )
    if spec.metric == "choice":
        choices = dict(zip(option_letters(len(item.choices or [])), item.choices or []))
        key, fallback = parse_choice(prediction, choices, rng_key)
        return ItemScore("choice", key, float(key == _gold_letter(item)), None, fallback)
    if spec.metric == "classification":
        names = list(item.choices or [])
        if spec.class_parser == "indexed":  # option indices, then names, last mention wins
            key, fallback = parse_choice(
                prediction, {str(i): name for i, name in enumerate(names)}, rng_key
            )
            parsed = names[int(key)]
        else:  # scene classes: no official parser, and their prompts number no options
            named = parse_class(prediction, names)
            fallback = named is None
            parsed = named if named is not None else random.Random(rng_key).choice(names)
        return ItemScore(
            "classification",
            parsed,
            float(parsed.lower() == str(item.answer).lower()),
            None,
            fallback,
        )
    if spec.metric in ("multilabel_f1", "multilabel_recall"):
        names = list(item.choices or [])
        found = parse_labels(prediction, names)
        gold = {
            a.lower() for a in (item.answer if isinstance(item.answer, list) else [item.answer])
        }
        predicted = {f.lower() for f in found}
        measure = set_f1 if spec.metric == "multilabel_f1" else set_recall
        return ItemScore(spec.metric, "; ".join(found), measure(predicted, gold), None, False)
    if spec.metric == "rouge_l":
        return ItemScore("rouge_l", prediction, rouge_l(prediction, gold_text(item)), None, False)
    if spec.metric == "floodnet":
        return _floodnet(item, prediction)
    if spec.metric == "short_answer":  # the last option named, whole words; none named scores 0
        named = parse_class(prediction, list(item.choices or [str(item.answer)]), joined=False)
        skill = str(item.metadata.get("skill", "all"))
        return ItemScore(
            skill,
            named or "",
            float(named is not None and named.lower() == str(item.answer).lower()),
            None,
            False,
        )
    raise ValueError(f"no scorer for metric {spec.metric!r}")


def _floodnet(item: EvalItem, prediction: str) -> ItemScore:
    """No official scorer exists: yes/no by the corrected CLOSED rule, counts by the first
    number written, conditions by whole-phrase match, all after LLaVA-Med normalisation."""
    answer = str(item.answer)
    normalised = normalize_answer(prediction)
    gold = normalize_answer(answer)
    if gold in ("yes", "no"):
        return ItemScore(
            "floodnet", normalised, closed_hit_corrected(prediction, answer), None, False
        )
    if gold.isdigit():
        number = _NUMBER.search(normalised)
        parsed = number.group() if number else ""
        return ItemScore("floodnet", parsed, float(parsed == gold), None, False)
    # "flooded" must not hit inside "non flooded" / "not flooded"
    hit = (
        bool(gold)
        and re.search(rf"(?<!\w)(?<!non )(?<!not ){re.escape(gold)}(?!\w)", normalised) is not None
    )
    return ItemScore("floodnet", normalised, float(hit), None, False)


HEADLINE = {
    "choice": "accuracy",
    "classification": "accuracy",
    "multilabel_f1": "F1",
    "multilabel_recall": "recall",
    "rouge_l": "Rouge-L",
    "floodnet": "accuracy",
    "short_answer": "accuracy",
}


def summarise(spec: BenchmarkSpec, scores: list[ItemScore]) -> list[dict[str, object]]:
    """One row per reported task (VQA benchmarks: open and closed, as in Table 13), x100."""

    def mean(values: list[float]) -> float | None:
        return round(100 * sum(values) / len(values), 2) if values else None

    fallbacks = sum(s.fallback for s in scores)
    if spec.metric == "vqa":
        open_scores = [s.score for s in scores if s.group == "open"]
        closed = [s for s in scores if s.group == "closed"]
        return [
            {
                "benchmark": spec.name,
                "task": f"{spec.title} open",
                "domain": spec.domain,
                "metric": "recall",
                "score": mean(open_scores),
                "n": len(open_scores),
                "fallbacks": 0,
            },
            {
                "benchmark": spec.name,
                "task": f"{spec.title} closed",
                "domain": spec.domain,
                "metric": "accuracy",
                "score": mean([s.score for s in closed]),
                "n": len(closed),
                "fallbacks": 0,
                "score_corrected": mean([s.score_corrected or 0.0 for s in closed]),
            },
        ]
    row: dict[str, object] = {
        "benchmark": spec.name,
        "task": spec.title,
        "domain": spec.domain,
        "metric": HEADLINE[spec.metric],
        "score": mean([s.score for s in scores]),
        "n": len(scores),
        "fallbacks": fallbacks,
    }
    if spec.metric == "short_answer":  # accuracy per skill (the group), beside the overall one
        row["per_skill"] = {
            group: mean([s.score for s in scores if s.group == group])
            for group in sorted({s.group for s in scores})
        }
    return [row]
