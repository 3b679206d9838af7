"""From diagnoses to selections: the skill table of a mistakes dataset, the persisted BM25
indexes (pool skill labels; pool instructions), and each method's selection at a budget."""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from adamllm_core.dataset import Dataset
from adamllm_core.hashing import canonical_json, sha256_hex
from adamllm_core.selection.retrieval import (
    BudgetSplit,
    Selection,
    TextIndex,
    select_all,
    select_by_queries,
    select_random,
    skill_quotas,
    split_budget,
)
from adamllm_core.selection.skills import merge_skills
from adamllm_core.selection.stages import PoolLabels, label_rows
from adamllm_core.storage import join

EXAMPLES_PER_SKILL = 3


@dataclass
class SkillTable:
    """Merged skills with how many errors named each, example errors, and each raw name's
    group; `statuses` counts the answer-switch outcomes."""

    counts: dict[str, int]
    mapping: dict[str, str]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "skills": [
                {"skill": s, "errors": n, "examples": self.examples.get(s, [])}
                for s, n in self.counts.items()
            ],
            "merged": {raw: s for raw, s in self.mapping.items() if raw != s},
            "statuses": self.statuses,
        }

    def markdown(self) -> str:
        lines = ["| skill | errors | example error |", "| --- | ---: | --- |"]
        for skill, count in self.counts.items():
            example = self.examples.get(skill, [{}])[0]
            where = example.get("step_text") or ""
            text = f"{example.get('question', '')} (gold {example.get('gold', '')}, answered {example.get('answer', '')})"
            lines.append(
                f"| {skill} | {count} | {text}" + (f"; wrong step: {where}" if where else "") + " |"
            )
        if self.statuses:
            lines.append("")
            lines.append(
                "answer-switch: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
            )
        return "\n".join(lines)


def analyse_skills(mistakes_uri: str, threshold: float) -> SkillTable:
    """Counts of the merged skills over a mistakes dataset (streamed), most named first."""
    columns = ["qid", "question", "gold", "answer", "steps", "status", "step", "skill"]
    raw: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for row in Dataset(mistakes_uri).iter_rows(columns):
        raw[row["skill"]] += 1
        statuses[row["status"]] += 1
        found = examples.setdefault(row["skill"], [])
        if len(found) < EXAMPLES_PER_SKILL:
            step = row["steps"][row["step"] - 1] if row["step"] else None
            found.append(
                {**{k: row[k] for k in ("qid", "question", "gold", "answer")}, "step_text": step}
            )
    mapping = merge_skills(raw, threshold)
    merged: Counter[str] = Counter()
    grouped: dict[str, list[dict[str, Any]]] = {}
    for skill, count in raw.items():
        merged[mapping[skill]] += count
        grouped.setdefault(mapping[skill], []).extend(examples[skill])
    ordered = dict(sorted(merged.items(), key=lambda item: (-item[1], item[0])))
    return SkillTable(
        counts=ordered,
        mapping=mapping,
        examples={s: grouped[s][:EXAMPLES_PER_SKILL] for s in ordered},
        statuses=dict(statuses),
    )


def _load_or_build(
    uri: str, rows: Iterator[tuple[str, str, str]], meta: dict[str, Any]
) -> TextIndex:
    found = TextIndex.load(uri)
    if found is not None and TextIndex.meta(uri) == {**meta, "rows": len(found)}:
        return found
    index = TextIndex.build(rows)
    index.save(uri, meta)
    return index


def skill_index(labels: PoolLabels) -> tuple[TextIndex | None, str]:
    """BM25 over the pool's skill labels, kept beside them (`index-<labels key>`): built
    once per set of label parts, loaded after; None when the teacher labelled no sample."""
    manifests = [Dataset(uri).manifest for uri in labels.parts]  # each read once
    if not any(manifest.rows for manifest in manifests):
        return None, ""
    fingerprints = sorted(manifest.fingerprint for manifest in manifests)
    key = sha256_hex(canonical_json(fingerprints))[:16]
    uri = join(labels.root, f"index-{key}")
    return _load_or_build(uri, label_rows(labels.parts), {"labels": fingerprints}), uri


def instruction_index(pool_uri: str, index_root: str) -> tuple[TextIndex, str]:
    """BM25 over the pool's instructions (the instruction-similarity baseline; random and
    full draw from its rows, the whole pool)."""
    fingerprint = Dataset(pool_uri).manifest.fingerprint
    uri = join(index_root, f"instructions-{fingerprint[:16]}")
    rows = (
        (row["id"], row["task"], row["instruction"])
        for row in Dataset(pool_uri).iter_rows(["id", "task", "instruction"])
    )
    return _load_or_build(uri, rows, {"pool": fingerprint}), uri


# Methods that read the pool's instruction index (random and full draw from its rows).
INSTRUCTION_METHODS = ("instruction_similarity", "random", "full")


def choose(
    method: str,
    budget: int,
    *,
    skills: SkillTable | None,
    skill_labels: TextIndex | None,
    instructions: TextIndex | None,
    wrong_questions: list[str],
    validation_questions: list[str],
    split: BudgetSplit,
    per_task_cap: int | None,
    seed: int,
) -> Selection:
    """One method's selection at one budget; `instructions` may be None for a method outside
    INSTRUCTION_METHODS (the skill methods need only the skill labels)."""
    if method in ("error_driven", "no_mistake_identification", "no_skill_analysis"):
        quotas = (
            split_budget(Counter(wrong_questions), budget)  # the wrong questions' text
            if method == "no_skill_analysis"
            else skill_quotas(skills.counts if skills else {}, budget, split)
        )
        if skill_labels is None:  # the teacher labelled no pool sample: nothing matches
            return Selection([], quotas, {q: n for q, n in quotas.items() if n})
        return select_by_queries(skill_labels, quotas, per_task_cap=per_task_cap)
    if method in INSTRUCTION_METHODS:
        if instructions is None:
            raise ValueError(f"{method} needs the pool's instruction index")
        if method == "instruction_similarity":  # INSTA-like: validation questions vs instructions
            quotas = split_budget(Counter(validation_questions), budget)
            return select_by_queries(instructions, quotas, per_task_cap=per_task_cap)
        if method == "random":
            return Selection(select_random(instructions, budget, seed), {}, {})
        return Selection(select_all(instructions), {}, {})
    raise ValueError(f"unknown selection method {method!r}")


def validation_questions(
    errors_uri: str, benchmark_name: str, data: str, limit: int | None
) -> tuple[list[str], list[str]]:
    """Every validation question (from the benchmark file, answered or not: the instruction-
    similarity baseline's queries), and the ones the student got wrong."""
    from adamllm_core.evaluation.adapters import read_items

    every = [
        item.question or item.prompt or ""
        for item in read_items(benchmark_name, data, limit=limit, images=False)
    ]
    wrong = [
        row["question"]
        for row in Dataset(errors_uri).iter_rows(["question", "correct"])
        if not row["correct"]
    ]
    return every, wrong
