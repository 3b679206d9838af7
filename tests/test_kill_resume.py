"""SIGKILL an ingest mid-run, run it again: same dataset, nothing doubled, nothing partial shown."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from corpus import changed, file_states, held_command, hold_env, wait_until_held

from adamllm_core.dataset import DatasetNotFinishedError, read_manifest, read_work_area
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.storage import STAGING_SUFFIX, staging_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "adamllm_cli.main", *args]


def finished_shards(out: Path) -> list[str]:
    """The shard files an interrupted writer has marked done, read through the data plane's
    own view of its work area (a kill can land mid-write: unpublished markers are ignored)."""
    area = read_work_area(str(out))
    return sorted(m.rows.path for m in area.markers) if area else []


def test_killed_ingest_resumes_to_the_same_dataset(
    prefect_server: str, world_sources: tuple[Path, dict], tmp_path: Path
) -> None:
    root, expected = world_sources
    source = root / "pairs"  # generated: 200 pairs, a missing and an undecodable image
    out = tmp_path / "pairs"
    args = [
        "ingest",
        str(source),
        "--domain",
        "proving",
        "--out",
        str(out),
        "--rows-per-shard",
        "40",
        "--workers",
        "2",  # the resumed run's workers decode only the records of shards not yet done
    ]
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    # Held, not polled: the run waits, once shards 0-2 are marked done and shard 3's file is
    # written but not yet its marker, until it is killed there. A poll-then-kill could land
    # anywhere, or after the run had finished.
    hold = tmp_path / "hold"
    process = subprocess.Popen(
        held_command("adamllm_cli.main", *args),
        env={**env, **hold_env("before-marker:3", hold)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_until_held(process, hold, lambda: process.stdout.read().decode(), timeout_s=180)
    process.send_signal(signal.SIGKILL)
    process.wait()

    finished_before = finished_shards(out)
    assert len(finished_before) == 3  # of 6 (202 records / 40 per shard)
    assert not (out / "manifest.json").exists()
    # shards are written where they stay; no reader through the manifest sees them yet;
    # shard 3 is on disk without its marker (the kill fell between the two)
    on_disk = {p.name for p in out.glob("*.parquet")}
    assert set(finished_before) < on_disk and len(on_disk - set(finished_before)) == 1
    assert (on_disk - set(finished_before)).pop().startswith("part-00003-")
    with pytest.raises(DatasetNotFinishedError, match="unfinished"):
        read_manifest(str(out))
    kept = file_states(out / name for name in finished_before)

    # A kill during a shard's write leaves its staging file, half written (one is planted
    # here, so the case is there on every run): the finished dataset must not keep it, or
    # a reader's glob (polars, duckdb) would read it.
    (out / staging_name("part-00003-000000000000.parquet")).write_bytes(b"PAR1 cut short")
    rerun = subprocess.run(
        cli(*args), env=env, check=False, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = read_manifest(str(out))

    # finished shards were published as first written, not recomputed
    assert changed(kept) == []

    config = IngestConfig(domain="proving", rows_per_shard=40)
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
    assert resumed.stats.rows_in == expected["pairs_in"] == resumed.rows + resumed.quarantine.rows
    assert resumed.quarantine.reasons == expected["quarantined"]
