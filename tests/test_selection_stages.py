"""Error-driven selection's stages on real data files and the tiny local models through the
transformers engine (no Prefect): the pool import, the student's errors, the teacher's
answer-switch traces and skills, pool labels cached per sample and teacher, and the
selected training data. The tiny models are random, so what they write is noise: these
tests check what the stages make of any output (rows, reasons, traces, caching), and
`test_selection_core.py` checks the method on known inputs."""

import json
import math
from pathlib import Path

import pytest

from adamllm_core.dataset import Dataset, ParentRef
from adamllm_core.engines import EngineConfig
from adamllm_core.proving.bundles import write_benchmark, write_pool
from adamllm_core.proving.world import WorldConfig
from adamllm_core.schemas import STUDENT_ANSWERS, StudentAnswer
from adamllm_core.selection.pool_source import PoolConfig, import_pool
from adamllm_core.selection.retrieval import Selected
from adamllm_core.selection.skills import normalise_skill, split_skills
from adamllm_core.selection.stages import (
    ErrorsConfig,
    LabelConfig,
    MistakeConfig,
    collect_errors,
    identify_mistakes,
    label_pool,
    write_selection,
)
from adamllm_core.selection.switch import SwitchConfig, find_switch
from adamllm_core.selection.teacher import TeacherPrompts
from tests.corpus import WORLD_SKILL_NAMES, train_word_teacher, write_dataset


@pytest.fixture(scope="module")
def word_teacher(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_word_teacher(tiny_models["lm"], tmp_path_factory.mktemp("teacher"), steps=150)


@pytest.fixture(scope="module")
def pool_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-sample world pool, plus a record without an answer and one whose image is gone;
    `first.json` holds the first 20 samples (the pool before it grew)."""
    root = tmp_path_factory.mktemp("pool")
    write_pool(root, seed=3, world=WorldConfig(), count=30)
    records = json.loads((root / "annotation.json").read_text())
    broken = [
        {**records[0], "id": "no-answer", "conversations": records[0]["conversations"][:1]},
        {**records[1], "id": "gone", "image": "images/gone.png"},
    ]
    (root / "annotation.json").write_text(json.dumps(records + broken))
    (root / "first.json").write_text(json.dumps(records[:20]))
    return root


def _import(pool_files: Path, name: str, out: Path) -> str:
    uri = str(out)
    import_pool(str(pool_files / name), uri, PoolConfig(rows_per_shard=8))
    return uri


def test_the_pool_is_imported_with_bad_records_quarantined(pool_files: Path, tmp_path) -> None:
    manifest = Dataset(_import(pool_files, "annotation.json", tmp_path / "pool")).manifest
    assert manifest.rows == 30
    stats = manifest.stats
    assert stats.quarantined == {"missing_answer": 1, "missing_image": 1}
    rows = list(Dataset(str(tmp_path / "pool")).iter_rows(["task", "instruction", "answer"]))
    assert all(not row["instruction"].startswith("<image>") for row in rows)
    assert all(row["answer"].endswith(".") for row in rows)  # the short reasoning, whole
    # ids are stable: the first 20 samples get the same ids from the smaller file
    first = _import(pool_files, "first.json", tmp_path / "first")
    ids = {r["id"] for r in Dataset(first).iter_rows(["id"])}
    assert ids <= {r["id"] for r in Dataset(str(tmp_path / "pool")).iter_rows(["id"])}


def test_the_students_outputs_are_rows_or_reasons_never_lost(tiny_models, tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    asked = sum(write_benchmark(bench, 5, WorldConfig(), 3).values())
    config = ErrorsConfig(
        benchmark="proving_ground",
        data=str(bench),
        engine=EngineConfig(model="tiny:vlm", batch_size=4),
        max_new_tokens=24,
        rows_per_shard=5,
    )
    manifest = collect_errors(config, str(tmp_path / "errors"), cache_uri=str(tmp_path / "cache"))
    stats = manifest.stats
    assert manifest.rows + stats.quarantined_total == asked
    assert set(stats.quarantined) <= {"no_answer", "no_steps", "empty_output"}
    quarantined = list(Dataset(str(tmp_path / "errors")).quarantine().iter_rows())
    assert all(row["record"] is not None for row in quarantined)  # the raw output is kept
    # a re-run answers from the finished dataset; nothing is asked again
    again = collect_errors(config, str(tmp_path / "errors"), cache_uri=str(tmp_path / "cache"))
    assert again.fingerprint == manifest.fingerprint


def _answers(out: str) -> str:
    def answer(qid: str, steps: list[str], answer: str, correct: bool, choices=None):
        return StudentAnswer(
            id=f"a-{qid}",
            benchmark="proving_ground",
            qid=qid,
            question="What colour is the circle?",
            choices=choices,
            gold="red",
            steps=steps,
            answer=answer,
            correct=correct,
            score=float(correct),
            student="student@test",
            raw_output="",
            source="hand-made",
            metadata={"skill": "colour"},
        )

    colours = ["red", "green", "blue"]
    rows = [
        answer("q1", ["The circle is at the top left.", "It is blue."], "blue", False, colours),
        answer(
            "q2",
            ["There is one circle.", "Circles are green.", "So green."],
            "green",
            False,
            colours,
        ),
        answer("q3", ["It looks blue."], "blue", False),  # open: gold and answer are weighed
        answer("q4", ["The circle is red."], "red", True, colours),
        answer("q5", ["The circle is red."], "red", False),  # open, answer == gold: one option
    ]
    return write_dataset(
        out,
        STUDENT_ANSWERS,
        [(rows[:3], []), (rows[3:], [])],
        parents=[ParentRef(uri="hand-made", fingerprint="0", kind="source")],
    )


def test_each_wrong_answer_gets_a_trace_per_prefix_and_its_switch(word_teacher, tmp_path) -> None:
    errors = _answers(str(tmp_path / "errors"))
    config = MistakeConfig(
        engine=EngineConfig(model=word_teacher, batch_size=4),
        switch=SwitchConfig(margin=0.0, persistence=0),
    )
    manifest = identify_mistakes(errors, str(tmp_path / "mistakes"), config)
    stats = manifest.stats
    assert stats.counters["correct_skipped"] == 1
    assert stats.quarantined.get("one_option") == 1
    assert manifest.rows == 3  # every wrong answer with two options to weigh
    for row in Dataset(str(tmp_path / "mistakes")).iter_rows():
        trace = json.loads(row["trace"])
        assert len(trace["probabilities"]) == len(row["steps"]) + 1
        assert all(math.isclose(sum(p), 1.0, rel_tol=1e-6) for p in trace["probabilities"])
        expected = find_switch(
            [dict(zip(trace["options"], p)) for p in trace["probabilities"]],
            row["gold"],
            config.switch,
        )
        assert (row["status"], row["step"], row["wrong_option"]) == (
            expected.status,
            expected.step,
            expected.wrong_option,
        )
        assert row["skill"] and row["skill"] == normalise_skill(row["skill_raw"])
        assert row["teacher"].startswith("local:")  # the model content identity
    (open_question,) = [
        r for r in Dataset(str(tmp_path / "mistakes")).iter_rows() if r["qid"] == "q3"
    ]
    assert json.loads(open_question["trace"])["options"] == ["red", "blue"]

    ablation = identify_mistakes(
        errors, str(tmp_path / "whole"), config.model_copy(update={"identify": False})
    )
    rows = list(Dataset(str(tmp_path / "whole")).iter_rows(["status", "trace", "step"]))
    assert ablation.rows == len(rows)
    assert all(r["status"] == "whole_reasoning" and r["step"] is None for r in rows)
    assert all(json.loads(r["trace"])["probabilities"] == [] for r in rows)


def test_pool_labels_are_made_once_per_sample_and_teacher(
    pool_files: Path, word_teacher, tmp_path: Path
) -> None:
    before = _import(pool_files, "first.json", tmp_path / "pool-20")
    grown = _import(pool_files, "annotation.json", tmp_path / "pool-30")
    config = LabelConfig(engine=EngineConfig(model=word_teacher, batch_size=8))
    labels = str(tmp_path / "labels")

    def labelled(part: str) -> int:
        manifest = Dataset(part).manifest
        return manifest.rows + manifest.stats.quarantined_total

    first = label_pool(before, labels, config).parts
    assert len(first) == 1 and labelled(first[0]) == 20
    rows = list(Dataset(first[0]).iter_rows(["skills", "raw"]))
    assert len(rows) >= 15 and all(r["skills"] == split_skills(r["raw"]) for r in rows)
    named = [skill for r in rows for skill in r["skills"]]
    assert sum(skill in WORLD_SKILL_NAMES.values() for skill in named) >= len(named) / 2
    grown_labels = label_pool(grown, labels, config)
    parts = grown_labels.parts
    assert parts[0] == first[0] and len(parts) == 2
    assert all(part.rsplit("/", 1)[0] == grown_labels.root for part in parts)
    assert labelled(parts[1]) == 10  # only the new samples
    assert Dataset(parts[1]).manifest.stats.counters["already_labelled"] == 20
    assert label_pool(grown, labels, config) == grown_labels  # nothing left to label
    # another teacher (here: another prompt setting) labels the whole pool again
    other = config.model_copy(update={"prompts": TeacherPrompts(label_max_new_tokens=40)})
    relabelled = label_pool(grown, labels, other).parts
    assert len(relabelled) == 1 and labelled(relabelled[0]) == 30
    assert relabelled[0].rsplit("/", 2)[-2] != parts[0].rsplit("/", 2)[-2]


def test_the_selection_becomes_training_conversations(pool_files: Path, tmp_path: Path) -> None:
    pool = _import(pool_files, "annotation.json", tmp_path / "pool")
    rows = list(Dataset(pool).iter_rows(["id", "task", "instruction", "answer"]))
    chosen = [
        Selected(rows[i]["id"], rows[i]["task"], "counting", rank, 1.5)
        for rank, i in enumerate((7, 2, 19))
    ]
    manifest = write_selection(pool, chosen, "error_driven", str(tmp_path / "selected"))
    assert manifest.rows == 3
    selected = list(Dataset(str(tmp_path / "selected")).iter_rows())
    assert [r["sample_id"] for r in selected] == [rows[i]["id"] for i in (2, 7, 19)]  # pool order
    first = selected[0]
    assert first["messages"][0] == {"role": "user", "content": "<image>" + rows[2]["instruction"]}
    assert first["messages"][1] == {"role": "assistant", "content": rows[2]["answer"]}
    assert first["image"] and first["method"] == "error_driven" and first["query"] == "counting"

    unknown = [*chosen, Selected("not-in-pool", "t", "", 0, 0.0)]
    with pytest.raises(ValueError, match="1 selected samples are not in the pool"):
        write_selection(pool, unknown, "error_driven", str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "manifest.json").exists()
