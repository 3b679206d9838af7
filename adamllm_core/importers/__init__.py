"""Importers: turn a source (folder, annotation file, ShareGPT JSON, Parquet) into RawRecords.

`open_source(uri, options)` picks the importer; each yields records in a fixed order and
gives a fingerprint that changes when the source does.
"""

from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from adamllm_core.errors import ConfigError, Rejected
from adamllm_core.importers.base import (
    IMAGE_EXTENSIONS,
    SHAREGPT_TURN_FIELDS,
    Importer,
    RawRecord,
    SourceOptions,
    detect_caption_field,
    interpret_captioned,
    interpret_sharegpt,
)
from adamllm_core.importers.records import (
    RECORD_FILE_SUFFIXES,
    count_records,
    first_record,
    read_records,
    scan_record_file,
)
from adamllm_core.storage import filesystem, listing_fingerprint, normalise_uri, redact

# Annotation files looked for, in order, when the source is a folder.
ANNOTATION_NAMES = (
    "data.jsonl",
    "metadata.jsonl",
    "captions.jsonl",
    "metadata.csv",
    "data.csv",
    "captions.csv",
)

__all__ = ["Importer", "RawRecord", "SourceOptions", "open_source"]


class RecordFileImporter:
    """An annotation file (JSON Lines, JSON list, CSV/TSV) naming images and captions.

    Records are read as ShareGPT/LLaVA conversations when they carry `messages` or
    `conversations`, otherwise as (image, caption | captions) records.
    """

    def __init__(
        self, annotation_uri: str, options: SourceOptions, *, sharegpt: bool | None = None
    ):
        self.source = annotation_uri
        self.options = options
        self.base = (
            normalise_uri(options.image_root)
            if options.image_root
            else annotation_uri.rsplit("/", 1)[0]
        )
        first = first_record(annotation_uri)
        if first is None:
            raise ConfigError(f"{redact(annotation_uri)}: no records")
        detected = any(f in first for f in SHAREGPT_TURN_FIELDS)
        self.sharegpt = detected if sharegpt is None else sharegpt
        if self.sharegpt and not detected:
            raise ConfigError(
                f"{redact(annotation_uri)}: ShareGPT records need 'messages' or 'conversations'; "
                f"the first record has {sorted(first)}"
            )
        self.caption_field = (
            None if self.sharegpt else detect_caption_field(first, options, redact(annotation_uri))
        )

    def fingerprint(self) -> str:
        # the file's sha256 from the same streaming pass that counts its records
        return listing_fingerprint(self.base, bytes.fromhex(scan_record_file(self.source).sha256))

    def count(self) -> int:
        return count_records(self.source)

    def records(self) -> Iterator[RawRecord]:
        for index, (ref, record) in enumerate(read_records(self.source)):
            if isinstance(record, Rejected):
                yield RawRecord(index=index, source_ref=ref, error=record)
            elif self.sharegpt:
                yield interpret_sharegpt(index, ref, record, self.options, self.base)
            else:
                yield interpret_captioned(
                    index, ref, record, self.options, self.caption_field, self.base
                )


class SidecarImporter:
    """A folder of images, each with its caption in a same-named .txt file."""

    def __init__(self, folder: str, options: SourceOptions):
        self.source = folder
        self.options = options
        fs, path = filesystem(folder)
        self._listing = fs.find(path, detail=True)  # once: also the fingerprint's input
        files = sorted(self._listing)
        self._fs = fs
        texts = {f.rsplit(".", 1)[0]: f for f in files if f.lower().endswith(".txt")}
        self._pairs = [
            (f, texts.get(f.rsplit(".", 1)[0]))
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not self._pairs:
            raise ConfigError(
                f"{redact(folder)}: no annotation file ({', '.join(ANNOTATION_NAMES)}, or any "
                f"{'/'.join(RECORD_FILE_SUFFIXES)}) and no images with .txt captions"
            )
        self._root = path

    def fingerprint(self) -> str:
        return listing_fingerprint(self.source, listing=self._listing)

    def count(self) -> int:
        return len(self._pairs)

    def records(self) -> Iterator[RawRecord]:
        for index, (image_path, text_path) in enumerate(self._pairs):
            ref = image_path[len(self._root) :].lstrip("/")
            image_uri = self._fs.unstrip_protocol(image_path)
            if text_path is None:
                error = Rejected(
                    "missing_caption", f"no {ref.rsplit('.', 1)[0]}.txt beside the image"
                )
                yield RawRecord(index=index, source_ref=ref, raw={"image": ref}, error=error)
                continue
            raw_text = self._fs.cat_file(text_path)
            try:
                caption: Any = raw_text.decode("utf-8-sig")
            except UnicodeDecodeError:
                error = Rejected("bad_record", f"{ref}: caption file is not UTF-8")
                yield RawRecord(index=index, source_ref=ref, raw={"image": ref}, error=error)
                continue
            yield RawRecord(
                index=index,
                source_ref=ref,
                image_uri=image_uri,
                captions=(caption,),
                raw={"image": ref},
            )


class ParquetImporter:
    """Parquet files with an image column (binary, or Hugging Face's {bytes, path} struct)."""

    def __init__(self, uri: str, options: SourceOptions, batch_size: int = 64):
        self.source = uri
        self.options = options
        self.batch_size = batch_size
        fs, path = filesystem(uri)
        self._fs = fs
        self._listing = None
        if any(ch in path for ch in "*?["):
            files = sorted(fs.glob(path))
        elif fs.isdir(path):
            self._listing = fs.find(path, detail=True)  # once: also the fingerprint's input
            files = sorted(f for f in self._listing if f.endswith(".parquet"))
        else:
            files = [path]
        if not files:
            raise ConfigError(f"{redact(uri)}: no .parquet files")
        self._files = files
        self._root = path if fs.isdir(path) else path.rsplit("/", 1)[0]
        first = self._first_row()
        self.sharegpt = any(f in first for f in SHAREGPT_TURN_FIELDS)
        self.caption_field = (
            None if self.sharegpt else detect_caption_field(first, options, redact(uri))
        )

    def _first_row(self) -> dict[str, Any]:
        for file in self._files:
            with self._fs.open(file, "rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=1):
                    if batch.num_rows:
                        return batch.to_pylist()[0]
        raise ConfigError(f"{redact(self.source)}: the Parquet files hold no rows")

    def fingerprint(self) -> str:
        return listing_fingerprint(self._fs.unstrip_protocol(self._root), listing=self._listing)

    def count(self) -> int:
        total = 0
        for file in self._files:
            with self._fs.open(file, "rb") as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        return total

    def records(self) -> Iterator[RawRecord]:
        index = 0
        base = self.options.image_root or self._fs.unstrip_protocol(self._root)
        for file in self._files:
            name = file[len(self._root) :].lstrip("/") or file.rsplit("/", 1)[-1]
            with self._fs.open(file, "rb") as handle:
                row_number = 0
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=self.batch_size):
                    for row in batch.to_pylist():
                        ref = f"{name}#row={row_number}"
                        if self.sharegpt:
                            yield interpret_sharegpt(index, ref, row, self.options, base)
                        else:
                            yield interpret_captioned(
                                index, ref, row, self.options, self.caption_field, base
                            )
                        index += 1
                        row_number += 1


def open_source(uri: str, options: SourceOptions) -> Importer:
    """The importer for a source URI (local path or fsspec URI)."""
    uri = normalise_uri(uri)
    fs, path = filesystem(uri)
    has_glob = any(ch in path for ch in "*?[")
    if not has_glob and not fs.exists(path):
        raise ConfigError(f"source {redact(uri)} does not exist")
    fmt = options.format
    if fmt == "parquet" or (fmt == "auto" and (has_glob or path.endswith(".parquet"))):
        return ParquetImporter(uri, options)
    if has_glob:
        raise ConfigError(f"{redact(uri)}: globs are supported for Parquet sources only")
    if fs.isdir(path):
        annotation = _find_annotation_file(fs, path)
        if annotation is None:
            parquet_files = [f for f in fs.ls(path, detail=False) if f.endswith(".parquet")]
            if parquet_files and fmt in ("auto", "parquet"):
                return ParquetImporter(uri, options)
            if fmt == "sharegpt":
                raise ConfigError(f"{redact(uri)}: no .json/.jsonl file with ShareGPT records")
            return SidecarImporter(uri, options)
        return RecordFileImporter(
            fs.unstrip_protocol(annotation), options, sharegpt=_sharegpt_flag(fmt)
        )
    if path.lower().endswith(RECORD_FILE_SUFFIXES):
        return RecordFileImporter(uri, options, sharegpt=_sharegpt_flag(fmt))
    raise ConfigError(
        f"{redact(uri)}: cannot tell how to read this source; pass a folder, an annotation file "
        f"({'/'.join(RECORD_FILE_SUFFIXES)}) or Parquet"
    )


def _sharegpt_flag(fmt: str) -> bool | None:
    return True if fmt == "sharegpt" else (False if fmt == "folder" else None)


def _find_annotation_file(fs: Any, folder: str) -> str | None:
    entries = {e.rsplit("/", 1)[-1]: e for e in fs.ls(folder, detail=False)}
    for name in ANNOTATION_NAMES:
        if name in entries:
            return entries[name]
    candidates = sorted(p for n, p in entries.items() if n.lower().endswith(RECORD_FILE_SUFFIXES))
    if len(candidates) > 1:
        names = [c.rsplit("/", 1)[-1] for c in candidates]
        raise ConfigError(
            f"{redact(folder)}: several annotation files {names}; pass the one to ingest as SOURCE"
        )
    return candidates[0] if candidates else None
