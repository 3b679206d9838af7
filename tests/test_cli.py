"""The `adamllm` command line, as a user types it."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamllm_cli.main import app
from adamllm_core.dataset import DatasetWriter, ParentRef
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.schemas import PAIRS, QUARANTINE

runner = CliRunner()


@pytest.mark.integration
def test_ingest_then_inspect(prefect_server: str, broken_corpus, tmp_path: Path) -> None:
    source, expected = broken_corpus
    out = tmp_path / "pairs"
    result = runner.invoke(app, ["ingest", str(source), "--domain", "test", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"ingested {expected['valid']} pairs" in result.output

    shown = runner.invoke(app, ["inspect", str(out), "--rows", "1"])
    assert shown.exit_code == 0, shown.output
    for text in (
        "pairs v1",
        "quarantine",
        "truncated",
        "duplicate",
        "sample rows [0]",
        "scan_parquet",
    ):
        assert text in shown.output
    assert "<jpeg 64x48" in shown.output  # image bytes summarised, not dumped

    as_json = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).output)
    assert as_json["manifest"]["rows"] == expected["valid"]
    assert as_json["manifest"]["quarantine"]["reasons"] == expected["reasons"]


def test_config_file_errors_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "ingest.yaml"
    config.write_text("domain: food\nimage:\n  max_pixel: 10\n")
    result = runner.invoke(
        app, ["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(config)]
    )
    assert result.exit_code == 2
    assert "image.max_pixel" in result.output


def test_bad_flag_values_are_clear(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["ingest", str(tmp_path), "--domain", "Food!", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "domain" in result.output
    result = runner.invoke(
        app,
        [
            "ingest",
            str(tmp_path),
            "--domain",
            "food",
            "--out",
            str(tmp_path / "o"),
            "--multi-frame",
            "all",
        ],
    )
    assert result.exit_code == 2 and "image.multi_frame" in result.output


def test_source_problems_fail_before_any_flow_runs(
    world_sources: tuple[Path, dict], tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "ingest",
            str(world_sources[0] / "labels"),  # a `label` field, no caption field
            "--domain",
            "food",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "--caption-field" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "absent"), "--domain", "food", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "does not exist" in result.output


def test_inspect_unfinished_and_missing(tmp_path: Path) -> None:
    writer = DatasetWriter(
        str(tmp_path / "half"),
        schema=PAIRS,
        stage="ingest",
        parents=[ParentRef(uri="x", fingerprint="y")],
        config={},
        config_hash="c",
    )
    writer.prepare()
    writer.write_shard(0, PAIRS.to_table([]), QUARANTINE.to_table([]), rows_in=0)
    result = runner.invoke(app, ["inspect", str(tmp_path / "half")])
    assert result.exit_code == 2
    assert "unfinished" in result.output and "1 shards" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a dataset" in result.output


def test_inspect_local_dataset_without_prefect(broken_corpus, tmp_path: Path) -> None:
    source, _ = broken_corpus
    ingest(str(source), str(tmp_path / "p"), IngestConfig(domain="test"))
    result = runner.invoke(app, ["inspect", str(tmp_path / "p"), "--rows", "0"])
    assert result.exit_code == 0 and "fingerprint" in result.output


@pytest.mark.integration
def test_the_demo_prints_one_screen_not_thousands_of_lines(tmp_path: Path) -> None:
    """`adamllm synth --config deployments/demo.yaml` as a user runs it (its synthesizer
    tuning is 1,500 steps; each step once printed a line): at most 150 lines, the training
    progress among them, and the run's data browser linked at the end."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    # as on a fresh machine: its own temporary server, Prefect's and tqdm's defaults
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO"}
    for name in ("PREFECT_API_URL", "TQDM_DISABLE"):
        env.pop(name, None)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "adamllm"), "synth"]
        + ["--config", "deployments/demo.yaml", "--out", str(tmp_path / "runs")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(lines[-40:])
    assert len(lines) <= 150, "\n".join(lines)
    assert any("step 1500/1500 (100%)" in line for line in lines)  # tuning's last step
    assert sum("step " in line and "/1500 " in line for line in lines) <= 25
    browser = tmp_path / "runs" / "demo" / "_browse" / "index.html"
    assert browser.is_file() and any(f"file://{browser}" in line for line in lines)
