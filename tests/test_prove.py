"""The proving ground end to end at reduced scale: world → base and judge → flow synth →
one training run per variant → evaluation → report, on the Prefect test server.

Slow (minutes on 2 cores): the whole method runs, with models trained here from scratch.
"""

import json
from pathlib import Path

import pytest

from adamllm_core.proving.experiment import VARIANTS

# The first test builds the world, trains the base model and judge from scratch and runs
# every stage: about 7 minutes on 2 idle cores, more than the suite's default limit.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def proving_run(
    prefect_server: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> dict:
    from flows.prove import prove_flow

    root = tmp_path_factory.mktemp("prove")
    monkeypatch_module.setenv("ADAMLLM_PROVING_CACHE", str(root / "cache"))
    report = prove_flow(seed=0, out=str(root / "out"), scale="ci")
    return {"report": report, "out": root / "out"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_report_files_and_schema(proving_run: dict) -> None:
    out: Path = proving_run["out"]
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 0 and report["scale"] == "ci"
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
        synthesis["pairs"] == 600 and synthesis["kept"] <= synthesis["parsed"] <= synthesis["pairs"]
    )
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert "| single_stage |" in markdown and "vs caption-only" in markdown


def test_second_run_reuses_the_cached_base_and_finished_stages(proving_run: dict) -> None:
    from flows.prove import prove_flow

    report = prove_flow(seed=0, out=str(proving_run["out"]), scale="ci")
    assert report["adamllm"]["accuracy"] == proving_run["report"]["adamllm"]["accuracy"]
    assert report["seconds"]["base and judge (cached per machine)"] < 30
