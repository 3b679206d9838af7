"""Benchmark scoring end to end without a model: gold answers, known perturbations, and the
per-metric wiring (score_item) with hand-computed values."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adamllm_core.evaluation.adapters import read_items
from adamllm_core.evaluation.benchmarks import BENCHMARKS, benchmark, render_prompt
from adamllm_core.evaluation.classes import FOOD101
from adamllm_core.evaluation.items import EvalItem
from adamllm_core.evaluation.metrics import normalize_answer
from adamllm_core.evaluation.run import score_predictions
from adamllm_core.evaluation.scoring import score_item, summarise


def tasks_of(summary: dict) -> dict[str, dict]:
    return {task["task"]: task for task in summary["tasks"]}


def test_gold_answers_score_100_on_vqa_rad(shared_data: Path) -> None:
    data = str(shared_data / "vqa_rad_train")
    gold = {item.qid: item.answer for item in read_items("vqa_rad", data)}
    _, summary = score_predictions("vqa_rad", data, gold)
    tasks = tasks_of(summary)
    assert tasks["VQA-RAD open"]["n"] == 449 and tasks["VQA-RAD open"]["score"] == 100.0
    closed = tasks["VQA-RAD closed"]
    assert closed["n"] == 703 and closed["score_corrected"] == 100.0
    # The paper's rule: 663 yes/no answers hit; of the 40 others only those whose normalised
    # text contains "no" by substring hit ("Normal" x2, "non-contrast", "Not sure"): 667/703.
    assert closed["score"] == round(100 * 667 / 703, 2) == 94.88
    assert summary["missing"] == 0


def test_known_perturbations_on_vqa_rad(shared_data: Path) -> None:
    data = str(shared_data / "vqa_rad_train")
    items = list(read_items("vqa_rad", data))
    yes_gold = sum(1 for i in items if i.answer_type == "CLOSED" and i.answer.lower() == "yes")
    assert yes_gold == 324
    _, always_yes = score_predictions("vqa_rad", data, {i.qid: "Yes." for i in items})
    closed = tasks_of(always_yes)["VQA-RAD closed"]
    assert closed["score"] == closed["score_corrected"] == round(100 * 324 / 703, 2)
    # "No" hits the 339 "no" golds under both rules: the paper's substring rule needs the
    # gold inside the prediction, and none of the four other golds containing "no"
    # ("Normal" x2, "non-contrast", "Not sure") is inside "no"
    containing_no = [
        i.answer
        for i in items
        if i.answer_type == "CLOSED"
        and normalize_answer(i.answer) not in ("yes", "no")
        and "no" in normalize_answer(i.answer)
    ]
    assert len(containing_no) == 4, containing_no
    _, always_no = score_predictions("vqa_rad", data, {i.qid: "No" for i in items})
    closed = tasks_of(always_no)["VQA-RAD closed"]
    assert closed["score_corrected"] == round(100 * 339 / 703, 2)
    assert closed["score"] == round(100 * 339 / 703, 2)
    # no predictions at all: every question counted, all missing, all 0
    _, empty = score_predictions("vqa_rad", data, {})
    assert empty["missing"] == 1152 and all(t["score"] == 0.0 for t in empty["tasks"])


def test_food101_gold_perturbation_and_fallback(shared_data: Path) -> None:
    data = str(shared_data / "food101_mini")
    items = list(read_items("food101", data))
    _, gold = score_predictions("food101", data, {i.qid: i.answer for i in items})
    assert gold["tasks"][0]["score"] == 100.0 and gold["tasks"][0]["fallbacks"] == 0
    _, paella = score_predictions("food101", data, {i.qid: "This is paella." for i in items})
    assert paella["tasks"][0]["score"] == round(100 * 30 / 90, 2)
    rows, unparsed = score_predictions("food101", data, {i.qid: "I cannot tell" for i in items})
    assert unparsed["tasks"][0]["fallbacks"] == 90 and all(r.fallback for r in rows)
    again, _ = score_predictions("food101", data, {i.qid: "I cannot tell" for i in items})
    assert [r.parsed for r in rows] == [r.parsed for r in again]  # seeded per question
    reseeded, _ = score_predictions(
        "food101", data, {i.qid: "I cannot tell" for i in items}, seed=1
    )
    assert [r.parsed for r in rows] != [r.parsed for r in reseeded]


def test_prompts_are_table_14() -> None:
    assert (
        sum(spec.paper for spec in BENCHMARKS.values()) == 12
    )  # the paper's (the proving ground's is not)
    food = render_prompt(benchmark("food101"), "", list(FOOD101[:2]))
    assert food == (
        "What type of food is shown in this image? Choose one type from the following options: "
        "apple pie, baby back ribs"
    )
    pmc = render_prompt(benchmark("pmc_vqa"), "What is shown?", ["CT", "MRI"])
    assert pmc == "Question: What is shown? The choices are: A:CT B:MRI"
    assert render_prompt(benchmark("nwpu_captions"), "ignored", None) == (
        "Please provide an one-sentence caption for the provided remote sensing image in details."
    )
    with pytest.raises(ValueError, match="unknown benchmark 'slakee'"):
        benchmark("slakee")


def item(answer, **fields) -> EvalItem:
    return EvalItem(qid="q1", image=b"", answer=answer, **fields)


def test_score_item_per_metric() -> None:
    pmc = benchmark("pmc_vqa")
    options = ["CT", "MRI", "PET", "X-ray"]
    assert score_item(pmc, item("B", choices=options), "The answer is (B) MRI").score == 1.0
    assert (
        score_item(pmc, item("MRI", choices=options), "B").score == 1.0
    )  # text answers map to letters
    assert score_item(pmc, item("B", choices=options), "(A) or (C)? I pick (C)").parsed == "C"

    seg = benchmark("foodseg103")
    scored = score_item(
        seg,
        item(["egg tart", "rice"], choices=["egg", "egg tart", "rice", "eggplant"]),
        "[egg tart, eggplant]",
    )
    # predicted {egg tart, eggplant}, gold {egg tart, rice}: P = R = 1/2, F1 = 1/2
    assert scored.score == pytest.approx(0.5) and scored.parsed == "egg tart; eggplant"

    nutrition = benchmark("nutrition5k")
    scored = score_item(
        nutrition,
        item(["olive oil", "rice", "chicken"], choices=["oil", "olive oil", "rice", "chicken"]),
        "rice with olive oil",
    )
    assert scored.score == pytest.approx(2 / 3)  # recall: olive oil and rice of three

    recipe = benchmark("recipe1m")
    assert score_item(recipe, item("boil the pasta"), "boil the pasta").score == pytest.approx(1.0)
    assert score_item(recipe, item("boil the pasta"), "").score == 0.0

    flood = benchmark("floodnet")
    assert (
        score_item(flood, item("3"), "There are three buildings.").score == 1.0
    )  # number words normalised
    assert (
        score_item(flood, item("3"), "I see 4 buildings, 3 flooded").score == 0.0
    )  # first number written
    assert score_item(flood, item("flooded"), "The road is flooded.").score == 1.0
    assert (
        score_item(flood, item("flooded"), "The road is non-flooded").score == 0.0
    )  # not inside the negation
    assert score_item(flood, item("non flooded"), "The road is non-flooded").score == 1.0
    assert score_item(flood, item("flooded"), "It is not flooded").score == 0.0
    assert score_item(flood, item("yes"), "Yes, the road is flooded.").score == 1.0
    assert (
        score_item(flood, item("no"), "It is normal").score == 0.0
    )  # corrected rule: no substring hits

    clrs = benchmark("clrs")
    classes = ["airport", "park", "parking", "port", "railway", "railway station", "storage tank"]
    for answer, output in [
        ("airport", "The answer is airport."),
        ("parking", "parking"),
        ("railway station", "A railway station."),
        ("storage tank", "storagetanks"),
        ("park", "Not a port but a park"),
    ]:
        scored = score_item(clrs, item(answer, choices=classes), output)
        assert (scored.parsed, scored.score, scored.fallback) == (answer, 1.0, False), output
    unparsed = score_item(
        clrs, item("port", choices=classes), "There are 2 ships"
    )  # no option numbers here
    assert unparsed.fallback and unparsed.parsed in classes

    vqa = benchmark("slake")
    closed = score_item(vqa, item("MRI", answer_type="CLOSED"), "MRI")
    assert (closed.score, closed.score_corrected) == (0.0, 1.0)
    open_ = score_item(vqa, item("left lung", answer_type="OPEN"), "The left lung.")
    assert open_.group == "open" and open_.score == 1.0
    rows = summarise(vqa, [open_, closed])
    assert [r["task"] for r in rows] == ["SLAKE open", "SLAKE closed"]
    assert rows[1]["score"] == 0.0 and rows[1]["score_corrected"] == 100.0


def score_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adamllm_cli.main", "score", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_score_command(shared_data: Path, tmp_path: Path) -> None:
    data = str(shared_data / "food101_mini")
    items = list(read_items("food101", data))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(
        "".join(json.dumps({"qid": i.qid, "prediction": "waffles"}) + "\n" for i in items[:60])
    )
    out = tmp_path / "scored.jsonl"
    result = score_cli(
        "--benchmark",
        "food101",
        "--data",
        data,
        "--predictions",
        str(predictions),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scored) == 90 and sum(r["score"] for r in scored) == 0  # first 60 are not waffles
    assert "30 without a prediction" in result.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": "0", "prediction": "paella"}\n{"qid": "1", "prediction": 3}\n')
    result = score_cli("--benchmark", "food101", "--data", data, "--predictions", str(bad))
    assert result.returncode == 2 and "bad.jsonl, line 2" in result.stderr
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"qid": "no-such-question", "prediction": "paella"}\n')
    result = score_cli("--benchmark", "food101", "--data", data, "--predictions", str(unknown))
    assert result.returncode == 2 and "no-such-question" in result.stderr
    # --limit scores the first N; predictions for later questions are not "unknown"
    full = tmp_path / "full.jsonl"
    full.write_text(
        "".join(json.dumps({"qid": i.qid, "prediction": i.answer}) + "\n" for i in items)
    )
    result = score_cli(
        "--benchmark", "food101", "--data", data, "--predictions", str(full), "--limit", "10"
    )
    assert result.returncode == 0, result.stderr
    assert '"questions": 10' in result.stdout and '"score": 100.0' in result.stdout


def test_missing_predictions_score_zero_without_fallback(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "pmc"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "images" / "a.png")
    rows = [
        {
            "image": "images/a.png",
            "qid": str(n),
            "question": "Which?",
            "choices": ["a", "b", "c", "d", "e"],
            "answer": "e",
        }
        for n in range(50)
    ]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "images" / "a.png").unlink()  # scoring text reads no image
    scored, summary = score_predictions("pmc_vqa", str(folder), {"0": "(E)"})
    assert (
        summary["missing"] == 49 and summary["tasks"][0]["score"] == 2.0
    )  # 1 of 50; no lucky guesses
    assert not any(r.fallback for r in scored) and scored[0].prompt.endswith("D:d E:e")


def test_report_averages_only_comparable_runs() -> None:
    from adamllm_core.evaluation.report import comparison, markdown

    def run(n_open: int, score: float) -> list[dict]:
        return [
            {
                "benchmark": "vqa_rad",
                "questions": n_open + 10,
                "unreadable": 1,
                "model": "m",
                "tasks": [
                    {
                        "task": "VQA-RAD open",
                        "domain": "biomed",
                        "metric": "recall",
                        "score": score,
                        "n": n_open,
                        "fallbacks": 0,
                    },
                    {
                        "task": "VQA-RAD closed",
                        "domain": "biomed",
                        "metric": "accuracy",
                        "score": 50.0,
                        "n": 10,
                        "fallbacks": 0,
                        "score_corrected": 60.0,
                    },
                ],
            }
        ]

    _, averages = comparison({"a": run(20, 30.0), "b": run(20, 40.0)})
    assert averages["biomed"] == {"a": 40.0, "b": 45.0}  # corrected rows stay out of the average
    _, averages = comparison({"a": run(20, 30.0), "b": run(8, 40.0)})
    assert averages["biomed"] == {"a": None, "b": None}  # different question sets: no average
    text = markdown({"a": run(20, 30.0), "b": run(8, 40.0)}, {"a": "m", "b": "m"})
    assert "| VQA-RAD open | biomed | recall | 20 / 8 | 30.0 | 40.0 |" in text
    assert "| a | `m` | 30 | 1 | 0 |" in text
