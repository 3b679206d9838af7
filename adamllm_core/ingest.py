"""Ingest: a source of image-caption data becomes a `pairs` dataset and its quarantine.

Every input ends as exactly one pair row or one quarantine row with its reason
(`rows_in == rows_out + quarantined` in the stage stats); duplicates (same id) are kept
once and the rest quarantined as `duplicate`, pointing at the row they repeat.
"""

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import tee
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import Manifest, ParentRef, identity_hash
from adamllm_core.errors import Rejected
from adamllm_core.executor import (
    BatchInput,
    ProgressFn,
    Shard,
    ShardedExecutor,
    ShardOutput,
    StageOutput,
    ordered_map,
)
from adamllm_core.hashing import canonical_json, config_hash, pair_id
from adamllm_core.images import ImagePolicy, normalise_image
from adamllm_core.importers import Importer, RawRecord, SourceOptions, open_source
from adamllm_core.schemas import PAIRS, ImageCaptionPair, QuarantineRow
from adamllm_core.storage import filesystem, normalise_uri, protocol_of, redact
from adamllm_core.text import CaptionPolicy, clean_caption
from adamllm_core.version import code_version

STAGE = "ingest"


class IngestConfig(BaseModel):
    """Everything that decides what ingest produces (plus `workers`, which does not)."""

    model_config = ConfigDict(extra="forbid")

    domain: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]*$", description="e.g. biomed, food, remote-sensing"
    )
    source: SourceOptions = Field(
        default_factory=SourceOptions,
        title="Source",
        description="how the source is read: format, image and caption fields",
    )
    image: ImagePolicy = Field(
        default_factory=ImagePolicy, title="Image", description="what an image must be to enter"
    )
    caption: CaptionPolicy = Field(
        default_factory=CaptionPolicy, title="Caption", description="how captions are cleaned"
    )
    rows_per_shard: int = Field(default=256, gt=0, description="input records per Parquet shard")
    workers: int = Field(
        default=1, ge=1, description="decoding processes; does not change the output"
    )

    def output_config(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"workers"})

    @property
    def hash(self) -> str:
        return config_hash(self.output_config())


@dataclass
class Outcome:
    """What one candidate pair became: a pair, or a rejection."""

    pair: ImageCaptionPair | None = None
    rejection: Rejected | None = None
    caption: Any = None
    image_sha256: str | None = None
    record_id: str | None = None
    counters: Counter[str] = field(default_factory=Counter)


def process_record(record: RawRecord, config: IngestConfig, source: str) -> list[Outcome]:
    """Read, check and normalise one record's image and captions (runs in worker processes)."""
    if record.error is not None:
        return [Outcome(rejection=record.error)]
    caption_hint = record.captions[0] if record.captions else None
    try:
        data = (
            record.image_bytes
            if record.image_bytes is not None
            else _read_image(record.image_uri or "", config.image.max_bytes)
        )
        image = normalise_image(data, config.image)
    except Rejected as rejected:
        return [Outcome(rejection=rejected, caption=caption_hint)]

    counters: Counter[str] = Counter()
    metadata = dict(record.metadata)
    if image.changes:
        counters["images_normalised"] += 1
        metadata["image_normalisation"] = {
            "source_format": image.source_format,
            "source_mode": image.source_mode,
            "changes": image.changes,
        }

    def make_pair(caption: str, extra: dict[str, Any]) -> ImageCaptionPair:
        return ImageCaptionPair(
            id=pair_id(image.source_sha256, caption),
            image=image.data,
            image_format=image.format,
            width=image.width,
            height=image.height,
            image_sha256=image.source_sha256,
            caption=caption,
            domain=config.domain,
            source=source,
            source_ref=record.source_ref,
            metadata={**metadata, **extra},
        )

    outcomes: list[Outcome] = []
    first_rejection: Rejected | None = None
    for position, raw_caption in enumerate(record.captions):
        try:
            cleaned = clean_caption(raw_caption, config.caption)
        except Rejected as rejected:
            if config.source.captions == "all":
                outcomes.append(
                    Outcome(
                        rejection=rejected, caption=raw_caption, image_sha256=image.source_sha256
                    )
                )
            first_rejection = first_rejection or rejected
            continue
        extra: dict[str, Any] = {}
        if cleaned.removed_tokens:
            extra["caption_removed_tokens"] = list(cleaned.removed_tokens)
        if len(record.captions) > 1:
            extra["caption_index"] = position
            if config.source.captions == "first":
                extra["other_captions"] = [
                    c for i, c in enumerate(record.captions) if i != position
                ]
        pair = make_pair(cleaned.text, extra)
        outcome = Outcome(
            pair=pair, caption=raw_caption, image_sha256=image.source_sha256, record_id=pair.id
        )
        outcome.counters.update(counters)
        if cleaned.removed_tokens:
            outcome.counters["captions_neutralised"] += 1
        outcomes.append(outcome)
        if config.source.captions == "first":
            return outcomes
    if not outcomes:
        assert first_rejection is not None  # captions is never empty: importers reject that
        return [
            Outcome(
                rejection=first_rejection, caption=caption_hint, image_sha256=image.source_sha256
            )
        ]
    return outcomes


def _read_image(uri: str, max_bytes: int) -> bytes:
    try:
        if protocol_of(uri) == "file":  # the OS directly: fsspec's per-call cost is per image
            return _read_local_image(uri.removeprefix("file://"), max_bytes)
        # Object storage: one ranged GET per image (no listing or HEAD first), so a file
        # over max_bytes is never read past it; a folder is told apart on the error path.
        fs, path = filesystem(uri)
        try:
            data = fs.cat_file(path, start=0, end=max_bytes + 1)
        except (FileNotFoundError, IsADirectoryError):
            if fs.isdir(path):
                raise Rejected(
                    "missing_image", f"{redact(uri)} is a folder, not an image file"
                ) from None
            raise FileNotFoundError(uri) from None
        except OSError:
            if fs.size(path) == 0:  # S3 answers a ranged GET of an empty object with 416
                return b""
            raise
        if len(data) > max_bytes:
            size = fs.size(path)
            raise Rejected("too_large", f"{redact(uri)}: {size} bytes > max_bytes {max_bytes}")
        return data
    except FileNotFoundError:
        raise Rejected("missing_image", f"{redact(uri)} does not exist") from None
    except PermissionError as error:
        raise Rejected("unreadable_image", f"{redact(uri)}: {error.strerror or error}") from None
    except OSError as error:
        if protocol_of(uri) != "file":
            # Object storage: after the client's own retries a 503 SlowDown or a timeout is
            # still transient; it fails the shard (a re-run retries it), never a row.
            raise
        raise Rejected("unreadable_image", f"{redact(uri)}: {error}") from None


def _read_local_image(path: str, max_bytes: int) -> bytes:
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except IsADirectoryError:
        raise Rejected("missing_image", f"{path} is a folder, not an image file") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:  # before reading it
            raise Rejected("too_large", f"{path}: {size} bytes > max_bytes {max_bytes}")
        return handle.read()


def _quarantine_row(
    record: RawRecord, outcome: Outcome, duplicate_of: str | None = None
) -> QuarantineRow:
    rejection = outcome.rejection or Rejected(
        "duplicate", f"same image and caption as row {duplicate_of}"
    )
    caption = outcome.caption if isinstance(outcome.caption, str) else None
    return QuarantineRow.of(
        rejection,
        stage=STAGE,
        input_index=record.index,
        source_ref=record.source_ref,
        record_id=outcome.record_id,
        duplicate_of=duplicate_of,
        image_sha256=outcome.image_sha256,
        caption=caption,
        record=canonical_json(record.raw) if record.raw is not None else None,
    )


def _process_wanted(
    record: RawRecord | None, config: IngestConfig, source: str
) -> list[Outcome] | None:
    """A record's outcomes; None for None (a record of a shard already done: not read)."""
    return None if record is None else process_record(record, config, source)


def _open(source_uri: str, config: IngestConfig) -> tuple[Importer, ParentRef]:
    importer = open_source(source_uri, config.source)
    return importer, ParentRef(
        uri=redact(source_uri), fingerprint=importer.fingerprint(), kind="source"
    )


def ingest_identity(source: str, config: IngestConfig) -> str:
    """The identity an ingest of `source` with `config` would produce (for cache keys)."""
    _, parent = _open(normalise_uri(source), config)
    return identity_hash(PAIRS, [parent], config.hash, code_version(__name__))


def ingest(
    source: str,
    out: str,
    config: IngestConfig,
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Manifest:
    """Ingest `source` into a `pairs` dataset at `out`; resumes an interrupted run, no-op when done."""
    source_uri = normalise_uri(source)
    importer, parent = _open(source_uri, config)
    executor = ShardedExecutor(
        stage=STAGE,
        outputs={"pairs": StageOutput(out, PAIRS)},
        parents=[parent],
        config=config.output_config(),
        code=code_version(__name__),
        overwrite=overwrite,
    )
    if (finished := executor.finished()) is not None:
        return finished["pairs"]
    seen: set[str] = set()  # pair ids kept so far: a repeat anywhere is a duplicate
    process = partial(_process_wanted, config=config, source=redact(source_uri))

    def outcomes(wanted: Callable[[int], bool]) -> Iterator[tuple[RawRecord, Any]]:
        """Each record with its outcomes, decoded by the workers ahead of the shard being
        written (in input order)."""
        items = ((record, wanted(position)) for position, record in enumerate(importer.records()))
        # tee holds only the records the workers are ahead by (ordered_map bounds that)
        to_workers, to_rows = tee(items)
        return zip(
            (record for record, _ in to_rows),
            # a record of a shard already done goes to the workers as nothing to decode
            ordered_map(
                process,
                (record if wanted else None for record, wanted in to_workers),
                workers=config.workers,
            ),
            strict=True,
        )

    def process_shard(chunk: list[tuple[RawRecord, Any]], shard: Shard) -> ShardOutput:
        output = ShardOutput(rows={"pairs": []}, counters=Counter(records_in=len(chunk)))
        for record, record_outcomes in chunk:
            for outcome in record_outcomes:
                output.counters.update(outcome.counters)
                if outcome.pair is None:
                    output.quarantine.append(_quarantine_row(record, outcome))
                elif outcome.pair.id in seen:
                    output.counters["duplicates"] += 1
                    output.quarantine.append(
                        _quarantine_row(record, outcome, duplicate_of=outcome.pair.id)
                    )
                else:
                    seen.add(outcome.pair.id)
                    output.rows["pairs"].append(outcome.pair)
        output.rows_in = len(output.rows["pairs"]) + len(output.quarantine)
        return output

    manifests = executor.execute(
        BatchInput(
            outcomes,
            config.rows_per_shard,
            total=importer.count(),
            name=redact(source_uri),
        ),
        process_shard,
        progress=progress,
        on_resume=lambda resumed: seen.update(resumed.done_column("pairs", "id")),
    )
    return manifests["pairs"]
