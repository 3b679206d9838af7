"""The proving ground end to end at smoke scale (a few steps per stage): world → LLM, base
models and judge → flow synth → one training run per variant → evaluation → report, on the
Prefect test server. It checks the plumbing, not the gains: the gains are measured at
`--scale ci` and above (issue 8 is open: they do not hold yet).
"""

import json
from pathlib import Path

import pytest

from adamllm_core.proving.experiment import VARIANTS

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
    report = prove_flow(seed=0, out=str(root / "out"), scale="smoke")
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
    assert Path(models["synthesizer"]).is_relative_to(out)


def test_second_run_reuses_the_cached_base_and_finished_stages(proving_run: dict) -> None:
    from flows.prove import prove_flow

    report = prove_flow(seed=0, out=str(proving_run["out"]), scale="smoke")
    assert report["adamllm"]["accuracy"] == proving_run["report"]["adamllm"]["accuracy"]
    assert report["seconds"]["base and judge (cached per machine)"] < 30
