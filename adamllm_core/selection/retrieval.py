"""Retrieval from the pool: a BM25 index (bm25s) over one text per pool sample (its skill
labels, or its instruction for the instruction-similarity baseline), persisted on any
fsspec URI; the budget split across skills; skill-matched selection with deduplication and
optional per-task caps; and the baselines at the same budget (random, instruction
similarity, the full pool)."""

import json
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import bm25s
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adamllm_core.storage import filesystem, join, write_bytes_atomic

BudgetSplit = Literal["proportional", "equal"]
BUDGET_PRESETS = {"10k": 10_000, "30k": 30_000, "100k": 100_000}
_ROWS_FILE = "rows.parquet"
_DONE_FILE = "index.json"  # written last: its presence means the index is whole


def split_budget(
    weights: Mapping[str, float], budget: int, priority: Mapping[str, float] | None = None
) -> dict[str, int]:
    """`budget` in whole samples, proportional to `weights` (largest remainder: the parts
    sum to the budget exactly; equal remainders go to the higher `priority`, the larger
    weight, then by name)."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    positive = {key: float(w) for key, w in weights.items() if w > 0}
    if not positive:
        return dict.fromkeys(weights, 0)
    total = sum(positive.values())
    exact = {key: budget * w / total for key, w in positive.items()}
    parts = {key: int(value) for key, value in exact.items()}
    rest = budget - sum(parts.values())
    rank = priority or {}
    order = sorted(
        positive,
        key=lambda key: (-(exact[key] - parts[key]), -rank.get(key, 0), -positive[key], key),
    )
    for key in order[:rest]:
        parts[key] += 1
    return {key: parts.get(key, 0) for key in weights}


def skill_quotas(counts: Mapping[str, int], budget: int, split: BudgetSplit) -> dict[str, int]:
    """Each skill's share of the budget: proportional to how many errors named it, or equal."""
    weights = counts if split == "proportional" else dict.fromkeys(counts, 1)
    return split_budget(weights, budget, priority=counts)


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class TextIndex:
    """BM25 over one text per pool sample, with each sample's id and task."""

    def __init__(self, retriever: bm25s.BM25, ids: pa.Array, tasks: pa.Array):
        self.retriever = retriever
        self.ids = ids
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, rows: Iterable[tuple[str, str, str]]) -> "TextIndex":
        """From (id, task, text) rows; ids must be unique."""
        ids, tasks, texts = [], [], []
        for sample_id, task, text in rows:
            ids.append(sample_id)
            tasks.append(task)
            texts.append(text)
        if len(set(ids)) != len(ids):
            repeated = next(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"sample id {repeated!r} appears more than once in the index")
        if not ids:
            raise ValueError("nothing to index: no pool samples")
        retriever = bm25s.BM25()
        retriever.index(
            bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False
        )
        return cls(retriever, pa.array(ids, pa.string()), pa.array(tasks, pa.string()))

    def scores(self, query: str) -> np.ndarray:
        return self.retriever.get_scores(_tokens([query])[0])

    def ranked(self, query: str) -> list[tuple[int, float]]:
        """Every sample the query matches (score > 0), best first, then by position."""
        scores = self.scores(query)
        hits = np.flatnonzero(scores > 0)
        order = hits[np.lexsort((hits, -scores[hits]))]
        return [(int(i), float(scores[i])) for i in order]

    def save(self, uri: str, meta: Mapping[str, object]) -> None:
        """Index files, then the rows, then `index.json` with `meta` (written last)."""
        fs, path = filesystem(uri)
        with tempfile.TemporaryDirectory() as local:
            self.retriever.save(local, show_progress=False)
            pq.write_table(pa.table({"id": self.ids, "task": self.tasks}), f"{local}/{_ROWS_FILE}")
            fs.makedirs(path, exist_ok=True)
            for file in sorted(Path(local).iterdir()):
                fs.put_file(str(file), join(path, file.name))
        body = json.dumps({**meta, "rows": len(self)}).encode()
        write_bytes_atomic(fs, join(path, _DONE_FILE), body)

    @classmethod
    def load(cls, uri: str) -> "TextIndex | None":
        """The index saved at `uri`, or None when there is none (or only part of one)."""
        fs, path = filesystem(uri)
        if not fs.exists(join(path, _DONE_FILE)):
            return None
        with tempfile.TemporaryDirectory() as local:
            for file in fs.ls(path, detail=False):
                fs.get_file(file, f"{local}/{file.rstrip('/').rsplit('/', 1)[-1]}")
            retriever = bm25s.BM25.load(local, show_progress=False)
            rows = pq.read_table(f"{local}/{_ROWS_FILE}")
        return cls(
            retriever, rows.column("id").combine_chunks(), rows.column("task").combine_chunks()
        )

    @staticmethod
    def meta(uri: str) -> dict[str, object] | None:
        fs, path = filesystem(uri)
        done = join(path, _DONE_FILE)
        return json.loads(fs.cat_file(done)) if fs.exists(done) else None


@dataclass(frozen=True)
class Selected:
    id: str
    task: str
    query: str  # the skill (or question) that retrieved it; empty for random and full
    rank: int  # its place in that query's ranking, from 0
    score: float


@dataclass(frozen=True)
class Selection:
    samples: list[Selected]
    quotas: dict[str, int]
    shortfall: dict[str, int]  # per query: how many its ranking could not supply


def select_by_queries(
    index: TextIndex,
    quotas: Mapping[str, int],
    *,
    per_task_cap: int | None = None,
) -> Selection:
    """Top-ranked samples per query up to its quota, largest quota first: a sample already
    taken is skipped (each sample once), as is one whose task is at `per_task_cap`. What a
    query's ranking cannot supply is handed, in the same order, to queries that still have
    matches, so the budget is filled while any match is left."""
    taken: set[int] = set()
    per_task: Counter[str] = Counter()
    samples: list[Selected] = []
    order = sorted(quotas, key=lambda q: (-quotas[q], q))
    rankings = {query: index.ranked(query) for query in order if quotas[query] > 0}
    cursor = dict.fromkeys(rankings, 0)
    filled: Counter[str] = Counter()

    def take(query: str, wanted: int) -> int:
        ranking, got = rankings[query], 0
        while got < wanted and cursor[query] < len(ranking):
            position = cursor[query]
            row, score = ranking[position]
            cursor[query] += 1
            if row in taken:
                continue
            task = index.tasks[row].as_py()
            if per_task_cap is not None and per_task[task] >= per_task_cap:
                continue
            taken.add(row)
            per_task[task] += 1
            samples.append(Selected(index.ids[row].as_py(), task, query, position, score))
            got += 1
        return got

    for query in rankings:
        filled[query] = take(query, quotas[query])
    shortfall = {q: quotas[q] - filled[q] for q in rankings if filled[q] < quotas[q]}
    missing = sum(shortfall.values())
    while missing > 0:  # rounds over the queries that still have matches
        progressed = False
        for query in rankings:
            if missing and take(query, 1):
                missing -= 1
                progressed = True
        if not progressed:
            break
    return Selection(samples, dict(quotas), shortfall)


def select_random(index: TextIndex, budget: int, seed: int) -> list[Selected]:
    """`budget` samples drawn uniformly from the whole pool (seeded), in pool order."""
    rows = sorted(random.Random(seed).sample(range(len(index)), min(budget, len(index))))
    return [Selected(index.ids[r].as_py(), index.tasks[r].as_py(), "", 0, 0.0) for r in rows]


def select_all(index: TextIndex) -> list[Selected]:
    return [
        Selected(sample_id, task, "", 0, 0.0)
        for sample_id, task in zip(index.ids.to_pylist(), index.tasks.to_pylist())
    ]
