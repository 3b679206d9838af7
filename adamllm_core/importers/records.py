"""Reading annotation files (JSON Lines, JSON, CSV/TSV) into dict records, line by line."""

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from adamllm_core.errors import ConfigError, Rejected
from adamllm_core.storage import filesystem

RECORD_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def record_file_kind(uri: str) -> str:
    for suffix in RECORD_FILE_SUFFIXES:
        if uri.lower().endswith(suffix):
            return suffix[1:]
    raise ConfigError(f"{uri}: not an annotation file (expected one of {RECORD_FILE_SUFFIXES})")


def read_records(uri: str) -> Iterator[tuple[str, dict[str, Any] | Rejected]]:
    """(reference, record or rejection) for every record of the file, in file order.

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
        data = _load_json_file(fs, path, name)
        for position, item in enumerate(data):
            ref = f"{name}[{position}]"
            if isinstance(item, dict):
                yield ref, item
            else:
                yield ref, Rejected("bad_record", f"{ref}: a {type(item).__name__}, not an object")
    else:
        text = _decode(fs.cat_file(path), name)
        reader = csv.DictReader(
            io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ","
        )
        if not reader.fieldnames:
            raise ConfigError(f"{name}: no header row")
        for row in reader:
            ref = f"{name}:{reader.line_num}"
            if None in row:
                yield ref, Rejected("bad_record", f"{ref}: more cells than header columns")
                continue
            yield ref, {k: _cell(v) for k, v in row.items()}


def count_records(uri: str) -> int:
    kind = record_file_kind(uri)
    fs, path = filesystem(uri)
    if kind == "jsonl":
        with fs.open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    return sum(1 for _ in read_records(uri))


def first_record(uri: str) -> dict[str, Any] | None:
    return next((r for _, r in read_records(uri) if isinstance(r, dict)), None)


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


def _load_json_file(fs: Any, path: str, name: str) -> list[Any]:
    try:
        data = json.loads(_decode(fs.cat_file(path), name))
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{name}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    if isinstance(data, dict):
        # {"data": [...]} and similar single-key wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise ConfigError(f"{name}: expected a JSON list of records")
    return data


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{name}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None


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
