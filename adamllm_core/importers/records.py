"""Reading annotation files (JSON Lines, JSON, CSV/TSV) into dict records, streamed."""

import codecs
import csv
import functools
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ijson

from adamllm_core.errors import ConfigError, Rejected
from adamllm_core.storage import content_version, filesystem

RECORD_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def record_file_kind(uri: str) -> str:
    for suffix in RECORD_FILE_SUFFIXES:
        if uri.lower().endswith(suffix):
            return suffix[1:]
    raise ConfigError(f"{uri}: not an annotation file (expected one of {RECORD_FILE_SUFFIXES})")


def read_records(uri: str) -> Iterator[tuple[str, dict[str, Any] | Rejected]]:
    """(reference, record or rejection) for every record of the file, in file order,
    streamed: memory does not grow with the file (a JSON list is parsed item by item).

    A line that is not valid UTF-8 or JSON, or not an object, is yielded as a rejection
    naming the file and line, so it becomes a quarantine row instead of stopping the run.
    """
    kind = record_file_kind(uri)
    name = uri.rsplit("/", 1)[-1]
    fs, path = filesystem(uri)
    if kind == "jsonl":
        with fs.open(path, "rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                yield f"{name}:{line_number}", _parse_json_object(line, f"{name}:{line_number}")
    elif kind == "json":
        prefix = scan_record_file(uri).json_prefix
        with fs.open(path, "rb") as handle:
            items = ijson.items(_Reader(handle), prefix, use_float=True)
            for position, item in enumerate(_json_errors_named(items, name)):
                ref = f"{name}[{position}]"
                if isinstance(item, dict):
                    yield ref, item
                else:
                    yield (
                        ref,
                        Rejected("bad_record", f"{ref}: a {type(item).__name__}, not an object"),
                    )
    else:
        with fs.open(path, "rb") as handle:
            yield from _csv_records(handle, kind, name)


def _csv_records(
    handle: Any, kind: str, name: str
) -> Iterator[tuple[str, dict[str, Any] | Rejected]]:
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text, delimiter="\t" if kind == "tsv" else ",")
    try:
        if not reader.fieldnames:
            raise ConfigError(f"{name}: no header row")
        for row in reader:
            ref = f"{name}:{reader.line_num}"
            if None in row:
                yield ref, Rejected("bad_record", f"{ref}: more cells than header columns")
                continue
            yield ref, {k: _cell(v) for k, v in row.items()}
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{name}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None


@dataclass(frozen=True)
class RecordFileScan:
    """One streaming pass over an annotation file: its records, its bytes' sha256 and, for
    JSON, where the list of records is (`item`, or `KEY.item` inside a one-list wrapper)."""

    records: int
    sha256: str
    json_prefix: str = "item"


@functools.lru_cache(maxsize=64)
def _scan(uri: str, size: int, modified: str) -> RecordFileScan:
    kind = record_file_kind(uri)
    name = uri.rsplit("/", 1)[-1]
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        reader = _Reader(handle)
        if kind == "jsonl":
            records = sum(1 for line in iter(reader.readline, b"") if line.strip())
            return RecordFileScan(records, reader.sha256.hexdigest())
        if kind == "json":
            prefix, records = _json_layout(reader, name)
            reader.drain()
            return RecordFileScan(records, reader.sha256.hexdigest(), prefix)
        hashing = _HashingRaw(handle)  # CSV/TSV: counted and hashed in the same pass
        # the CSV reader reads to the end: every byte has passed through the hash
        records = sum(1 for _ in _csv_records(io.BufferedReader(hashing), kind, name))
    return RecordFileScan(records, hashing.sha256.hexdigest())


def scan_record_file(uri: str) -> RecordFileScan:
    """Count and hash the file in one streaming pass (cached while it is unchanged)."""
    fs, path = filesystem(uri)
    info = fs.info(path)
    size, version = int(info.get("size") or 0), content_version(info)
    if version is None:  # changed just now: a version is not yet trustworthy
        return _scan.__wrapped__(uri, size, "")
    return _scan(uri, size, version)


def count_records(uri: str) -> int:
    return scan_record_file(uri).records


def first_record(uri: str) -> dict[str, Any] | None:
    return next((r for _, r in read_records(uri) if isinstance(r, dict)), None)


class _HashingRaw(io.RawIOBase):
    """A raw stream over a binary file that hashes every byte read through it."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.handle.read(len(buffer))
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)


class _Reader:
    """A binary file that hashes every byte read through it and skips a UTF-8 BOM."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self._start = True

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.sha256.update(data)
        if self._start and data:
            self._start = False
            data = data.removeprefix(codecs.BOM_UTF8)
        return data

    def readline(self) -> bytes:
        line = self.handle.readline()
        self.sha256.update(line)
        return line

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _json_errors_named(events: Iterator[Any], name: str) -> Iterator[Any]:
    try:
        yield from events
    except ijson.JSONError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{name}: invalid JSON: {reason}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{name}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None


ITEM_STARTS = {"start_map", "start_array", "string", "number", "boolean", "null"}


def _json_layout(reader: _Reader, name: str) -> tuple[str, int]:
    """Where a JSON file's records are, and how many: a top-level list, or the one list in
    a wrapper object ({"data": [...]}). Streams the events; never holds the document."""
    top: str | None = None
    lists: dict[str, int] = {}  # ijson prefix of a list's items → items seen
    depth = 0
    for prefix, event, _ in _json_errors_named(ijson.parse(reader), name):
        if event in ITEM_STARTS:  # a value starts at `depth`
            if top is None:
                top = event
                if event == "start_array":
                    lists["item"] = 0
                elif event != "start_map":
                    break
            elif depth == 1 and top == "start_map" and event == "start_array":
                lists[f"{prefix}.item"] = 0
            elif prefix in lists and depth == (1 if top == "start_array" else 2):
                lists[prefix] += 1
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
    if len(lists) == 1:
        return next(iter(lists.items()))
    raise ConfigError(f"{name}: expected a JSON list of records")


def _parse_json_object(line: bytes, ref: str) -> dict[str, Any] | Rejected:
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        return Rejected("bad_record", f"{ref}: not UTF-8 ({error.reason} at byte {error.start})")
    except json.JSONDecodeError as error:
        return Rejected("bad_record", f"{ref}: invalid JSON ({error.msg} at column {error.colno})")
    if not isinstance(value, dict):
        return Rejected("bad_record", f"{ref}: a JSON {type(value).__name__}, not an object")
    return value


def _cell(value: str | None) -> Any:
    # A CSV cell holding a JSON list (several captions) is read as that list.
    if value is not None and value.startswith("[") and value.endswith("]"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list):
            return parsed
    return value
