"""Where a run stands: every dataset under an output folder (a domain run OUT/<domain>/, or
OUT with several), with its stage, schema, rows and quarantine by reason, whether it is
finished, and for an unfinished one (a work area an interrupted writer left) how many shards
and rows are done and, where its input is known, how many are left. Training runs and
exports under the folder are listed too. Reads manifests, work areas and summaries only."""

import json
from datetime import datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from adamllm_core.dataset import (
    MANIFEST_NAME,
    WORK_DIR,
    Dataset,
    DatasetError,
    DatasetNotFinishedError,
    Manifest,
    WorkArea,
    read_manifest,
    read_work_area,
)
from adamllm_core.inspection import WorkStatus, work_area_status
from adamllm_core.storage import filesystem, join, normalise_uri, read_json_object, redact
from adamllm_core.training.trainer import RUN_IDENTITY, finished_run

# What each stage reads (input shard k becomes output shard k): the schema of its input
# dataset, where that is a dataset (ingest, seed and evaluate read sources).
STAGE_INPUT_SCHEMA = {
    "synthesize": "pairs",
    "filter": "triplets",
    "assemble": "pairs",
    "general_tasks": "seed",
}
# What each stage writes, where that is one schema (an unfinished dataset has no manifest
# to name it).
STAGE_OUTPUT_SCHEMA = {
    "ingest": "pairs",
    "synthesize": "triplets",
    "filter": "judged",
    "assemble": "conversations",
    "evaluate": "predictions",
    "seed": "seed",
}
TRAIN_SUMMARY = "train_summary.json"
EXPORT_MARKER = "export.json"
EXPORT_INFO = "dataset_info.json"
MAX_DEPTH = 4  # OUT/<domain>/<stage>/ and OUT/<name>/<benchmark>/predictions/ with room


class StatusError(DatasetError):
    pass


class Found(NamedTuple):
    """A folder the walk recognised: a dataset (finished or not), a training run or an export."""

    uri: str
    kind: Literal["dataset", "training", "export"]


def discover(root: str, max_depth: int = MAX_DEPTH) -> list[Found]:
    """Datasets, training runs and exports under `root` (itself included), in name order.

    One listing per folder; a recognised folder is not descended into, nor are hidden or
    `_`-prefixed ones (caches, quarantines, work areas) or checkpoints."""
    root = normalise_uri(root)
    fs, path = filesystem(root)
    if not fs.isdir(path):
        raise StatusError(f"{redact(root)} is not a folder")
    found: list[Found] = []

    def walk(uri: str, folder: str, depth: int) -> None:
        entries = fs.ls(folder, detail=True)
        names = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries}
        if MANIFEST_NAME in names or WORK_DIR in names:
            found.append(Found(uri, "dataset"))
            return
        if TRAIN_SUMMARY in names or RUN_IDENTITY in names:
            found.append(Found(uri, "training"))
            return
        if EXPORT_MARKER in names or EXPORT_INFO in names:
            found.append(Found(uri, "export"))
            return
        if depth >= max_depth:
            return
        for name in sorted(names):
            entry = names[name]
            if entry.get("type") != "directory" or name.startswith(("_", ".", "checkpoint-")):
                continue
            walk(join(uri, name), entry["name"].rstrip("/"), depth + 1)

    walk(root, path.rstrip("/") or "/", 0)
    return found


def open_datasets(
    root: str, max_depth: int = MAX_DEPTH
) -> tuple[dict[str, Dataset], dict[str, str]]:
    """The datasets under `root` that can be read, by URI, and why each other one cannot
    (unfinished, unreadable)."""
    opened: dict[str, Dataset] = {}
    refused: dict[str, str] = {}
    for item in discover(root, max_depth):
        if item.kind != "dataset":
            continue
        try:
            opened[item.uri] = Dataset(item.uri)
        except (DatasetError, OSError) as error:
            refused[item.uri] = str(error)
    return opened, refused


def finished_datasets(root: str, max_depth: int = MAX_DEPTH) -> list[Dataset]:
    """The finished datasets under `root` (unfinished and unreadable ones left out)."""
    return list(open_datasets(root, max_depth)[0].values())


class Progress(WorkStatus):
    """An unfinished writer's work area: what is done, and what is left where the input is
    known (input shard k becomes output shard k)."""

    inputs_done: int = Field(description="input rows consumed by the shards done")
    input_uri: str | None = Field(
        default=None, description="the input dataset, when it can be told (else unknown)"
    )
    input_rows: int | None = None
    input_shards: int | None = None
    shards_left: int | None = None
    inputs_left: int | None = None
    replacing: bool = Field(
        default=False, description="a replacement written beside a finished dataset"
    )


class ParentState(BaseModel):
    uri: str
    recorded: str = Field(description="the fingerprint the dataset recorded for it")
    current: str | None = Field(description="its fingerprint now; None when unreadable")


class DatasetStatus(BaseModel):
    name: str = Field(description="path under the run folder")
    uri: str
    kind: Literal["dataset", "training", "export"] = "dataset"
    schema_name: str | None = None
    stage: str | None = None
    finished: bool
    rows: int | None = None
    shards: int | None = None
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = Field(default_factory=dict)
    fingerprint: str | None = None
    created_at: datetime | None = None
    changed_parents: list[ParentState] = Field(
        default_factory=list, description="parent datasets that changed since it was made"
    )
    progress: Progress | None = None
    detail: dict[str, Any] = Field(
        default_factory=dict, description="training: steps and loss; export: records, images"
    )
    problem: str | None = Field(default=None, description="why its manifest cannot be read")


class RunStatus(BaseModel):
    root: str
    entries: list[DatasetStatus]


def run_status(root: str, max_depth: int = MAX_DEPTH) -> RunStatus:
    """The status of every dataset, training run and export under `root`."""
    root = normalise_uri(root)
    found = discover(root, max_depth)
    manifests: dict[str, Manifest] = {}
    unreadable: dict[str, str] = {}
    for item in found:
        if item.kind == "dataset":
            try:
                manifests[item.uri] = read_manifest(item.uri)
            except DatasetNotFinishedError:
                pass  # no manifest yet: its work area says how far it got
            except (DatasetError, OSError) as error:
                unreadable[item.uri] = str(error)
    entries = []
    for item in found:
        name = item.uri[len(root) :].lstrip("/") or item.uri.rsplit("/", 1)[-1]
        if item.kind == "training":
            entries.append(_training_status(item.uri, name))
        elif item.kind == "export":
            entries.append(_export_status(item.uri, name, manifests))
        elif item.uri in unreadable:
            entries.append(
                DatasetStatus(
                    name=name, uri=redact(item.uri), finished=False, problem=unreadable[item.uri]
                )
            )
        else:
            entries.append(_dataset_status(item.uri, name, manifests))
    return RunStatus(root=redact(root), entries=entries)


def _dataset_status(uri: str, name: str, manifests: dict[str, Manifest]) -> DatasetStatus:
    manifest = manifests.get(uri)
    if manifest is None:
        area = read_work_area(uri)
        return DatasetStatus(
            name=name,
            uri=redact(uri),
            schema_name=STAGE_OUTPUT_SCHEMA.get(area.stage or "") if area else None,
            stage=area.stage if area else None,
            finished=False,
            progress=_progress(uri, area, manifests, None) if area else None,
        )
    quarantine = manifest.quarantine
    area = read_work_area(uri, beside_manifest=True)
    return DatasetStatus(
        name=name,
        uri=redact(uri),
        schema_name=manifest.record_schema.name,
        stage=manifest.stats.stage,
        finished=True,
        rows=manifest.rows,
        shards=len(manifest.shards),
        quarantined=quarantine.rows if quarantine else 0,
        quarantine_reasons=dict(quarantine.reasons) if quarantine else {},
        fingerprint=manifest.fingerprint,
        created_at=manifest.created_at,
        changed_parents=_changed_parents(manifest, manifests),
        progress=_progress(uri, area, manifests, manifest) if area else None,
    )


def _changed_parents(manifest: Manifest, manifests: dict[str, Manifest]) -> list[ParentState]:
    changed = []
    for parent in manifest.parents:
        if parent.kind != "dataset":
            continue
        current = manifests.get(normalise_uri(parent.uri))
        if current is None:  # outside the folder
            try:
                current = read_manifest(parent.uri)
            except (DatasetError, OSError):
                current = None
        if current is None or current.fingerprint != parent.fingerprint:
            changed.append(
                ParentState(
                    uri=parent.uri,
                    recorded=parent.fingerprint,
                    current=current.fingerprint if current else None,
                )
            )
    return changed


def _progress(
    uri: str, area: WorkArea, manifests: dict[str, Manifest], previous: Manifest | None
) -> Progress:
    """What the work area holds, and what is left when the stage's input can be told: the
    input dataset of the stage's schema that the finished dataset here named (a
    replacement), else the one beside it whose shards the done shards match."""
    done = area.markers
    progress = Progress(
        **work_area_status(area).model_dump(),
        inputs_done=sum(m.rows_in for m in done),
        replacing=previous is not None,
    )
    source = _input_of(uri, area, manifests, previous)
    if source is not None:
        input_uri, manifest = source
        progress.input_uri = redact(input_uri)
        progress.input_rows = manifest.rows
        progress.input_shards = len(manifest.shards)
        progress.shards_left = max(0, len(manifest.shards) - len(done))
        progress.inputs_left = max(0, manifest.rows - progress.inputs_done)
    return progress


def _input_of(
    uri: str, area: WorkArea, manifests: dict[str, Manifest], previous: Manifest | None
) -> tuple[str, Manifest] | None:
    schema = STAGE_INPUT_SCHEMA.get(area.stage or "")
    if schema is None:
        return None

    def fits(manifest: Manifest) -> bool:
        # input shard k became output shard k, consuming its rows
        return all(
            m.index < len(manifest.shards) and manifest.shards[m.index].rows == m.rows_in
            for m in area.markers
        )

    if previous is not None:  # a replacement: the input it had, at the same URI, now
        for parent in previous.parents:
            current = manifests.get(normalise_uri(parent.uri))
            if current is not None and current.record_schema.name == schema and fits(current):
                return normalise_uri(parent.uri), current
    folder = uri.rsplit("/", 1)[0]
    candidates = [
        (other, manifest)
        for other, manifest in manifests.items()
        if other != uri
        and other.rsplit("/", 1)[0] == folder
        and manifest.record_schema.name == schema
        and fits(manifest)
    ]
    if len(candidates) > 1:  # e.g. pairs and general-pairs: the one named like this output
        prefix = uri.rsplit("/", 1)[-1].split("-", 1)[0]
        named = [c for c in candidates if c[0].rsplit("/", 1)[-1].split("-", 1)[0] == prefix]
        plain = [c for c in candidates if "-" not in c[0].rsplit("/", 1)[-1]]
        candidates = named if len(named) == 1 else plain
    return candidates[0] if len(candidates) == 1 else None


def _training_status(uri: str, name: str) -> DatasetStatus:
    summary = finished_run(uri)
    if summary is not None:
        detail = {
            k: summary[k]
            for k in ("steps", "epochs", "examples", "train_loss", "validation_loss", "final")
            if k in summary
        }
        detail["identity"] = summary.get("identity")
        return DatasetStatus(
            name=name, uri=redact(uri), kind="training", stage="train", finished=True, detail=detail
        )
    fs, path = filesystem(uri)
    checkpoints = []
    for entry in fs.ls(path, detail=False):
        entry = entry.rstrip("/")
        folder = entry.rsplit("/", 1)[-1]
        step = folder.removeprefix("checkpoint-")
        # a checkpoint is complete once its run_identity is written
        if step != folder and step.isdigit() and fs.exists(join(entry, RUN_IDENTITY)):
            checkpoints.append(int(step))
    detail: dict[str, Any] = {"last_checkpoint": max(checkpoints, default=None)}
    metrics = join(path, "metrics.jsonl")
    if fs.exists(metrics):
        with fs.open(metrics, "rb") as handle:
            last = None
            for line in handle:  # a line per logged step: small
                if line.strip():
                    last = line
        if last is not None:
            try:
                detail["last_logged_step"] = json.loads(last).get("step")
            except ValueError:
                pass
    return DatasetStatus(
        name=name, uri=redact(uri), kind="training", stage="train", finished=False, detail=detail
    )


def _export_status(uri: str, name: str, manifests: dict[str, Manifest]) -> DatasetStatus:
    marker = read_json_object(join(uri, EXPORT_MARKER))
    fs, path = filesystem(uri)
    finished = marker is not None and fs.exists(join(path, EXPORT_INFO))
    detail: dict[str, Any] = {}
    changed: list[ParentState] = []
    if marker:
        detail = {k: marker[k] for k in ("name", "records", "images") if k in marker}
        recorded = marker.get("mixture_fingerprint")
        if recorded:
            sources = [u for u, m in manifests.items() if m.fingerprint == recorded]
            detail["mixture"] = redact(sources[0]) if sources else None
            if not sources:
                changed.append(ParentState(uri="(its mixture)", recorded=recorded, current=None))
    return DatasetStatus(
        name=name,
        uri=redact(uri),
        kind="export",
        stage="export",
        finished=finished,
        rows=detail.get("records"),
        changed_parents=changed,
        detail=detail,
    )


__all__ = [
    "DatasetStatus",
    "Found",
    "ParentState",
    "Progress",
    "RunStatus",
    "StatusError",
    "discover",
    "finished_datasets",
    "open_datasets",
    "run_status",
]
