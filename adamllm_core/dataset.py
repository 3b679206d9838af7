"""Datasets on object storage: Parquet shards plus a manifest written last.

Layout of a finished dataset at URI:

    URI/part-00000-<id>.parquet ...  shards (<id>: the writer's identity, 12 hex digits)
    URI/_quarantine/<id>/            rejected rows (a dataset of schema `quarantine`), if any
    URI/manifest.json                the commit: written last; without it, unfinished

While a stage runs, each shard is written once where it stays (atomically, with a
completion marker under URI/_work/ after it), so an interrupted writer resumes shard by
shard, a commit copies nothing, and a replaced dataset stays whole until the new manifest
is written (see DatasetWriter). Readers go through the manifest."""

import bisect
import hashlib
import io
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from adamllm_core.hashing import canonical_json, sha256_hex
from adamllm_core.lease import LEASE_NAME, LeaseHeldError, WriterLease
from adamllm_core.schemas import QUARANTINE, RecordSchema, get_schema
from adamllm_core.storage import (
    STAGING_SUFFIX,
    filesystem,
    join,
    normalise_uri,
    redact,
    write_bytes_atomic,
)
from adamllm_core.version import CODE_VERSION

MANIFEST_NAME = "manifest.json"
WORK_DIR = "_work"
PLAN_NAME = "plan.json"
MARKER_DIR = "done"
QUARANTINE_DIR = "_quarantine"
DATASET_FORMAT = "adamllm-dataset/1"
# Image rows are large: small row groups keep a reader's memory bounded.
ROW_GROUP_SIZE = 64


class DatasetError(Exception):
    """Base of the data plane's errors."""


class DatasetNotFinishedError(DatasetError):
    pass


class DatasetConflictError(DatasetError):
    pass


class ShardInfo(BaseModel):
    path: str = Field(description="relative to the dataset URI")
    rows: int
    sha256: str
    bytes: int


class ParentRef(BaseModel):
    # credentials in a URI (s3://KEY:SECRET@bucket) never reach a manifest
    uri: Annotated[str, AfterValidator(redact)]
    fingerprint: str = Field(
        description="the parent manifest's fingerprint, or a source listing hash"
    )
    kind: Literal["dataset", "source"] = "dataset"


class SchemaRef(BaseModel):
    name: str
    version: int


class QuarantineInfo(BaseModel):
    path: str = QUARANTINE_DIR
    uri: str
    rows: int
    reasons: dict[str, int]
    fingerprint: str | None = Field(
        default=None,
        description="the quarantine manifest's fingerprint, so the dataset's covers its rows",
    )


class StageStats(BaseModel):
    """Per-stage counts: every input ends as an output row or a quarantine row."""

    stage: str
    rows_in: int = 0
    rows_out: int = 0
    quarantined: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    counters: dict[str, int] = Field(default_factory=dict)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    format: str = DATASET_FORMAT
    record_schema: SchemaRef = Field(alias="schema")
    rows: int
    shards: list[ShardInfo]
    parents: list[ParentRef]
    config: dict[str, Any]
    config_hash: str
    code_version: str
    created_at: datetime
    quarantine: QuarantineInfo | None = None
    stats: StageStats
    fingerprint: str = Field(
        description="hash of everything but created_at and timings: equal for equal content"
    )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True)

    def shard_uris(self, uri: str) -> list[str]:
        return [join(uri, s.path) for s in self.shards]


def identity_hash(
    schema: RecordSchema, parents: list[ParentRef], config_hash: str, code_version: str
) -> str:
    """What a dataset is made from: equal identities must give equal content."""
    return sha256_hex(
        canonical_json(
            {
                "schema": [schema.name, schema.version],
                "parents": [p.model_dump(mode="json") for p in parents],
                "config_hash": config_hash,
                "code_version": code_version,
            }
        )
    )[:32]


def _fingerprint(identity: str, shards: list[ShardInfo], quarantine: QuarantineInfo | None) -> str:
    return sha256_hex(
        canonical_json(
            {
                "identity": identity,
                "shards": [[s.path, s.rows, s.sha256] for s in shards],
                "quarantine": _quarantine_part(quarantine),
            }
        )
    )[:32]


def _quarantine_part(quarantine: QuarantineInfo | None) -> int | list[Any]:
    # Datasets without a quarantine, and those written before the quarantine's own
    # fingerprint was recorded, keep the fingerprint they always had.
    if quarantine is None:
        return 0
    if quarantine.fingerprint is None:
        return quarantine.rows
    return [quarantine.rows, quarantine.fingerprint]


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    # No timestamps or writer-specific paths inside: equal tables give equal bytes.
    # Binary columns hold images, already compressed: zstd over them costs time for ~nothing.
    # Nor do dictionaries or min/max statistics of image bytes help any reader.
    binary = {f.name for f in table.schema if pa.types.is_binary(f.type)}
    others = [f.name for f in table.schema if f.name not in binary]
    pq.write_table(
        table,
        sink,
        row_group_size=ROW_GROUP_SIZE,
        compression={name: "none" if name in binary else "zstd" for name in table.schema.names},
        use_dictionary=others,
        write_statistics=others,
    )
    return sink.getvalue()


class DatasetRef(BaseModel):
    """A pointer to a finished dataset, small enough to pass between tasks and flows."""

    uri: str
    schema_name: str
    fingerprint: str
    rows: int
    quarantined: int = 0

    @classmethod
    def of(cls, uri: str, manifest: Manifest) -> "DatasetRef":
        return cls(
            uri=redact(normalise_uri(uri)),
            schema_name=manifest.record_schema.name,
            fingerprint=manifest.fingerprint,
            rows=manifest.rows,
            quarantined=manifest.quarantine.rows if manifest.quarantine else 0,
        )


def manifest_identity(manifest: Manifest) -> str:
    """The identity a finished dataset's manifest records it was made with."""
    schema = get_schema(manifest.record_schema.name)
    return identity_hash(schema, manifest.parents, manifest.config_hash, manifest.code_version)


def existing_identity(uri: str) -> str | None:
    """The identity of the finished dataset at `uri`, or None when there is none."""
    try:
        return manifest_identity(read_manifest(uri))
    except DatasetError:
        return None


# --- reading -----------------------------------------------------------------------------


def manifest_exists(uri: str) -> bool:
    fs, path = filesystem(normalise_uri(uri))
    return fs.exists(join(path, MANIFEST_NAME))


def read_manifest(uri: str) -> Manifest:
    """The manifest of a finished dataset; refuses unfinished or foreign directories."""
    uri = normalise_uri(uri)
    fs, path = filesystem(uri)
    manifest_path = join(path, MANIFEST_NAME)
    if not fs.exists(manifest_path):
        if fs.exists(join(path, WORK_DIR)):
            raise DatasetNotFinishedError(
                f"{redact(uri)} is unfinished: it has no {MANIFEST_NAME} (a stage writing it was "
                "interrupted). Re-run that stage with the same output to resume it."
            )
        raise DatasetNotFinishedError(
            f"{redact(uri)} is not a dataset: no {MANIFEST_NAME} there. "
            "Pass the output URI of a finished stage."
        )
    try:
        return Manifest.model_validate_json(fs.cat_file(manifest_path))
    except ValueError as error:
        raise DatasetError(
            f"{redact(uri)}/{MANIFEST_NAME} is not a valid manifest: {error}"
        ) from error


class Dataset:
    """A finished dataset: its manifest and bounded-memory readers over its shards."""

    def __init__(self, uri: str):
        self.uri = normalise_uri(uri)
        self.manifest = read_manifest(self.uri)
        try:
            self.schema = get_schema(self.manifest.record_schema.name)
        except KeyError as error:  # written by a newer version of this code
            raise DatasetError(f"{redact(self.uri)}: {error.args[0]}") from None
        self._fs, self._path = filesystem(self.uri)

    def __len__(self) -> int:
        return self.manifest.rows

    def shard_uris(self) -> list[str]:
        """The published shards' URIs, for readers of their own (polars, duckdb, pyarrow)."""
        return self.manifest.shard_uris(self.uri)

    def open_shard(self, index: int) -> Any:
        """Shard `index`'s Parquet file, opened for reading (a context manager)."""
        return self._fs.open(join(self._path, self.manifest.shards[index].path), "rb")

    def iter_batches(
        self, columns: list[str] | None = None, batch_size: int = ROW_GROUP_SIZE
    ) -> Iterator[pa.RecordBatch]:
        for index in range(len(self.manifest.shards)):
            yield from self.shard_batches(index, columns, batch_size)

    def shard_batches(
        self, index: int, columns: list[str] | None = None, batch_size: int = ROW_GROUP_SIZE
    ) -> Iterator[pa.RecordBatch]:
        """Shard `index`'s rows, `batch_size` at a time."""
        with self.open_shard(index) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_size, columns=columns)

    def read_shard(self, index: int, columns: list[str] | None = None) -> list[dict[str, Any]]:
        with self.open_shard(index) as handle:
            return pq.read_table(handle, columns=columns).to_pylist()

    def iter_rows(self, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        for batch in self.iter_batches(columns):
            yield from batch.to_pylist()

    def to_table(self, columns: list[str] | None = None) -> pa.Table:
        batches = list(self.iter_batches(columns))
        if not batches:
            schema = self.schema.arrow
            if columns:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        return pa.Table.from_batches(batches)

    def quarantine(self) -> "Dataset | None":
        if self.manifest.quarantine is None:
            return None
        return Dataset(join(self.uri, self.manifest.quarantine.path))

    def verify(self) -> None:
        """Re-hash every shard against the manifest (streaming each file), check the
        manifest's fingerprint against its content, then the same for the quarantine;
        raises DatasetError naming the first part that is missing or differs."""
        for shard in self.manifest.shards:
            where = f"{redact(self.uri)}/{shard.path}"
            try:
                with self._fs.open(join(self._path, shard.path), "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
            except FileNotFoundError:
                raise DatasetError(f"{where}: shard listed in the manifest is missing") from None
            if digest != shard.sha256:
                raise DatasetError(f"{where}: sha256 differs from manifest")
        manifest = self.manifest
        if _fingerprint(manifest_identity(manifest), manifest.shards, manifest.quarantine) != (
            manifest.fingerprint
        ):
            raise DatasetError(f"{redact(self.uri)}: manifest fingerprint differs from its content")
        try:
            quarantine = self.quarantine()
        except DatasetError as error:
            raise DatasetError(
                f"{redact(self.uri)}: its quarantine cannot be read ({error})"
            ) from None
        if quarantine is not None:
            recorded = self.manifest.quarantine.fingerprint
            if recorded is not None and recorded != quarantine.manifest.fingerprint:
                raise DatasetError(
                    f"{redact(quarantine.uri)}: quarantine manifest differs from the one recorded"
                )
            quarantine.verify()


class RowGroupReader:
    """Rows of a finished dataset by index, read one Parquet row group at a time (the
    smallest piece a Parquet reader fetches alone), keeping the last `keep` groups."""

    def __init__(self, dataset: Dataset, columns: list[str] | None = None, keep: int = 4):
        self.dataset = dataset
        self.columns = columns
        self.keep = max(1, keep)
        self._starts = [0]
        for shard in dataset.manifest.shards:
            self._starts.append(self._starts[-1] + shard.rows)
        self._footers: dict[int, tuple[pq.FileMetaData, list[int]]] = {}
        self._groups: OrderedDict[tuple[int, int], list[dict[str, Any]]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:  # sent to a spawned process: no caches
        return {**self.__dict__, "_footers": {}, "_groups": OrderedDict()}

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row within it) of the dataset's row `index`."""
        if not 0 <= index < self._starts[-1]:
            raise IndexError(f"row {index} of a dataset of {self._starts[-1]} rows")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def row(self, shard: int, position: int) -> dict[str, Any]:
        footer, group_starts = self._footer(shard)
        group = bisect.bisect_right(group_starts, position) - 1
        key = (shard, group)
        rows = self._groups.get(key)
        if rows is None:
            with self.dataset.open_shard(shard) as handle:
                table = pq.ParquetFile(handle, metadata=footer).read_row_group(
                    group, columns=self.columns
                )
            rows = self._groups[key] = table.to_pylist()
            while len(self._groups) > self.keep:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return dict(rows[position - group_starts[group]])

    def _footer(self, shard: int) -> tuple[pq.FileMetaData, list[int]]:
        if shard not in self._footers:
            with self.dataset.open_shard(shard) as handle:
                footer = pq.ParquetFile(handle).metadata
            starts = [0]
            for group in range(footer.num_row_groups):
                starts.append(starts[-1] + footer.row_group(group).num_rows)
            self._footers[shard] = (footer, starts[:-1])
        return self._footers[shard]


# --- writing -----------------------------------------------------------------------------


class ShardMarker(BaseModel):
    """Written after a shard's files: its presence means the shard is complete."""

    index: int
    rows: ShardInfo
    quarantine: ShardInfo | None
    quarantine_reasons: dict[str, int]
    rows_in: int
    counters: dict[str, int]
    seconds: float
    identity: str = Field(default="", description="the writer's identity: no other adopts it")


class DatasetWriter:
    """Writes one dataset shard by shard, resumable, published by a final manifest.

    Usage: `prepare()` returns the finished dataset when an equal one is already there
    (`finished()` asks without touching anything); otherwise `write_shard(k, ...)` for
    every shard not `is_done(k)`, then `commit()`. Stages use it through the executor.

    Shards are written where they stay (no copy at commit: on object storage a move is a
    copy of every byte), named with the writer's identity (`part-00000-<id12>.parquet`;
    quarantine under `_quarantine/<id12>/`), so a replacement's shards sit beside the
    finished dataset's until its manifest, written last and atomically, switches readers
    over; the old shards are removed after. A reader through the manifest (`Dataset`,
    `adamllm inspect`) sees the old complete dataset or the new complete one, never a mix
    or a gap; a bare `*.parquet` glob also sees a running writer's unpublished shards.
    """

    def __init__(
        self,
        uri: str,
        *,
        schema: RecordSchema,
        stage: str,
        parents: list[ParentRef],
        config: dict[str, Any],
        config_hash: str,
        code_version: str = CODE_VERSION,
        overwrite: bool = False,
        lease: bool = True,
    ):
        self.uri = normalise_uri(uri)
        self.schema = schema
        self.stage = stage
        self.parents = parents
        self.config = config
        self.config_hash = config_hash
        self.code_version = code_version
        self.overwrite = overwrite
        self.identity = identity_hash(schema, parents, config_hash, code_version)
        self._fs, self._path = filesystem(self.uri)
        self._work = join(self._path, WORK_DIR)
        self._tag = self.identity[:12]
        self._markers: dict[int, ShardMarker] = {}
        # One writer per output (overlapping refreshes, a retry while the first still runs).
        # Engine-pool workers write without one: the driver that hands them shards holds it.
        self._lease = WriterLease(self.uri) if lease else None

    # -- state --

    def finished(self) -> Manifest | None:
        """The finished dataset at the URI when it has this writer's identity; None when
        there is none, or a different one this writer may replace (overwrite). Reads only."""
        manifest = self._finished_manifest()
        if manifest is None:
            return None
        if self._identity_of(manifest) == self.identity:
            return manifest
        if not self.overwrite:
            raise DatasetConflictError(
                f"{redact(self.uri)} already holds a different {manifest.record_schema.name} "
                f"dataset (config {manifest.config_hash}, code {manifest.code_version}; "
                f"asked for config {self.config_hash}, code {self.code_version}). "
                "Write to another output, or pass overwrite=True (--overwrite) to replace it."
            )
        # Replaced, not deleted: it stays readable until this writer's commit.
        return None

    def prepare(self) -> Manifest | None:
        """Ready to write: take the lease and prepare the work area (resuming the work of
        an interrupted writer of this identity). Returns the finished dataset instead when
        an identical one is there (removing what a run killed after its commit left)."""
        manifest = self.finished()
        if manifest is not None:
            if self._fs.exists(self._work):
                self._clean_up_after(manifest)
            return manifest
        if self._lease is not None:
            self._lease.acquire()  # raises, naming the holder, when another run writes here
        self._prepare_work_area()
        return None

    def attach(self) -> None:
        """For a data-parallel rank: use the work area its parent prepared for this
        identity; never prepares, takes a lease or deletes."""
        plan = self._read_plan()
        if plan is None or plan.get("identity") != self.identity:
            raise DatasetError(
                f"{redact(self.uri)}: no work area prepared for identity {self.identity[:12]};"
                " the pool's driver prepares it before its workers start"
            )
        self._load_markers()

    def _read_plan(self) -> dict[str, Any] | None:
        plan_path = join(self._work, PLAN_NAME)
        if not self._fs.exists(plan_path):
            return None
        return json.loads(self._fs.cat_file(plan_path))

    def give_back_lease(self) -> None:
        """Stop writing here: the lease is released (the work area stays, to resume). Never
        raises, nor waits long: when storage cannot be reached, the lease expires."""
        if self._lease is not None:
            self._lease.give_back()

    def _clean_up_after(self, manifest: Manifest) -> None:
        if self._lease is None:
            return
        try:
            self._lease.acquire()
        except LeaseHeldError:
            return  # another run is writing here: its files are not leftovers
        self._collect_garbage(manifest)
        self._lease.release()

    def _identity_of(self, manifest: Manifest) -> str:
        schema = get_schema(manifest.record_schema.name)
        return identity_hash(schema, manifest.parents, manifest.config_hash, manifest.code_version)

    def _prepare_work_area(self) -> None:
        plan = self._read_plan()
        if plan is not None and plan.get("identity") == self.identity:
            self._load_markers()
            return
        finished = self._finished_manifest()
        if plan is not None:
            # Work left by a run with other inputs, config or code: none of it is reusable
            # (the finished dataset's own shards, if any, are kept until the commit).
            self._collect_garbage(finished)
        if finished is None and self._fs.exists(self._path):
            self._check_foreign_files()
        write_bytes_atomic(
            self._fs,
            join(self._work, PLAN_NAME),
            canonical_json({"identity": self.identity, "stage": self.stage}).encode(),
        )

    def _check_foreign_files(self) -> None:
        """Refuse a folder holding what is not a dataset's, or clear it with overwrite."""
        entries = [
            p
            for p in self._fs.ls(self._path, detail=False)
            if not p.rstrip("/").endswith("/" + LEASE_NAME)  # this writer's own lease
        ]
        if self.overwrite:
            for path in entries:
                self._fs.rm(path, recursive=True)
            return
        leftovers = [
            p
            for p in entries
            if not p.rstrip("/").endswith(("/" + WORK_DIR, "/" + QUARANTINE_DIR))
            and not _is_shard(p)  # a dataset's own files (an interrupted writer's)
        ]
        if leftovers:
            raise DatasetConflictError(
                f"{redact(self.uri)} exists and holds files that are not a dataset "
                f"({len(leftovers)} entries, e.g. {leftovers[0].rsplit('/', 1)[-1]}). "
                "Choose an empty or new output, or pass overwrite=True (--overwrite)."
            )

    def _finished_manifest(self) -> Manifest | None:
        if not self._fs.exists(join(self._path, MANIFEST_NAME)):
            return None
        return read_manifest(self.uri)

    def _collect_garbage(self, keep: Manifest | None) -> None:
        """Remove the work area and every shard `keep` (the finished manifest) does not
        name: an unfinished or replaced run's files. Runs after a manifest is written."""
        if self._fs.exists(self._work):
            self._fs.rm(self._work, recursive=True)
        kept = {s.path for s in keep.shards} if keep else set()
        quarantine = keep.quarantine.path if keep and keep.quarantine else None
        for path in self._fs.ls(self._path, detail=False) if self._fs.exists(self._path) else []:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if (_is_shard(path) and name not in kept) or name.endswith(STAGING_SUFFIX):
                self._fs.rm(path)  # a staging file: a killed writer's, half written
            elif name == QUARANTINE_DIR and quarantine is None:
                self._fs.rm(path, recursive=True)
            elif name == QUARANTINE_DIR:
                for old in self._fs.ls(path, detail=False):
                    if f"{QUARANTINE_DIR}/{old.rstrip('/').rsplit('/', 1)[-1]}" != quarantine:
                        self._fs.rm(old, recursive=True)
                    else:  # the kept quarantine: only a killed writer's staging files go
                        for staged in self._fs.ls(old, detail=False):
                            if staged.endswith(STAGING_SUFFIX):
                                self._fs.rm(staged)

    def _load_markers(self) -> None:
        marker_dir = join(self._work, MARKER_DIR)
        if not self._fs.exists(marker_dir):
            return
        for path in self._fs.ls(marker_dir, detail=False):
            if path.endswith(".json") and not path.rsplit("/", 1)[-1].startswith("."):
                marker = ShardMarker.model_validate_json(self._fs.cat_file(path))
                if marker.identity == self.identity:  # never another writer's shard
                    self._markers[marker.index] = marker

    def is_done(self, index: int) -> bool:
        return index in self._markers

    @property
    def done_shards(self) -> list[int]:
        return sorted(self._markers)

    def done_column(self, column: str) -> Iterator[Any]:
        """Values of one column over the finished shards (to rebuild state on resume)."""
        for index in self.done_shards:
            with self._fs.open(join(self._path, self._markers[index].rows.path), "rb") as handle:
                table = pq.read_table(handle, columns=[column])
            yield from table.column(column).to_pylist()

    # -- shards --

    def write_shard(
        self,
        index: int,
        rows: pa.Table,
        quarantine: pa.Table,
        *,
        rows_in: int,
        counters: dict[str, int] | None = None,
        seconds: float = 0.0,
    ) -> ShardMarker:
        if not rows.schema.equals(self.schema.arrow, check_metadata=False):
            raise DatasetError(f"shard {index}: schema differs from {self.schema.name}")
        if self._lease is not None:
            self._lease.check()  # a writer whose lease was taken over writes nothing more
        name = f"part-{index:05d}-{self._tag}.parquet"
        rows_info = self._put(join(self._path, name), name, rows)
        quarantine_info = None
        reasons: Counter[str] = Counter()
        if quarantine.num_rows:
            quarantine_name = f"part-{index:05d}.parquet"
            quarantine_info = self._put(
                join(self._path, self._quarantine_path, quarantine_name),
                quarantine_name,
                quarantine,
            )
            reasons.update(quarantine.column("reason").to_pylist())
        marker = ShardMarker(
            index=index,
            rows=rows_info,
            quarantine=quarantine_info,
            quarantine_reasons=dict(sorted(reasons.items())),
            rows_in=rows_in,
            counters=counters or {},
            seconds=seconds,
            identity=self.identity,
        )
        write_bytes_atomic(
            self._fs,
            join(self._work, MARKER_DIR, f"{name}.json"),
            marker.model_dump_json().encode(),
        )
        self._markers[index] = marker
        return marker

    def _put(self, path: str, name: str, table: pa.Table) -> ShardInfo:
        data = table_to_parquet_bytes(table)
        write_bytes_atomic(self._fs, path, data)
        return ShardInfo(path=name, rows=table.num_rows, sha256=sha256_hex(data), bytes=len(data))

    # -- commit --

    def commit(
        self, n_shards: int, *, seconds: float | None = None, finish: bool = True
    ) -> Manifest:
        """Publish shards 0..n_shards-1 and write the manifest last. `finish=False` keeps
        the work area and the lease (a stage with several outputs removes them once every
        output is committed: `finish()`)."""
        missing = [k for k in range(n_shards) if k not in self._markers]
        if missing:
            raise DatasetError(
                f"cannot commit {redact(self.uri)}: shards {missing[:5]} not written"
            )
        markers = [self._markers[k] for k in range(n_shards)]
        shards = [m.rows for m in markers]
        quarantine_shards = [m.quarantine for m in markers if m.quarantine]
        reasons: Counter[str] = Counter()
        counters: Counter[str] = Counter()
        for m in markers:
            reasons.update(m.quarantine_reasons)
            counters.update(m.counters)
        quarantine_info = None
        if quarantine_shards:
            quarantine_uri = join(self.uri, self._quarantine_path)
            quarantine_info = QuarantineInfo(
                path=self._quarantine_path,
                uri=redact(quarantine_uri),
                rows=sum(s.rows for s in quarantine_shards),
                reasons=dict(sorted(reasons.items())),
            )
            quarantine_info.fingerprint = self._write_manifest(
                quarantine_uri,
                QUARANTINE,
                quarantine_shards,
                None,
                StageStats(
                    stage=self.stage, rows_in=quarantine_info.rows, rows_out=quarantine_info.rows
                ),
            ).fingerprint
        stats = StageStats(
            stage=self.stage,
            rows_in=sum(m.rows_in for m in markers),
            rows_out=sum(s.rows for s in shards),
            quarantined=dict(sorted(reasons.items())),
            seconds=round(seconds if seconds is not None else sum(m.seconds for m in markers), 3),
            counters=dict(sorted(counters.items())),
        )
        for info in shards:
            if not self._fs.exists(join(self._path, info.path)):
                raise DatasetError(f"shard {info.path} vanished from {redact(self.uri)}")
        if self._lease is not None:
            self._lease.check()
        # The switch: readers move from the replaced dataset (if any) to this one at once.
        manifest = self._write_manifest(self.uri, self.schema, shards, quarantine_info, stats)
        if finish:
            self.finish(manifest)
        return manifest

    def finish(self, manifest: Manifest) -> None:
        """After the commit: remove the work area and replaced shards, give the lease back."""
        self._collect_garbage(manifest)
        if self._lease is not None:
            self._lease.release()

    @property
    def _quarantine_path(self) -> str:
        return f"{QUARANTINE_DIR}/{self._tag}"

    def _write_manifest(
        self,
        uri: str,
        schema: RecordSchema,
        shards: list[ShardInfo],
        quarantine: QuarantineInfo | None,
        stats: StageStats,
    ) -> Manifest:
        identity = identity_hash(schema, self.parents, self.config_hash, self.code_version)
        manifest = Manifest(
            record_schema=SchemaRef(name=schema.name, version=schema.version),
            rows=sum(s.rows for s in shards),
            shards=shards,
            parents=self.parents,
            config=self.config,
            config_hash=self.config_hash,
            code_version=self.code_version,
            created_at=datetime.now(UTC),
            quarantine=quarantine,
            stats=stats,
            fingerprint=_fingerprint(identity, shards, quarantine),
        )
        fs, path = filesystem(uri)
        write_bytes_atomic(fs, join(path, MANIFEST_NAME), manifest.to_json().encode())
        return manifest


class WorkArea(BaseModel):
    """What an unfinished writer has left at a URI (for `inspect` and status): read only."""

    uri: str
    stage: str | None
    identity: str | None
    markers: list[ShardMarker]
    lease_holder: dict[str, Any] | None = Field(
        default=None, description="host and pid of the run holding the lease, if any"
    )


def read_work_area(uri: str, *, beside_manifest: bool = False) -> WorkArea | None:
    """The work area of an unfinished dataset at `uri`; None when finished or never begun.
    `beside_manifest`: also the work area of a replacement being written beside a finished
    dataset (its manifest is the old one's until the replacement commits)."""
    uri = normalise_uri(uri)
    fs, path = filesystem(uri)
    work = join(path, WORK_DIR)
    if not fs.exists(work) or (not beside_manifest and fs.exists(join(path, MANIFEST_NAME))):
        return None
    plan = {}
    if fs.exists(join(work, PLAN_NAME)):
        plan = json.loads(fs.cat_file(join(work, PLAN_NAME)))
    markers = []
    if fs.exists(join(work, MARKER_DIR)):
        markers = [
            ShardMarker.model_validate_json(fs.cat_file(p))
            for p in fs.ls(join(work, MARKER_DIR), detail=False)
            if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".")
        ]
    holder = WriterLease(uri).holder_now()
    return WorkArea(
        uri=redact(uri),
        stage=plan.get("stage"),
        identity=plan.get("identity"),
        markers=sorted(
            (m for m in markers if m.identity == plan.get("identity")), key=lambda m: m.index
        ),
        lease_holder={k: holder[k] for k in ("host", "pid") if k in holder} if holder else None,
    )


def _is_shard(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith("part-") and name.endswith(".parquet")


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
