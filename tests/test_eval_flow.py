"""`adamllm eval` / flow `evaluate` with the tiny model through the transformers engine on
the shared VQA-RAD and Food-101 bundles (Prefect test server), resume, bad images, S3."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from adamllm_core.dataset import read_manifest
from adamllm_core.engines import EngineConfig, make_engine
from adamllm_core.engines.base import Engine
from adamllm_core.engines.hf import model_identity
from adamllm_core.evaluation.run import EvalConfig, evaluate

pytestmark = [pytest.mark.integration]


# `python -m adamllm_cli.main` with the vllm package hidden (as on a CPU machine), wherever
# the tests run
WITHOUT_VLLM = (
    "import runpy, sys; sys.modules['vllm'] = None; "
    "runpy.run_module('adamllm_cli.main', run_name='__main__')"
)


def eval_cli(
    prefect_server: str, tmp_path: Path, *args: str, without_vllm: bool = False
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    entry = ["-c", WITHOUT_VLLM] if without_vllm else ["-m", "adamllm_cli.main"]
    return subprocess.run(
        [sys.executable, *entry, "eval", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.mark.slow
def test_eval_end_to_end_with_report(
    prefect_server: str, tiny_models, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    common = [
        "--benchmark",
        "vqa_rad",
        "--data",
        str(shared_data / "vqa_rad_train"),
        "--benchmark",
        "food101",
        "--data",
        str(shared_data / "food101_mini"),
        "--limit",
        "40",
        "--max-new-tokens",
        "12",
        "--out",
        str(out),
    ]
    first = eval_cli(prefect_server, tmp_path, *common, "--model", "tiny:vlm", "--name", "base")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for name in ("vqa_rad", "food101"):
        predictions = pl.scan_parquet(
            str(out / "base" / name / "predictions" / "*.parquet")
        ).collect()
        assert predictions.height == 40
        assert set(predictions.columns) >= {
            "qid",
            "prompt",
            "raw_output",
            "parsed",
            "score",
            "fallback",
        }
        summary = json.loads((out / "base" / name / "summary.json").read_text())
        assert summary["questions"] == 40 and summary["model"] == "tiny:vlm"
        assert summary["model_identity"] == model_identity(tiny_models["vlm"], None)
    food = pl.read_parquet(str(out / "base" / "food101" / "predictions" / "*.parquet"))
    assert food["prompt"][0].startswith(
        "What type of food is shown in this image? Choose one type from the "
        "following options: apple pie, baby back ribs"
    )
    vqa = json.loads((out / "base" / "vqa_rad" / "summary.json").read_text())
    assert [t["task"] for t in vqa["tasks"]] == ["VQA-RAD open", "VQA-RAD closed"]
    assert sum(t["n"] for t in vqa["tasks"]) == 40

    # re-run: the finished predictions are served, nothing is regenerated
    stamps = {
        n: read_manifest(str(out / "base" / n / "predictions")).created_at
        for n in ("vqa_rad", "food101")
    }
    again = eval_cli(prefect_server, tmp_path, *common, "--model", "tiny:vlm", "--name", "base")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {
        n: read_manifest(str(out / "base" / n / "predictions")).created_at for n in stamps
    } == stamps

    # a second "model" (same weights, another run name) compared with the first
    second = eval_cli(
        prefect_server,
        tmp_path,
        *common,
        "--model",
        "tiny:vlm",
        "--name",
        "other",
        "--compare-with",
        str(out / "base"),
    )
    assert second.returncode == 0, second.stderr[-3000:]
    report = (out / "other" / "report.md").read_text()
    assert "| task | domain | metric | n | base | other |" in report
    assert "| **biomed average** |" in report and "VQA-RAD closed (corrected)" in report
    assert (out / "other" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    standalone = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamllm_cli.main",
            "report",
            str(out / "base"),
            str(out / "other"),
            "--out",
            str(tmp_path / "report"),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        timeout=300,
    )
    assert standalone.returncode == 0, standalone.stderr
    assert (tmp_path / "report" / "report.md").read_text() == report
    artifacts = asyncio.run(artifacts_with_key("eval-report"))
    assert any(
        str(tmp_path / "report") in (a.description or "") and "| base | other |" in a.data
        for a in artifacts
    )
    # this test's own (other tests on the shared server publish the same key)
    summaries = [
        a
        for a in asyncio.run(artifacts_with_key("eval-vqa-rad"))
        if str(tmp_path) in (a.description or "")
    ]
    assert summaries and all(a.type == "table" for a in summaries)


async def artifacts_with_key(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=50
        )


def test_eval_cli_errors_are_clear(prefect_server: str, tmp_path: Path) -> None:
    result = eval_cli(
        prefect_server,
        tmp_path,
        "--benchmark",
        "vqa-rad",
        "--model",
        "tiny:vlm",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 2 and "one --data per --benchmark" in result.stderr
    result = eval_cli(
        prefect_server,
        tmp_path,
        "--benchmark",
        "slakee",
        "--data",
        str(tmp_path),
        "--model",
        "tiny:vlm",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 2 and "unknown benchmark 'slakee'" in result.stderr
    # on a machine without vllm (a CPU machine): said before any work starts
    result = eval_cli(
        prefect_server,
        tmp_path,
        "--benchmark",
        "food101",
        "--data",
        str(tmp_path),
        "--model",
        "tiny:vlm",
        "--engine",
        "vllm",
        "--out",
        str(tmp_path),
        without_vllm=True,
    )
    assert (
        result.returncode == 2
        and "needs the vllm package" in result.stderr
        and "'.[gpu]'" in result.stderr
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_file_without_questions_is_refused_before_any_output(tiny_models, tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text("")
    config = EvalConfig(
        benchmark="vqa-rad",
        data=str(tmp_path / "test.jsonl"),
        engine=EngineConfig(model="tiny:vlm"),
    )
    with pytest.raises(ValueError, match="no VQA-RAD questions in it"):
        evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # no work area, plan or lease left behind


class StopsAfter(Engine):
    """The real tiny engine, interrupted after `calls` engine calls (a crash mid-run)."""

    kind = "transformers"

    def __init__(self, engine: Engine, calls: int | None):
        self.engine, self.calls_left, self.requests = engine, calls, 0

    @property
    def model_identity(self) -> str:
        return self.engine.model_identity

    def render(self, request):
        return self.engine.render(request)

    def run(self, requests):
        if self.calls_left is not None:
            if self.calls_left == 0:
                raise RuntimeError("interrupted")
            self.calls_left -= 1
        self.requests += len(requests)
        return self.engine.run(requests)


def test_interrupted_eval_resumes_and_bad_images_are_quarantined(
    tiny_models, world_sources: tuple[Path, dict], tmp_path: Path
) -> None:
    data = tmp_path / "bench"
    shutil.copytree(world_sources[0] / "benchmark", data)  # generated questions
    lines = (data / "data.jsonl").read_text().splitlines()[:11]
    colours = json.loads(lines[0])["choices"]

    def question(image: str, qid: str) -> str:
        return json.dumps(
            {
                "qid": qid,
                "image": image,
                "question": "What colour is the object?",
                "answer": colours[0],
                "skill": "colour",
                "choices": colours,
            }
        )

    # a 16-bit TIFF (UC Merced ships TIFFs): normalised and evaluated, not rejected
    import numpy as np
    from PIL import Image

    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(
        data / "images" / "deep.tif"
    )
    lines.append(question("images/deep.tif", "deep-tiff"))
    (data / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lines.append(question("images/broken.jpg", "broken-jpeg"))
    (data / "data.jsonl").write_text("\n".join(lines) + "\n")
    config = EvalConfig(
        benchmark="proving_ground",
        data=str(data),
        engine=EngineConfig(model="tiny:vlm", batch_size=4),
        max_new_tokens=8,
        rows_per_shard=4,
    )
    real = make_engine(config.engine)

    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate(config, str(tmp_path / "run"), engine=StopsAfter(real, calls=2))  # two shards of 4
    assert not (tmp_path / "run" / "proving_ground" / "predictions" / "manifest.json").exists()

    resumed = StopsAfter(real, calls=None)
    summary = evaluate(config, str(tmp_path / "run"), engine=resumed)
    assert resumed.requests == 12 - 8  # the two finished shards were not recomputed
    assert summary["questions"] == 13 and summary["unreadable"] == 1
    quarantine = pl.read_parquet(
        str(tmp_path / "run" / "proving_ground" / "predictions" / "_quarantine" / "*" / "*.parquet")
    )
    assert quarantine["reason"].to_list() == ["undecodable"] and quarantine["source_ref"][
        0
    ].endswith(":13")
    predictions = pl.read_parquet(
        str(tmp_path / "run" / "proving_ground" / "predictions" / "*.parquet")
    )
    assert predictions.height == 12 and "deep-tiff" in predictions["qid"].to_list()  # scored


def test_eval_on_object_storage(
    tiny_models, world_sources: tuple[Path, dict], s3_bucket: str
) -> None:
    """The benchmark read from the bucket, predictions and report written to it."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    fs.put(str(world_sources[0] / "benchmark") + "/", f"{s3_bucket}/bench/", recursive=True)
    config = EvalConfig(
        benchmark="proving_ground",
        data=f"{s3_bucket}/bench",
        engine=EngineConfig(model="tiny:vlm", batch_size=8),
        limit=8,
        max_new_tokens=8,
    )
    summary = evaluate(config, f"{s3_bucket}/eval/base")
    assert summary["questions"] == 8
    assert (
        pl.scan_parquet(
            f"{s3_bucket}/eval/base/proving_ground/predictions/*.parquet",
            storage_options={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]},
        )
        .collect()
        .height
        == 8
    )
    from adamllm_core.evaluation.report import write_report

    written = write_report([f"{s3_bucket}/eval/base"], f"{s3_bucket}/eval/base")
    assert (
        fs.exists(written["report_png"])
        and "Proving ground" in fs.cat_file(written["report_md"]).decode()
    )
