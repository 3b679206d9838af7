"""The proving ground end to end at smoke scale (a few steps per stage): world → LLM, base
models and judge → flow synth → one training run per variant and per mutation → evaluation
→ report, on the Prefect test server. It checks the plumbing and that each mutation really
breaks the method, not the gains: the gains are measured at `--scale ci` (about an hour
cold on 2 cores; see the README), too long for this suite.
"""

import json
from pathlib import Path

import pytest
import yaml
from corpus import changed, file_states

from adamllm_core.dataset import Dataset
from adamllm_core.proving.experiment import MUTATIONS, VARIANTS

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def proving_run(
    prefect_server: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> dict:
    from flows.prove import prove_flow

    root = tmp_path_factory.mktemp("prove")
    monkeypatch_module.setenv("ADAMLLM_PROVING_CACHE", str(root / "cache"))
    report = prove_flow(seed=0, out=str(root / "out"), scale="smoke", mutations=True)
    return {"report": report, "out": root / "out"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_report_files_and_schema(proving_run: dict) -> None:
    out: Path = proving_run["out"]
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 0 and report["scale"] == "smoke"
    accuracy = report["adamllm"]["accuracy"]
    assert set(accuracy) == set(VARIANTS)
    assert all(0 <= value <= 100 for value in accuracy.values())
    assert set(report["adamllm"]["per_skill"]) == set(VARIANTS)
    synthesis = report["adamllm"]["synthesis"]
    for key in (
        "pairs",
        "parsed",
        "kept",
        "answer_accuracy_before_filter",
        "answer_accuracy_after_filter",
    ):
        assert key in synthesis
    assert (
        synthesis["pairs"] == 48 and synthesis["kept"] <= synthesis["parsed"] <= synthesis["pairs"]
    )
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert "| single_stage |" in markdown and "vs caption-only" in markdown
    models = report["models"]
    assert models["synth_base"] != models["base"]
    # The synthesizer is tuned once per machine beside the base models, not per run.
    cache = Path(models["base"]).parents[1]
    assert Path(models["synthesizer"]).is_relative_to(cache)
    config = yaml.safe_load((out / "proving.yaml").read_text())
    assert config["synthesize"]["engine"]["model"] == models["synthesizer"]
    assert "tune_synthesizer" not in config


def test_llm_below_its_reading_gate_trains_on_in_chunks(proving_run: dict) -> None:
    # Smoke's gate asks for 100% (a 20-step LLM cannot), so exactly its one chunk is added,
    # and the backbone is built on the chunk's LLM, not the first.
    readings = proving_run["report"]["llm_reading"]
    assert [r["steps"] for r in readings] == [20, 25]
    for reading in readings:
        assert reading["accuracy"] < 100 and set(reading["per_skill"]) <= {
            "colour",
            "shape",
            "count",
            "row",
            "column",
            "size",
            "existence",
            "relation",
        }
        assert sum(reading["asked"].values()) > 0
    cached = json.loads(
        (Path(proving_run["report"]["models"]["base"]).parents[1] / "models.json").read_text()
    )
    assert Path(cached["llm"]).parent.name == "llm-1"
    # Every training run is accounted for, the chunk and the perception phases included.
    runs = proving_run["report"]["base_training"]
    assert list(runs) == [
        "llm",
        "llm-1",
        "synth-base-perception",
        "synth-base",
        "base-perception",
        "base",
        "judge",
        "judge-1",
        "synthesizer",
    ]
    assert [runs[name]["steps"] for name in ("llm", "llm-1", "judge", "judge-1")] == [20, 5, 20, 5]
    assert runs["synthesizer"]["steps"] == 40
    assert all(run["seconds"] > 0 for run in runs.values())
    markdown = (proving_run["out"] / "report.md").read_text()
    assert "The LLM's reading" in markdown and "The judge's labels" in markdown


def test_judge_below_its_gate_trains_on_and_the_filter_uses_the_chunk(proving_run: dict) -> None:
    # Smoke's judge gate asks for 100% of 12 held-out triplets: one chunk is added, and the
    # consistency filter runs the chunk's judge.
    measured = proving_run["report"]["judge_accuracy"]
    assert [m["steps"] for m in measured] == [20, 25]
    for m in measured:
        assert m["accuracy"] < 100 and sum(m["said"].values()) == 12
        assert set(m["per_label"]) <= {"Yes", "No", "Open"}
    cached = json.loads(
        (Path(proving_run["report"]["models"]["base"]).parents[1] / "models.json").read_text()
    )
    assert Path(cached["judge"]).parent.name == "judge-1"
    config = yaml.safe_load((proving_run["out"] / "proving.yaml").read_text())
    assert config["filter"]["engine"]["model"] == cached["judge"]


def test_second_run_reuses_the_cached_base_and_finished_stages(proving_run: dict) -> None:
    from flows.prove import prove_flow

    report = prove_flow(seed=0, out=str(proving_run["out"]), scale="smoke", mutations=True)
    assert report["adamllm"] == proving_run["report"]["adamllm"]
    assert report["seconds"]["base and judge (cached per machine)"] < 30


def test_mutations_break_the_method_as_named(proving_run: dict) -> None:
    """The inverted filter keeps exactly the triplets the real filter rejected as No or Open;
    the masked-synthetic run trains exactly the caption-only run's tokens on the
    single-stage mixture (the synthetic turns are context)."""
    out: Path = proving_run["out"] / "proving"
    report = proving_run["report"]
    mutations = report["adamllm"]["mutations"]
    assert set(mutations["accuracy"]) == set(MUTATIONS) == set(mutations["per_skill"])
    assert set(report["adamllm"]["accuracy"]) == set(VARIANTS)
    kept = {r["triplet_id"] for r in Dataset(str(out / "filtered")).iter_rows(["triplet_id"])}
    rejected = {
        r["triplet_id"]: r["label"]
        for r in Dataset(str(out / "rejected")).iter_rows(["triplet_id", "label"])
    }
    inverted = {
        r["triplet_id"]
        for r in Dataset(str(out / "filtered-inverted-filter")).iter_rows(["triplet_id"])
    }
    assert inverted == {t for t, label in rejected.items() if label in ("No", "Open")}
    assert not inverted & kept
    training = report["training"]
    assert training["masked_synthetic"]["examples"] == training["single_stage"]["examples"]
    tokens = {
        name: training[name]["trained_tokens"]
        for name in ("masked_synthetic", "caption_only", "single_stage")
    }
    assert tokens["masked_synthetic"] == tokens["caption_only"]
    # single-stage trains more only when the filter kept a synthetic task (at smoke scale
    # its judge, 20 steps in, may keep none)
    assert (tokens["single_stage"] > tokens["caption_only"]) == bool(kept)
    checks = {c["check"]: c["passed"] for c in report["checks"]}
    assert len(checks) == 5 + len(MUTATIONS)
    markdown = (proving_run["out"] / "report.md").read_text()
    assert "## Mutations" in markdown and "## Required results" in markdown


def test_a_second_run_reuses_the_tuned_synthesizer(proving_run: dict) -> None:
    # Tuned on general seed data, the synthesizer serves any run on the same world: asked
    # again (a new run, another output folder), it is returned without training.
    from adamllm_core.proving.experiment import ProveConfig, ensure_synthesizer

    report = proving_run["report"]
    models = json.loads((Path(report["models"]["base"]).parents[1] / "models.json").read_text())
    final = Path(report["models"]["synthesizer"])
    stamp = file_states([final / "model.safetensors"])
    again = ensure_synthesizer(
        ProveConfig.for_scale("smoke", 0), str(proving_run["out"] / "world"), models
    )
    assert Path(again["final"]) == final
    assert changed(stamp) == []
    # Other tuning settings are another synthesizer, in a folder of their own.
    other = ProveConfig.for_scale("smoke", 0).model_copy(
        update={"synthesizer": {**ProveConfig.for_scale("smoke", 0).synthesizer, "max_steps": 2}}
    )
    assert ensure_synthesizer(other, str(proving_run["out"] / "world"), models)["steps"] == 2


def test_error_driven_selection_adds_its_section(proving_run: dict) -> None:
    """prove-select at smoke scale: a weak student and a teacher built beside the base, the
    pool, replay and benchmarks written, flow select run; its section joins report.json."""
    from flows.prove import prove_select_flow

    out: Path = proving_run["out"]
    section = prove_select_flow(seed=0, out=str(out), scale="smoke")
    report = json.loads((out / "report.json").read_text())
    assert report["error_driven"] == json.loads(json.dumps(section))
    assert report["adamllm"] == json.loads(json.dumps(proving_run["report"]["adamllm"]))
    assert section["budget"] == 20 and section["weak_skill"] == "count"
    compared = {"student", "error_driven", "random", "instruction_similarity"}
    for key in ("accuracy", "weak_skill_accuracy"):
        assert set(section[key]) == compared
        assert all(v is None or 0 <= v <= 100 for v in section[key].values())
    assert section["accuracy"]["random"] is not None  # random selects whatever the student wrote
    assert section["accuracy"]["instruction_similarity"] is not None
    assert set(section["ablations"]) == {"no_mistake_identification", "no_skill_analysis"}
