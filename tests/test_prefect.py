"""The ingest task and flow on a real Prefect server: caching, artifacts, resume."""

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    TaskRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort

from adamllm_core.dataset import DatasetWriter, ParentRef
from adamllm_core.ingest import IngestConfig
from adamllm_core.schemas import PAIRS
from flows.ingest import ingest_flow
from tasks.ingest import ingest_pairs

pytestmark = pytest.mark.integration


@flow
def ingest_probe(source: str, out: str, config: IngestConfig, overwrite: bool = False):
    return ingest_pairs(source, out, config, overwrite=overwrite, return_state=True)


async def _artifacts(flow_run_id, kind: str) -> list:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                type=ArtifactFilterType(any_=[kind]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            ),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            limit=50,
            sort=ArtifactSort.CREATED_DESC,
        )


def test_flow_completes_then_caches(prefect_server: str, broken_corpus, tmp_path: Path) -> None:
    source, expected = broken_corpus
    out = str(tmp_path / "pairs")
    config = IngestConfig(domain="test", rows_per_shard=10)

    ref = ingest_flow(source=str(source), out=out, config=config)
    assert ref.rows == expected["valid"] and ref.quarantined == sum(expected["reasons"].values())

    # the output exists now, so the task has a key; the next run stores its result under it
    second = ingest_probe(str(source), out, config)
    assert second.is_completed() and second.name == "Completed"
    third = ingest_probe(str(source), out, config)
    assert third.name == "Cached"
    assert third.result().fingerprint == ref.fingerprint

    # overwrite only replaces a different dataset: the identical one is still served cached
    assert ingest_probe(str(source), out, config, overwrite=True).name == "Cached"
    other = ingest_probe(
        str(source), str(tmp_path / "other"), config.model_copy(update={"rows_per_shard": 5})
    )
    assert other.name == "Completed"


def test_deleted_output_is_rebuilt_not_served_from_cache(
    prefect_server: str, broken_corpus, tmp_path: Path
) -> None:
    source, _ = broken_corpus
    out = tmp_path / "pairs"
    config = IngestConfig(domain="test")
    ingest_probe(str(source), str(out), config)
    assert ingest_probe(str(source), str(out), config).name == "Completed"
    shutil.rmtree(out)
    state = ingest_probe(str(source), str(out), config)
    assert state.name == "Completed" and (out / "manifest.json").exists()


def test_stats_and_progress_artifacts(prefect_server: str, broken_corpus, tmp_path: Path) -> None:
    source, expected = broken_corpus
    state = ingest_flow(
        source=str(source),
        out=str(tmp_path / "pairs"),
        config=IngestConfig(domain="test"),
        return_state=True,
    )
    run_id = state.state_details.flow_run_id
    tables = asyncio.run(_artifacts(run_id, "table"))
    assert [t.key for t in tables] == ["ingest-stats"]
    latest = tables[0]
    data = latest.data if isinstance(latest.data, list) else json.loads(latest.data)
    values = {row["statistic"]: row["value"] for row in data}
    assert values["rows in"] == expected["inputs"]
    assert values["quarantined: duplicate"] == 1
    progress = asyncio.run(_artifacts(run_id, "progress"))
    assert [float(a.data) for a in progress] == [100.0]


def test_flow_resumes_unfinished_output(prefect_server: str, broken_corpus, tmp_path: Path) -> None:
    source, expected = broken_corpus
    out = tmp_path / "pairs"
    config = IngestConfig(domain="test", rows_per_shard=10)
    # an interrupted writer with another identity leaves work that must be discarded
    stale = DatasetWriter(
        str(out),
        schema=PAIRS,
        stage="ingest",
        parents=[ParentRef(uri="x", fingerprint="y")],
        config={},
        config_hash="z",
    )
    stale.prepare()
    ref = ingest_flow(source=str(source), out=str(out), config=config)
    assert ref.rows == expected["valid"]
    assert not (out / "_work").exists()
