"""SIGKILL an ingest mid-run, run it again: same dataset, nothing doubled, nothing partial shown."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from adamllm_core.dataset import read_manifest, read_work_area
from adamllm_core.importers import SourceOptions
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.storage import STAGING_SUFFIX, staging_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEMPLATE = "Question: {question} Answer: {answer}"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "adamllm_cli.main", *args]


def finished_shards(out: Path) -> list[str]:
    """The shard files an interrupted writer has marked done, read through the data plane's
    own view of its work area (a kill can land mid-write: unpublished markers are ignored)."""
    area = read_work_area(str(out))
    return sorted(m.rows.path for m in area.markers) if area else []


def test_killed_ingest_resumes_to_the_same_dataset(
    prefect_server: str, shared_data: Path, tmp_path: Path
) -> None:
    source = shared_data / "vqa_rad_train"
    out = tmp_path / "pairs"
    args = cli(
        "ingest",
        str(source),
        "--domain",
        "biomed",
        "--out",
        str(out),
        "--caption-template",
        TEMPLATE,
        "--rows-per-shard",
        "40",
        "--workers",
        "2",  # the resumed run's workers decode only the records of shards not yet done
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if len(finished_shards(out)) >= 3:
            break
        time.sleep(0.005)
    assert process.poll() is None, (
        f"ingest ended before it could be killed:\n{process.stdout.read().decode()}"
    )
    process.send_signal(signal.SIGKILL)
    process.wait()

    finished_before = finished_shards(out)
    assert 3 <= len(finished_before) < 29  # 1152 records / 40 per shard = 29 shards
    assert not (out / "manifest.json").exists()
    # shards are written where they stay; no reader through the manifest sees them yet.
    # The kill may fall between the one shard being written and its marker (written after).
    on_disk = {p.name for p in out.glob("*.parquet")}
    assert set(finished_before) <= on_disk and len(on_disk - set(finished_before)) <= 1
    with pytest.raises(Exception, match="unfinished"):
        read_manifest(str(out))
    stamps = {name: (out / name).stat().st_mtime_ns for name in finished_before}

    # A kill during a shard's write leaves its staging file, half written (one is planted
    # here, so the case is there on every run): the finished dataset must not keep it, or
    # a reader's glob (polars, duckdb) would read it.
    (out / staging_name("part-00003-000000000000.parquet")).write_bytes(b"PAR1 cut short")
    rerun = subprocess.run(args, env=env, check=False, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = read_manifest(str(out))

    # finished shards were published as first written, not recomputed
    for name, stamp in stamps.items():
        assert (out / name).stat().st_mtime_ns == stamp

    config = IngestConfig(
        domain="biomed", rows_per_shard=40, source=SourceOptions(caption_template=TEMPLATE)
    )
    reference = ingest(str(source), str(tmp_path / "reference"), config)
    assert resumed.fingerprint == reference.fingerprint
    assert resumed.shards == reference.shards
    assert resumed.quarantine.rows == reference.quarantine.rows

    def location_free(manifest) -> dict:
        data = json.loads(manifest.to_json())
        data["quarantine"].pop("uri")
        return {k: v for k, v in data.items() if k not in ("created_at", "stats")}

    assert location_free(resumed) == location_free(reference)

    assert not [p.name for p in out.rglob("*") if p.name.endswith(STAGING_SUFFIX)]
    rows = pl.scan_parquet(str(out / "*.parquet")).select("id").collect()
    assert rows["id"].n_unique() == len(rows) == resumed.rows
    assert resumed.stats.rows_in == 1152 == resumed.rows + resumed.quarantine.rows
