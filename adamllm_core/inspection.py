"""What a data engineer wants to see of a dataset at a terminal: manifest, schema, counts,
quarantine reasons and a few rows (image bytes summarised, long text cut)."""

import json
from typing import Any

from pydantic import BaseModel

from adamllm_core.dataset import Dataset, DatasetNotFinishedError, WorkArea, read_work_area
from adamllm_core.storage import redact

MAX_TEXT = 160


class WorkStatus(BaseModel):
    """An unfinished dataset: what its interrupted writer left."""

    uri: str
    stage: str | None
    shards_done: int
    rows_done: int
    quarantined_done: int
    writing_now: dict[str, Any] | None = None


class DatasetSummary(BaseModel):
    uri: str
    manifest: dict[str, Any]
    arrow_schema: str
    samples: list[dict[str, Any]]
    quarantine_samples: list[dict[str, Any]]


def summarise_value(value: Any, row: dict[str, Any]) -> Any:
    if isinstance(value, bytes):
        fmt = row.get("image_format", "bytes")
        size = f"{len(value) / 1024:.1f} KB"
        if "width" in row and "height" in row:
            return f"<{fmt} {row['width']}x{row['height']}, {size}>"
        return f"<{fmt}, {size}>"
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 1] + "…"
    return value


def _samples(dataset: Dataset, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for row in dataset.iter_rows():
        if len(rows) >= n:
            break
        rows.append({k: summarise_value(v, row) for k, v in row.items()})
    return rows


def summarise(uri: str, sample_rows: int = 3) -> DatasetSummary:
    """Summary of a finished dataset; raises DatasetNotFinishedError for unfinished ones."""
    dataset = Dataset(uri)
    quarantine = dataset.quarantine()
    return DatasetSummary(
        uri=redact(dataset.uri),
        manifest=json.loads(dataset.manifest.to_json()),
        arrow_schema=dataset.schema.arrow.to_string(show_schema_metadata=False),
        samples=_samples(dataset, sample_rows),
        quarantine_samples=_samples(quarantine, sample_rows) if quarantine else [],
    )


def work_status(uri: str) -> WorkStatus | None:
    """Progress of an interrupted writer at `uri`, or None when there is no work area."""
    area = read_work_area(uri)
    return None if area is None else work_area_status(area)


def work_area_status(area: WorkArea) -> WorkStatus:
    """What an interrupted (or running) writer's work area holds."""
    return WorkStatus(
        uri=area.uri,
        stage=area.stage,
        shards_done=len(area.markers),
        rows_done=sum(m.rows.rows for m in area.markers),
        quarantined_done=sum(m.quarantine.rows for m in area.markers if m.quarantine),
        writing_now=area.lease_holder,
    )


__all__ = [
    "DatasetNotFinishedError",
    "DatasetSummary",
    "WorkStatus",
    "summarise",
    "work_area_status",
    "work_status",
]
