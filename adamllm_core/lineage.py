"""Lineage of a row: back from any row (a prediction, a mixture record, a judged row, a
triplet) to where it came from, and forward to every row made from it.

Back: the row is found by id in its dataset (shard by shard, reading the `id` column only,
then the one row group that holds it); each of its `lineage_fields` is followed into the
parent datasets its manifest names (of the schema that field points to), whose fingerprint
is checked against the one the child recorded (a mismatch: the parent changed since).
A pair ends at its source record (annotation file and line), read again through the
importer that ingested it: the original image file's bytes are hashed against the pair's
`image_sha256`, and the caption is compared. A prediction ends at its benchmark question
(file and line) and that question's image bytes, and goes through its model identity to
the model folder the evaluation named and, where the training run records it, its data.
Every step records what made it: stage, dataset identity, config hash, code version and
the model identities (synthesizer, judge, target, evaluated model).

Forward: the datasets under the run folder descending from the row's dataset (by the
fingerprints their manifests record), in order, each scanned batch by batch over its id
and lineage columns for the rows whose pair_id or triplet_id is the row or a row found
before; quarantined inputs (`record_id`) are reported too.
"""

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, ValidationError

from adamllm_core.dataset import (
    Dataset,
    DatasetError,
    Manifest,
    ParentRef,
    RowGroupReader,
    manifest_exists,
    manifest_identity,
)
from adamllm_core.errors import Rejected
from adamllm_core.hashing import pair_id
from adamllm_core.inspection import summarise_value
from adamllm_core.status import finished_datasets
from adamllm_core.storage import (
    filesystem,
    join,
    listing_fingerprint,
    normalise_uri,
    read_bytes,
    read_json_object,
    redact,
)
from adamllm_core.training.trainer import finished_run

# A lineage field and the schemas of the parent datasets it names rows of, in preference
# order (a mixture's triplet_id is a kept, judged triplet; for the no-filter variants a
# parsed one).
FOLLOW: dict[str, tuple[str, ...]] = {
    "pair_id": ("pairs",),
    "triplet_id": ("judged", "triplets"),
}
FOLLOWED_SCHEMAS = {name for names in FOLLOW.values() for name in names}
# What is shown of a row of each schema (the rest: `adamllm inspect`).
SALIENT: dict[str, tuple[str, ...]] = {
    "pairs": ("caption", "image", "image_sha256", "domain", "source", "source_ref"),
    "triplets": ("pair_id", "instruction", "precise", "informative", "synthesizer", "turns"),
    "judged": (
        "pair_id",
        "triplet_id",
        "label",
        "score_yes",
        "score_no",
        "score_open",
        "judge",
        "instruction",
        "response",
        "response_rule",
    ),
    "conversations": ("pair_id", "triplet_id", "variant", "kind", "image", "messages", "tokens"),
    "predictions": ("benchmark", "qid", "model", "parsed", "gold", "score", "raw_output", "source"),
    "seed": ("task", "split", "image", "caption", "instruction", "precise", "source_ref"),
    "quarantine": ("stage", "reason", "detail", "record_id", "source_ref"),
}
# Manifest config keys naming the model a stage ran (synthesize, filter, evaluate; assemble's
# target, whose processor counted the tokens).
CONFIG_MODELS = {"model_identity": "model", "target_identity": "target model"}
FORWARD_ROWS = 20  # rows listed per dataset (all are counted)
ID_BATCH = 65_536  # ids read at once when looking for a row: a few MB


class LineageError(DatasetError):
    pass


class Check(BaseModel):
    """One thing verified along the walk: ok True, False (a problem), or None (not checkable)."""

    name: str
    ok: bool | None
    detail: str


class MadeBy(BaseModel):
    """What made a dataset: its manifest's stage, identity, config hash and code version."""

    stage: str
    identity: str = Field(description="hash of schema, parents, config hash and code version")
    config_hash: str
    code_version: str
    fingerprint: str
    created_at: datetime
    models: dict[str, str] = Field(
        default_factory=dict, description="model identities in the stage's config"
    )


class LineageNode(BaseModel):
    """One step: a row of a dataset, a source record, a benchmark question, a model or its
    training run. `parents`: the nodes (by index) it was made from."""

    index: int
    what: str
    uri: str
    schema_name: str | None = None
    id: str | None = None
    via: str | None = Field(default=None, description="the field followed to reach it")
    fields: dict[str, Any] = Field(default_factory=dict)
    made_by: MadeBy | None = None
    parents: list[int] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=list)


class Origin(BaseModel):
    """Where the walk ends: the image bytes (and caption) it started from, read from the
    original file now; `verified` when they are what the row recorded."""

    kind: Literal["source record", "seed example", "benchmark question"]
    source: str = Field(description="file and line (or row) it was read from")
    image_uri: str | None = None
    image_sha256: str
    image_bytes: int
    caption: str | None = Field(default=None, description="the pair's caption")
    source_caption: str | None = Field(default=None, description="the caption in the source")
    question: str | None = None
    answer: str | list[str] | None = None
    verified: bool
    image: bytes | None = Field(default=None, exclude=True, repr=False)


class ForwardRows(BaseModel):
    """Rows of one dataset made from the row (or from rows made from it)."""

    uri: str
    schema_name: str
    stage: str
    quarantine: bool = Field(default=False, description="inputs the stage quarantined")
    matched: int
    rows: list[dict[str, Any]] = Field(description=f"the first {FORWARD_ROWS}")


class Lineage(BaseModel):
    id: str
    dataset: str = Field(description="the dataset the row was found in")
    schema_name: str
    also_in: list[str] = Field(
        default_factory=list, description="other datasets searched holding a row of this id"
    )
    nodes: list[LineageNode] = Field(description="the row first, then back, breadth first")
    origins: list[Origin] = Field(default_factory=list)
    forward: list[ForwardRows] | None = Field(
        default=None, description="rows made from it, in the datasets under `searched`"
    )
    searched: str | None = None
    problems: list[str] = Field(default_factory=list, description="every check that failed")


# --- finding rows ------------------------------------------------------------------------------


def find_row(dataset: Dataset, row_id: str, column: str = "id") -> dict[str, Any] | None:
    """The row whose `column` is `row_id`: its shards' `column` read a batch at a time,
    then the one row group that holds it."""
    if column not in dataset.schema.arrow.names:
        return None
    for index in range(len(dataset.manifest.shards)):
        offset = 0
        for batch in dataset.shard_batches(index, [column], batch_size=ID_BATCH):
            position = pc.index(batch.column(0), row_id).as_py()
            if position >= 0:
                return RowGroupReader(dataset, keep=1).row(index, offset + position)
            offset += batch.num_rows
    return None


def _locate(row_id: str, uri: str) -> tuple[Dataset, dict[str, Any], list[str]]:
    """The dataset at `uri` (or, for a folder, the datasets under it) holding the row."""
    uri = normalise_uri(uri)
    if manifest_exists(uri):
        datasets = [Dataset(uri)]
    else:
        datasets = finished_datasets(uri)
        if not datasets:
            raise LineageError(
                f"{redact(uri)} is not a dataset and holds no finished dataset; pass the "
                "dataset the row is in (see `adamllm status` for the run's datasets)"
            )
    hits = []
    for dataset in datasets:
        row = find_row(dataset, row_id)
        if row is None and dataset.manifest.record_schema.name == "predictions":
            row = find_row(dataset, row_id, "qid")  # a prediction by its question id
        if row is not None:
            hits.append((dataset, row))
    if not hits:
        where = (
            f"the dataset {redact(uri)}"
            if len(datasets) == 1
            else f"any of the {len(datasets)} datasets under {redact(uri)}"
        )
        raise LineageError(
            f"no row with id {row_id!r} in {where}; see its ids with "
            f"`adamllm inspect {redact(datasets[0].uri)}`"
        )
    # A judged row has its triplet's id: the most derived dataset is where the walk starts.
    made_from = {p.fingerprint for dataset, _ in hits for p in dataset.manifest.parents}
    hits.sort(key=lambda hit: hit[0].manifest.fingerprint in made_from)
    dataset, row = hits[0]
    return dataset, row, [redact(d.uri) for d, _ in hits[1:]]


# --- what is shown -----------------------------------------------------------------------------


def _shown(value: Any, row: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_shown(v, row) for v in value]
    if isinstance(value, dict):
        return {k: _shown(v, row) for k, v in value.items()}
    return summarise_value(value, row)


def salient(schema_name: str, row: dict[str, Any]) -> dict[str, Any]:
    names = SALIENT.get(schema_name, tuple(row))
    return {name: _shown(row[name], row) for name in names if name in row}


def made_by(manifest: Manifest) -> MadeBy:
    return MadeBy(
        stage=manifest.stats.stage,
        identity=manifest_identity(manifest),
        config_hash=manifest.config_hash,
        code_version=manifest.code_version,
        fingerprint=manifest.fingerprint,
        created_at=manifest.created_at,
        models={
            label: value
            for key, label in CONFIG_MODELS.items()
            if isinstance(value := manifest.config.get(key), str)
        },
    )


# --- walking back ------------------------------------------------------------------------------


class _Walk:
    """The nodes found so far (each once), the origins reached and the datasets opened."""

    def __init__(self) -> None:
        self.nodes: list[LineageNode] = []
        self.keys: dict[tuple[str, str | None, str], int] = {}
        self.origins: list[Origin] = []
        self.opened: dict[str, Dataset | str] = {}
        self.beside: dict[str, list[Dataset]] = {}

    def add(self, child: int | None, **values: Any) -> int:
        """A new node; `child`, the node made from it, names it as a parent."""
        index = len(self.nodes)
        self.nodes.append(LineageNode(index=index, **values))
        self.link(child, index)
        return index

    def link(self, child: int | None, parent: int) -> None:
        if child is not None and parent not in self.nodes[child].parents:
            self.nodes[child].parents.append(parent)

    def node(
        self, key: tuple[str, str | None, str], child: int | None, **values: Any
    ) -> tuple[int, bool]:
        """The node of `key`, added the first time, linked to `child`; whether it is new."""
        new = key not in self.keys
        if new:
            self.keys[key] = self.add(None, **values)
        self.link(child, self.keys[key])
        return self.keys[key], new

    def open(self, uri: str) -> Dataset | str:
        """The dataset, or why it cannot be read."""
        uri = normalise_uri(uri)
        if uri not in self.opened:
            try:
                self.opened[uri] = Dataset(uri)
            except (DatasetError, OSError) as error:
                self.opened[uri] = str(error)
        return self.opened[uri]

    def parents(self, dataset: Dataset) -> list[Dataset]:
        """Its parent datasets that can be read (the others fail its parent checks)."""
        return [
            opened
            for parent in dataset.manifest.parents
            if parent.kind == "dataset" and isinstance(opened := self.open(parent.uri), Dataset)
        ]

    def siblings(self, dataset: Dataset) -> list[Dataset]:
        """The datasets beside it that one stage run wrote with it: same parents, stage,
        config and code."""
        folder = dataset.uri.rsplit("/", 1)[0]
        if folder not in self.beside:
            self.beside[folder] = finished_datasets(folder, max_depth=1)
        mine = dataset.manifest
        return [
            other
            for other in self.beside[folder]
            if other.uri != dataset.uri
            and other.manifest.parents == mine.parents
            and other.manifest.stats.stage == mine.stats.stage
            and other.manifest.config_hash == mine.config_hash
            and other.manifest.code_version == mine.code_version
        ]

    def parent_checks(self, manifest: Manifest) -> list[Check]:
        checks = []
        for parent in manifest.parents:
            if parent.kind != "dataset":
                continue
            dataset = self.open(parent.uri)
            if isinstance(dataset, str):
                checks.append(Check(name=f"parent {parent.uri}", ok=False, detail=dataset))
            else:
                checks.append(_fingerprint_check(parent, dataset.manifest.fingerprint))
        return checks

    def row_node(
        self, dataset: Dataset, row: dict[str, Any], *, via: str | None, child: int | None
    ) -> tuple[int, bool]:
        schema = dataset.manifest.record_schema.name
        return self.node(
            (redact(dataset.uri), row.get("id"), "row"),
            child,
            what=f"{schema} row",
            uri=redact(dataset.uri),
            schema_name=schema,
            id=row.get("id"),
            via=via,
            fields=salient(schema, row),
            made_by=made_by(dataset.manifest),
            checks=self.parent_checks(dataset.manifest),
        )

    def back(self, dataset: Dataset, row: dict[str, Any]) -> None:
        """Breadth first from the row: every lineage field followed, to the ends."""
        queue = deque([(dataset, row, self.row_node(dataset, row, via=None, child=None)[0])])
        while queue:
            dataset, row, index = queue.popleft()
            schema = dataset.manifest.record_schema.name
            for field in dataset.schema.model.lineage_fields:
                value = row.get(field)
                if field in FOLLOW and value is not None:
                    found = self.follow(dataset, field, value, index)
                    if found is not None:
                        queue.append(found)
                elif schema == "pairs" and field == "source_ref":
                    self.pair_origin(dataset, row, index)
                elif schema == "predictions" and field == "qid":
                    self.question_origin(dataset, row, index)
                    self.model(dataset, row, index)

    def follow(
        self, dataset: Dataset, field: str, value: str, child: int
    ) -> tuple[Dataset, dict[str, Any], int] | None:
        """The row `value` names through `field`, in the first parent of a schema the field
        points to that holds it; None when no parent has such a schema (the row is reached
        through another field) or when it was reached already."""
        targets = FOLLOW[field]
        parents = self.parents(dataset)
        candidates = [d for d in parents if d.manifest.record_schema.name in targets]
        if not any(d.manifest.record_schema.name in FOLLOWED_SCHEMAS for d in parents):
            # written beside it by the same stage run (general_tasks: pairs and triplets)
            candidates = [
                d for d in self.siblings(dataset) if d.manifest.record_schema.name in targets
            ]
        candidates.sort(key=lambda d: targets.index(d.manifest.record_schema.name))
        for parent in candidates:
            row = find_row(parent, value)
            if row is not None:
                index, new = self.row_node(parent, row, via=field, child=child)
                return (parent, row, index) if new else None
        if candidates:
            changed = any(c.ok is False for c in self.nodes[child].checks)
            self.nodes[child].checks.append(
                Check(
                    name=f"{field} {value}",
                    ok=False,
                    detail=f"not found in {', '.join(redact(d.uri) for d in candidates)}"
                    + (" (which changed since: see the fingerprint checks)" if changed else ""),
                )
            )
        return None

    # -- the ends -------------------------------------------------------------------------------

    def end(
        self,
        index: int,
        row: dict[str, Any],
        source: str,
        read: Callable[[], tuple[Origin | None, list[Check]]],
    ) -> None:
        """Where the walk ends behind node `index`, read again by `read`: its checks go to
        that node, and the origin it reached becomes a node of its own."""
        try:
            origin, checks = read()
        except (ValueError, OSError, DatasetError) as error:
            self.nodes[index].checks.append(
                Check(name=source, ok=False, detail=f"cannot be read: {error}")
            )
            return
        self.nodes[index].checks.extend(checks)
        if origin is not None:
            self.origins.append(origin)
            self.add(index, **_end_node(origin, row))

    def pair_origin(self, dataset: Dataset, row: dict[str, Any], index: int) -> None:
        """The pair's source record, read again: from a source (ingest), or a seed example
        (general_tasks' pairs)."""
        seeds = [d for d in self.parents(dataset) if d.manifest.record_schema.name == "seed"]
        if seeds:
            self.seed_origin(seeds, row, index)
            return
        sources = [p for p in dataset.manifest.parents if p.kind == "source"]
        parent = next(
            (p for p in sources if p.uri == row["source"]), sources[0] if sources else None
        )
        if parent is None:
            self.nodes[index].checks.append(
                Check(name="source", ok=None, detail="the pairs name no source")
            )
            return
        self.end(
            index,
            row,
            f"source {row['source']}",
            lambda: _source_record(row, parent, dataset.manifest),
        )

    def seed_origin(self, seeds: list[Dataset], row: dict[str, Any], index: int) -> None:
        seed_id = _metadata(row).get("seed_id")
        for seed in seeds:
            found = find_row(seed, seed_id) if seed_id else None
            if found is None:
                continue
            seed_index, _ = self.row_node(seed, found, via="metadata.seed_id", child=index)
            digest = hashlib.sha256(found["image"]).hexdigest()
            checks = [
                Check(
                    name="image bytes",
                    ok=digest == row["image_sha256"],
                    detail=f"seed example's image sha256 {digest[:16]}…, the pair recorded "
                    f"{row['image_sha256'][:16]}…",
                ),
                Check(
                    name="caption",
                    ok=found["caption"] == row["caption"],
                    detail="the seed example's caption"
                    + (" is the pair's" if found["caption"] == row["caption"] else " differs"),
                ),
            ]
            self.nodes[index].checks.extend(checks)
            self.origins.append(
                Origin(
                    kind="seed example",
                    source=f"{redact(seed.uri)} {found['source_ref']}",
                    image_sha256=digest,
                    image_bytes=len(found["image"]),
                    caption=row["caption"],
                    source_caption=found["caption"],
                    verified=all(c.ok for c in checks),
                    image=found["image"],
                )
            )
            self.nodes[seed_index].fields["source_ref"] = found["source_ref"]
            return
        self.nodes[index].checks.append(
            Check(name="seed example", ok=False, detail=f"{seed_id!r} not in the seed data")
        )

    def question_origin(self, dataset: Dataset, row: dict[str, Any], index: int) -> None:
        """The benchmark question a prediction answers, and its image, read again."""
        sources = [p for p in dataset.manifest.parents if p.kind == "source"]
        if not sources:
            self.nodes[index].checks.append(
                Check(name="benchmark", ok=None, detail="no benchmark recorded")
            )
            return
        parent = sources[0]
        self.end(index, row, f"benchmark {parent.uri}", lambda: _benchmark_question(row, parent))

    def model(self, dataset: Dataset, row: dict[str, Any], index: int) -> None:
        """The model a prediction was made with: the folder the evaluation named (its
        summary.json beside the predictions), checked by identity; its training run and,
        where that records it, the training data."""
        identity = row["model"]
        summary = read_json_object(join(dataset.uri.rsplit("/", 1)[0], "summary.json")) or {}
        named = summary.get("model") if summary.get("model_identity") == identity else None
        checks: list[Check] = []
        path = _local_model(named) if named else None
        if path is not None and identity.startswith("local:"):
            from adamllm_core.engines.hf import model_identity  # imports transformers

            now = model_identity(path, None)
            checks.append(
                Check(
                    name="model files",
                    ok=now == identity,
                    detail=f"{path} hashes to {now} now"
                    + ("" if now == identity else f", the prediction recorded {identity}"),
                )
            )
        elif named is None:
            checks.append(
                Check(
                    name="model folder",
                    ok=None,
                    detail="the evaluation's summary.json names no model of this identity",
                )
            )
        model_index = self.add(
            index,
            what="model",
            uri=redact(named) if named else identity,
            id=identity,
            via="model",
            fields={"identity": identity, "evaluated as": named},
            checks=checks,
        )
        if path is not None and Path(path).name == "final":
            self.training_run(str(Path(path).parent), model_index)

    def training_run(self, folder: str, child: int) -> None:
        summary = finished_run(folder)
        if summary is None:
            return
        shown = ("identity", "steps", "epochs", "examples", "train_loss", "trained_tokens")
        fields = {
            k: summary[k] for k in (*shown, "config_hash", "model", "base_model") if k in summary
        }
        data = summary.get("data") or summary.get("data_uri")
        if not data:
            trained = summary.get("examples", 0) + summary.get("dropped_too_long", 0)
            fields["training data"] = "not recorded in train_summary.json"
            fields["beside it with as many rows (unverified)"] = [
                redact(d.uri)
                for d in finished_datasets(folder.rsplit("/", 1)[0], max_depth=1)
                if d.manifest.record_schema.name == "conversations" and d.manifest.rows == trained
            ]
        index = self.add(
            child,
            what="training run",
            uri=redact(folder),
            id=summary.get("identity"),
            via="final",
            fields=fields,
        )
        if not data:
            return
        opened = self.open(data)
        if isinstance(opened, str):
            self.nodes[index].checks.append(
                Check(name=f"training data {data}", ok=False, detail=opened)
            )
            return
        recorded = summary.get("data_fingerprint")
        if recorded:
            self.nodes[index].checks.append(
                _fingerprint_check(
                    ParentRef(uri=redact(data), fingerprint=recorded), opened.manifest.fingerprint
                )
            )
        self.node(
            (redact(opened.uri), None, "dataset"),
            index,
            what="training data",
            uri=redact(opened.uri),
            schema_name=opened.manifest.record_schema.name,
            fields={"rows": opened.manifest.rows},
            made_by=made_by(opened.manifest),
            checks=self.parent_checks(opened.manifest),
        )


def _end_node(origin: Origin, row: dict[str, Any]) -> dict[str, Any]:
    """The node of where the walk ended: a source record or a benchmark question."""
    if origin.kind == "benchmark question":
        return {
            "what": origin.kind,
            "uri": redact(origin.source.rsplit(":", 1)[0].split("#row", 1)[0]),
            "id": row["qid"],
            "via": "qid",
            "fields": {
                "source": origin.source,
                "question": summarise_value(origin.question, {}),
                "answer": origin.answer,
                "image_sha256": origin.image_sha256,
            },
        }
    return {
        "what": origin.kind,
        "uri": redact(row["source"]),
        "id": row["source_ref"],
        "via": "source_ref",
        "fields": {
            "image": origin.image_uri or "(bytes in the record)",
            "image_sha256": origin.image_sha256,
        },
    }


def _fingerprint_check(parent: ParentRef, current: str) -> Check:
    same = current == parent.fingerprint
    return Check(
        name=f"parent {parent.uri}",
        ok=same,
        detail=f"fingerprint {parent.fingerprint} unchanged"
        if same
        else f"fingerprint mismatch: recorded {parent.fingerprint}, now {current}: the parent "
        "changed since this dataset was made",
    )


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    value = row.get("metadata")
    if isinstance(value, str):
        try:
            value = json.loads(value or "{}")
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _local_model(named: str) -> str | None:
    """The local folder of a model as an evaluation named it (a path, or a tiny model
    already built); None for hub ids and published models (not fetched here)."""
    from adamllm_core.models import TINY_PREFIX, tiny_models_dir

    if named.startswith(TINY_PREFIX):
        folder = tiny_models_dir() / named[len(TINY_PREFIX) :]
        return str(folder) if folder.is_dir() else None
    if "://" in named:
        return None
    return named if Path(named).is_dir() else None


def _source_record(
    row: dict[str, Any], parent: ParentRef, manifest: Manifest
) -> tuple[Origin | None, list[Check]]:
    """The pair's record read again through the importer that ingested it (the pairs'
    own source settings): its image file's bytes and its caption against the pair's."""
    from adamllm_core.importers import open_source
    from adamllm_core.ingest import IngestConfig
    from adamllm_core.text import clean_caption

    try:
        config = IngestConfig.model_validate(manifest.config)
    except ValidationError as error:
        return None, [Check(name="ingest settings", ok=None, detail=f"not readable here: {error}")]
    importer = open_source(row["source"], config.source)
    checks = [_fingerprint_check(parent, importer.fingerprint())]
    checks[0].name = f"source {parent.uri}"
    record = next((r for r in importer.records() if r.source_ref == row["source_ref"]), None)
    if record is None or record.error is not None:
        why = "is not in the source now" if record is None else f"is refused: {record.error}"
        checks.append(Check(name=f"record {row['source_ref']}", ok=False, detail=why))
        return None, checks
    data = record.image_bytes if record.image_bytes is not None else read_bytes(record.image_uri)
    digest = hashlib.sha256(data).hexdigest()
    checks.append(
        Check(
            name="image bytes",
            ok=digest == row["image_sha256"],
            detail=f"{redact(record.image_uri or row['source_ref'])}: sha256 {digest}"
            + (
                " as recorded"
                if digest == row["image_sha256"]
                else f", recorded {row['image_sha256']}"
            ),
        )
    )
    position = _metadata(row).get("caption_index", 0)
    raw = record.captions[position] if position < len(record.captions) else None
    try:
        cleaned = clean_caption(raw, config.caption).text
    except Rejected as error:
        cleaned = None
        checks.append(Check(name="caption", ok=False, detail=f"refused now: {error}"))
    else:
        checks.append(
            Check(
                name="caption",
                ok=cleaned == row["caption"],
                detail="the source's caption is the pair's"
                if cleaned == row["caption"]
                else f"the source's caption differs: {summarise_value(cleaned, {})!r}",
            )
        )
    checks.append(
        Check(
            name="pair id",
            ok=pair_id(row["image_sha256"], row["caption"]) == row["id"],
            detail="sha256 of the image's sha256, a NUL and the caption",
        )
    )
    origin = Origin(
        kind="source record",
        source=f"{redact(row['source'])} {row['source_ref']}",
        image_uri=redact(record.image_uri) if record.image_uri else None,
        image_sha256=digest,
        image_bytes=len(data),
        caption=row["caption"],
        source_caption=raw if isinstance(raw, str) else None,
        verified=all(c.ok for c in checks[1:]),
        image=data,
    )
    return origin, checks


def _benchmark_root(parent: ParentRef, source: str) -> tuple[str, str]:
    """Where the benchmark is now, and its listing fingerprint there: the path the
    evaluation recorded, or (when that was relative to another working folder) the folder
    of the question's file or one above it whose listing is the one recorded."""
    candidates = [parent.uri]
    if "://" not in parent.uri and not Path(parent.uri).is_absolute():
        file = source.split("#row", 1)[0]
        file = file.rsplit(":", 1)[0] if file.rsplit(":", 1)[-1].isdigit() else file
        candidates += [str(p) for p in list(Path(file).parents)[:3]]
    first = None
    for candidate in candidates:
        fs, path = filesystem(candidate)
        if not fs.exists(path):
            continue
        now = listing_fingerprint(candidate)
        if now == parent.fingerprint:
            return candidate, now
        first = first or (candidate, now)
    if first is None:
        raise FileNotFoundError(f"the benchmark {parent.uri} is not there")
    return first


def _benchmark_question(
    row: dict[str, Any], parent: ParentRef
) -> tuple[Origin | None, list[Check]]:
    """The question a prediction answers, found by qid in the benchmark files (one pass
    without images), then read again with its image alone."""
    from adamllm_core.evaluation.adapters import read_items

    root, now = _benchmark_root(parent, row["source"])
    checks = [_fingerprint_check(parent, now)]
    checks[0].name = f"benchmark {parent.uri}" + (f" (at {root})" if root != parent.uri else "")
    items: Iterator[Any] = read_items(row["benchmark"], root, images=False)
    position = next((i for i, item in enumerate(items) if item.qid == row["qid"]), None)
    if position is None:
        checks.append(
            Check(name=f"question {row['qid']}", ok=False, detail="not in the benchmark now")
        )
        return None, checks
    item = next(
        islice(
            read_items(row["benchmark"], root, images=lambda k: k == position),
            position,
            None,
        )
    )
    checks.append(
        Check(
            name="question source",
            ok=item.source == row["source"],
            detail=f"qid {item.qid} is at {item.source}"
            + (
                "" if item.source == row["source"] else f", the prediction recorded {row['source']}"
            ),
        )
    )
    origin = Origin(
        kind="benchmark question",
        source=item.source,
        image_sha256=hashlib.sha256(item.image).hexdigest(),
        image_bytes=len(item.image),
        question=item.question or item.prompt,
        answer=item.answer,
        verified=all(c.ok for c in checks),
        image=item.image,
    )
    return origin, checks


# --- walking forward ---------------------------------------------------------------------------


def forward(
    row_id: str, dataset: Dataset, datasets: list[Dataset], limit: int = FORWARD_ROWS
) -> list[ForwardRows]:
    """The rows made from row `row_id` of `dataset` among `datasets`: those descending from
    it by recorded fingerprint, parents before children, each read over its id and lineage
    columns (and the salient text), batch by batch, keeping only the matches."""
    start = dataset.manifest.fingerprint
    by_fingerprint = {d.manifest.fingerprint: d for d in datasets}
    depth: dict[str, int] = {start: 0}
    for _ in range(len(by_fingerprint)):  # longest path from the start: parents first
        changed = False
        for fingerprint, other in by_fingerprint.items():
            above = [depth[p.fingerprint] for p in other.manifest.parents if p.fingerprint in depth]
            if fingerprint != start and above and depth.get(fingerprint, 0) < max(above) + 1:
                depth[fingerprint] = max(above) + 1
                changed = True
        if not changed:
            break
    descendants = sorted(
        (by_fingerprint[f] for f in depth if f != start and f in by_fingerprint),
        key=lambda d: (depth[d.manifest.fingerprint], d.uri),
    )
    ids = {row_id}
    found = []
    for other in descendants:
        made: set[str] = set()
        for target, quarantine in ((other, False), (other.quarantine(), True)):
            if target is None:
                continue
            names = target.schema.arrow.names
            columns = (
                ["record_id"]
                if quarantine
                else [c for c in ("pair_id", "triplet_id") if c in names]
            )
            if not columns:
                continue
            matched, rows, row_ids = _matching(target, columns, ids, limit)
            made.update(row_ids if not quarantine else ())
            if matched:
                found.append(
                    ForwardRows(
                        uri=redact(other.uri),
                        schema_name=other.manifest.record_schema.name,
                        stage=other.manifest.stats.stage,
                        quarantine=quarantine,
                        matched=matched,
                        rows=rows,
                    )
                )
        ids |= made
    return found


def _shown_columns(dataset: Dataset, columns: list[str]) -> list[str]:
    arrow = dataset.schema.arrow
    names = SALIENT.get(dataset.manifest.record_schema.name, ())
    extra = [n for n in names if n in arrow.names and not pa.types.is_binary(arrow.field(n).type)]
    return list(
        dict.fromkeys(["id", *columns, *extra] if "id" in arrow.names else [*columns, *extra])
    )


def _batches_matching(
    dataset: Dataset, read: list[str], columns: list[str], ids: set[str]
) -> Iterator[pa.RecordBatch]:
    value_set = pa.array(sorted(ids), pa.string())
    for batch in dataset.iter_batches(read):
        mask = None
        for column in columns:
            hit = pc.fill_null(pc.is_in(batch.column(column), value_set=value_set), False)
            mask = hit if mask is None else pc.or_(mask, hit)
        selected = batch.filter(mask)
        if selected.num_rows:
            yield selected


def _matching(
    dataset: Dataset, columns: list[str], ids: set[str], limit: int
) -> tuple[int, list[dict[str, Any]], list[str]]:
    """How many rows of `dataset` name one of `ids` in `columns`, the first `limit` of
    them (shown), and the ids of all of them."""
    schema = dataset.manifest.record_schema.name
    matched, rows, row_ids = 0, [], []
    for batch in _batches_matching(dataset, _shown_columns(dataset, columns), columns, ids):
        matched += batch.num_rows
        if "id" in batch.schema.names:
            row_ids.extend(batch.column("id").to_pylist())
        for row in batch.to_pylist()[: max(0, limit - len(rows))]:
            shown = {"id": row["id"]} if "id" in row else {}
            shown.update(salient(schema, row))
            rows.append(shown)
    return matched, rows, row_ids


# --- the walk ----------------------------------------------------------------------------------


def lineage(
    row_id: str,
    uri: str,
    *,
    back: bool = True,
    forward_from: bool = True,
    run: str | None = None,
) -> Lineage:
    """The lineage of row `row_id` of the dataset at `uri` (or of whichever dataset under
    the folder `uri` holds it). `run`: the folder searched for rows made from it (default:
    the folder holding the row's dataset, e.g. OUT/<domain>/)."""
    dataset, row, also_in = _locate(row_id, uri)
    walk = _Walk()
    if back:
        walk.back(dataset, row)
    else:
        walk.row_node(dataset, row, via=None, child=None)
    searched = None
    rows_forward = None
    if forward_from:
        searched = normalise_uri(run) if run else dataset.uri.rsplit("/", 1)[0]
        rows_forward = forward(row["id"], dataset, finished_datasets(searched))
    problems = [
        " ".join(filter(None, [node.what, node.id, f"({node.uri}): {check.name}: {check.detail}"]))
        for node in walk.nodes
        for check in node.checks
        if check.ok is False
    ]
    problems += [
        f"origin {o.source}: not what the row recorded" for o in walk.origins if not o.verified
    ]
    return Lineage(
        id=row["id"],
        dataset=redact(dataset.uri),
        schema_name=dataset.manifest.record_schema.name,
        also_in=also_in,
        nodes=walk.nodes,
        origins=walk.origins,
        forward=rows_forward,
        searched=redact(searched) if searched else None,
        problems=problems,
    )


__all__ = [
    "Check",
    "ForwardRows",
    "Lineage",
    "LineageError",
    "LineageNode",
    "MadeBy",
    "Origin",
    "find_row",
    "forward",
    "lineage",
    "salient",
]
