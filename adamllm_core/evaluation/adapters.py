"""Benchmark files become `EvalItem`s: one generic form and each benchmark's release form.

`read_items(benchmark, path, limit=..., images=...)` takes a file or a folder (local path or any fsspec URI,
`s3://` included) and yields items lazily; each item's image bytes are read when it is yielded
and kept as they are (no decoding).

**Generic form (every benchmark).** A folder with `data.jsonl` (else `test.jsonl`, else its only
`*.jsonl`), a `.jsonl`/`.parquet`/`.json` (list of rows) file, or a folder of Parquet files.
Row fields: `image` (a path relative to the file's folder, an HF `{bytes, path}` struct, or raw
bytes), `question`, `answer` (a string; a list of strings for FoodSeg103 and Nutrition5K;
`label` is an alias), optional `answer_type` (OPEN / CLOSED), `choices` (option texts), `qid`
(`id` is an alias; default: the row's 0-based index). Other fields go to `metadata`.

**Release forms**, detected from the files present (the generic `data.jsonl` wins in a folder):

- slake: Slake1.0 `test.json` (a list; `img_name` under `imgs/`); only `q_lang == "en"` is kept.
- pathvqa: HF parquet (`image`, `question`, `answer`); answer_type derived, CLOSED iff yes/no.
- vqa_rad: MEVF `testset.json` / official `VQA_RAD Dataset Public.json` (`image_name` in
  `images/` or beside); when any row has a `phrase_type` starting with `test`, only those rows.
- pmc_vqa: `test_clean.csv` (`Figure_path, Question, Answer, Choice A..D, Answer_label`); the
  answer is a letter. Images in `images/`, `figures/` or beside.
- recipe1m: `layer1.json` (+ `layer2.json` for images), partition `test`.
- nutrition5k: `metadata/dish_metadata_cafe*.csv` (+ `dish_ids/splits/rgb_test_ids.txt`,
  `imagery/realsense_overhead/<dish>/rgb.png`); a dish without an overhead image is skipped
  and counted (logged at WARNING): the release has no image for many dishes by design.
- food101: HF parquet (`label` ClassLabel int; the `validation` split is the test set) or the
  tarball layout (`meta/test.txt`, `images/<class>/<id>.jpg`).
- foodseg103: HF parquet (`classes_on_image` ids; 0 and 103 dropped).
- clrs, ucmerced: one folder per class (`<root>/.../<class>/<file>.tif|jpg|png`).
- floodnet: question JSON keyed by id (`Image_ID`, `Question`, `Ground_Truth`,
  `Question_Type`); images found by file name anywhere under the JSON's folder.
- nwpu_captions: `dataset_nwpu.json` (class -> entries; split `test`); answer = `raw`, the other
  four captions in `metadata["references"]`; images under `NWPU_images/<class>/`.

Details marked [M] below are unverified guesses about a release; the generic form is the
fallback for any release that does not match.

Errors: every malformed input raises `BenchmarkFormatError(file, line, field, message)`.
Errors say `line N` (1-based) for JSONL and CSV files and `row N` (0-based entry) for Parquet
files and JSON documents; items carry the same place in `source` (`file:line` / `file#rowN`).
"""

import ast
import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from adamllm_core.evaluation.classes import (
    CLRS,
    FOOD101,
    FOODSEG103,
    FOODSEG103_EXCLUDED,
    UC_MERCED,
)
from adamllm_core.evaluation.items import BenchmarkFormatError, EvalItem
from adamllm_core.evaluation.spec import CLASSIFY_SCENE, BenchmarkSpec, option_letters
from adamllm_core.storage import filesystem, protocol_of, redact

log = logging.getLogger(__name__)

ANSWER_TYPES = ("OPEN", "CLOSED")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
PMC_LETTERS = ("A", "B", "C", "D")
# The paper's Recipe1M prompt is `{question}`, but the released question strings are only in
# AdaptLLM's HF data [M]; release-form rows get this one.
RECIPE1M_QUESTION = (
    "What is the recipe for the dish in the image? Give its name, ingredients and steps."
)

_SPLIT_TOKENS = {"train", "training", "validation", "valid", "val", "dev", "test"}
_PLAIN = (str, int, float, bool, type(None))


def read_items(
    benchmark: str,
    path: str,
    *,
    limit: int | None = None,
    images: bool | Callable[[int], bool] = True,
) -> Iterator[EvalItem]:
    """The benchmark's items from `path` (a file or folder, local or any fsspec URI), in file order.

    Raises ValueError for an unknown benchmark name, and `BenchmarkFormatError` (naming the file,
    line or row, and field) for anything malformed, when the offending row is reached.
    """
    if benchmark not in RELEASES:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of: {', '.join(RELEASES)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    fs, root = filesystem(path)
    reader = RELEASES[benchmark](fs, shown_root=redact(path), images=images)
    items = reader.items(root.rstrip("/") or "/")
    return islice(items, limit) if limit is not None else items


# ---------------------------------------------------------------------------------------------
# Per-benchmark conventions of the row fields


@dataclass(frozen=True)
class RowConventions:
    """How a benchmark's rows name their fields (generic and release forms alike)."""

    kind: str = "text"  # text | class | multi | choice
    vqa: bool = False  # OPEN/CLOSED answer types; derived from yes/no when a row has none
    question_fields: tuple[str, ...] = ("question",)
    question_required: bool = True
    answer_fields: tuple[str, ...] = ("answer", "label")
    classes: tuple[str, ...] | None = None
    # (field, folders relative to the row file's folder to look in, in order)
    image_fields: tuple[tuple[str, tuple[str, ...]], ...] = (("image", ("",)),)
    parquet_splits: tuple[str, ...] = ("test",)


def _key(name: str) -> str:
    """Class-name matching key: `golf_course`, `golf-course`, `Golf Course`, `golfcourse` agree."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _is_yes_no(answer: str) -> bool:
    return answer.strip().lower() in ("yes", "no")


@dataclass(frozen=True)
class _Where:
    file: str  # shown form of the file (redacted URI or local path)
    line: int | None
    unit: str = "line"  # "line": 1-based line of a text file; "row": 0-based entry of a JSON list or Parquet file

    @property
    def source(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}" if self.unit == "line" else f"{self.file}#row{self.line}"

    def error(self, field: str | None, message: str) -> BenchmarkFormatError:
        return BenchmarkFormatError(self.file, self.line, field, message, unit=self.unit)


@dataclass
class _Image:
    """Where an item's image is: bytes already at hand, or paths to try in order."""

    key: str  # the row field it came from, for error messages
    data: bytes | None = None
    paths: list[tuple[AbstractFileSystem, str]] = field(default_factory=list)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ---------------------------------------------------------------------------------------------


class BenchmarkRelease:
    """One benchmark: its Table 13-14 entry (`spec`: prompt, generation limit, metric), its
    rows' conventions (`rows`: fields, class list) and how its files are read. This base
    reads the generic forms (jsonl, Parquet, JSON rows); a benchmark's class adds its
    release's own forms through the hooks below and registers itself (`@register`)."""

    spec: ClassVar[BenchmarkSpec]
    rows: ClassVar[RowConventions] = RowConventions()
    release_hint: ClassVar[str] = ""  # the release forms, for the error when none is found

    def __init__(
        self,
        fs: AbstractFileSystem,
        shown_root: str,
        images: bool | Callable[[int], bool] = True,
    ):
        self.name = self.spec.name
        self.fs = fs
        # False: items carry no image bytes (scoring text needs none); a predicate on the
        # item's position decides per item (a resumed evaluation skips finished shards')
        self.images = images
        self.local = protocol_of(shown_root) == "file"
        self.seen: dict[str, str] = {}  # qid -> source, to reject duplicates
        self._search_index: dict[str, dict[str, list[str]]] = {}

    # -- places -------------------------------------------------------------------------------

    def show(self, path: str) -> str:
        return path if self.local else redact(self.fs.unstrip_protocol(path))

    def where(self, path: str, line: int | None) -> _Where:
        return _Where(self.show(path), line)

    def row(self, path: str, index: int) -> _Where:
        return _Where(self.show(path), index, unit="row")

    @staticmethod
    def join(*parts: str) -> str:
        head, *rest = parts
        return "/".join([head.rstrip("/"), *(p.strip("/") for p in rest if p.strip("/"))])

    @staticmethod
    def parent(path: str) -> str:
        return path.rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""

    @staticmethod
    def basename(path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[-1]

    # -- detection ----------------------------------------------------------------------------

    def items(self, root: str) -> Iterator[EvalItem]:
        fs = self.fs
        if fs.isfile(root):
            return self.file_items(root)
        if not fs.isdir(root):
            raise self.where(root, None).error(None, "no such file or folder")
        jsonl = self.pick_jsonl(root)
        if jsonl is not None:
            return self.generic_jsonl(jsonl)
        release = self.release_in_folder(root)
        if release is not None:
            return release
        parquet = self.pick_parquet(root)
        if parquet:
            return self.generic_parquet(parquet)
        fallback = self.folder_fallback(root)
        if fallback is not None:
            return fallback
        raise self.where(root, None).error(
            None,
            f"no {self.name} data found: expected data.jsonl, Parquet files{self.release_hint}",
        )

    def file_items(self, path: str) -> Iterator[EvalItem]:
        name = self.basename(path).lower()
        if name.endswith(".jsonl"):
            return self.generic_jsonl(path)
        if name.endswith(".parquet"):
            return self.generic_parquet([path])
        release = self.release_file(path, name)
        if release is not None:
            return release
        if name.endswith(".json"):
            return self.json_rows(path)
        raise self.where(path, None).error(None, f"not a file form that {self.name} is read from")

    # -- hooks: a release's own forms and rules (the base knows none) -------------------------

    def release_file(self, path: str, name: str) -> Iterator[EvalItem] | None:
        """Items of a file in the release's own form (`name`: its lower-case file name)."""
        return None

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        """Items of the release's files when `root` holds them (no generic data.jsonl)."""
        return None

    def folder_fallback(self, root: str) -> Iterator[EvalItem] | None:
        """Items of a folder holding neither generic nor release files (class folders)."""
        return None

    def keep(self, row: dict[str, Any]) -> bool:
        """Rows a benchmark leaves out by design (not malformed ones)."""
        return True

    def split_filter(self, rows: list[Any]) -> Callable[[dict[str, Any]], bool] | None:
        """For a JSON list of rows holding several splits: which rows are the test set."""
        return None

    def choice_text(self, text: str) -> str:
        return text.strip()

    def class_of_id(self, where: "_Where", name: str, value: int) -> str:
        raise where.error(name, f"expected a class name, got an integer ({value})")

    def label_entry(self, where: "_Where", name: str, entry: Any) -> Any:
        """A multi-label answer's entry as a name; None drops it (a label excluded by design)."""
        return entry

    def generic_vocabulary(
        self, path: str, rows: Callable[[], Iterable[dict[str, Any]]]
    ) -> tuple[str, ...] | None:
        """The names a multi-label answer may use, for generic rows without `choices`."""
        return None

    def pick_jsonl(self, root: str) -> str | None:
        names = sorted(p for p in self.fs.ls(root, detail=False) if p.lower().endswith(".jsonl"))
        for wanted in ("data.jsonl", "test.jsonl"):
            for p in names:
                if self.basename(p) == wanted:
                    return p
        if len(names) == 1:
            return names[0]
        if names:
            shown = ", ".join(self.basename(p) for p in names)
            raise self.where(root, None).error(
                None, f"several JSONL files ({shown}) and no data.jsonl"
            )
        return None

    def pick_parquet(self, root: str) -> list[str]:
        paths = sorted(p for p in self.fs.find(root) if p.lower().endswith(".parquet"))
        if not paths:
            return []

        def tokens(p: str) -> set[str]:
            return set(re.split(r"[/\-_.]", p[len(root) :].lower()))

        for split in self.rows.parquet_splits:
            hits = [p for p in paths if split in tokens(p)]
            if hits:
                return hits
        if not any(tokens(p) & _SPLIT_TOKENS for p in paths):
            return paths
        wanted = " or ".join(self.rows.parquet_splits)
        raise self.where(root, None).error(
            None, f"no {wanted} split among the Parquet files here; pass the file to read itself"
        )

    # -- generic rows -------------------------------------------------------------------------

    def generic_jsonl(self, path: str) -> Iterator[EvalItem]:
        rows = self.jsonl_rows(path)
        vocabulary = self.generic_vocabulary(path, lambda: (r for _, r in self.jsonl_rows(path)))
        base = self.parent(path)
        for index, (where, row) in enumerate(rows):
            if self.keep(row):
                yield self.item(
                    where, index, row, self.image_of(where, row, base), vocabulary=vocabulary
                )

    def jsonl_rows(self, path: str) -> Iterator[tuple[_Where, dict[str, Any]]]:
        line_number = 0
        with self.fs.open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                where = self.where(path, line_number)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise where.error(None, f"not UTF-8 ({exc.reason})") from None
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise where.error(
                        None, f"invalid JSON: {exc.msg} (column {exc.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise where.error(None, f"a row must be a JSON object, not {_type_name(row)}")
                yield where, row

    def generic_parquet(self, paths: list[str]) -> Iterator[EvalItem]:
        vocabulary = self.generic_vocabulary(paths[0], lambda: self.parquet_answers(paths))
        index = 0
        for path in paths:
            base = self.parent(path)
            for position, row in enumerate(self.parquet_rows(path)):
                where = self.row(path, position)
                if self.keep(row):
                    yield self.item(
                        where, index, row, self.image_of(where, row, base), vocabulary=vocabulary
                    )
                index += 1

    def parquet_file(self, path: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.fs.open(path, "rb"))
        except (pa.ArrowException, OSError) as exc:
            raise self.where(path, None).error(
                None, f"not a readable Parquet file: {exc}"
            ) from None

    def parquet_rows(self, path: str) -> Iterator[dict[str, Any]]:
        for batch in self.parquet_file(path).iter_batches(batch_size=64):
            yield from batch.to_pylist()

    def parquet_answers(self, paths: list[str]) -> Iterator[dict[str, Any]]:
        for path in paths:
            handle = self.parquet_file(path)
            columns = [
                c for c in self.rows.answer_fields + ("choices",) if c in handle.schema_arrow.names
            ]
            for batch in handle.iter_batches(batch_size=1024, columns=columns):
                yield from batch.to_pylist()

    def json_rows(self, path: str) -> Iterator[EvalItem]:
        """A JSON list of rows: SLAKE and VQA-RAD releases, or generic rows."""
        data = self.load_json(path)
        if not isinstance(data, list):
            raise self.where(path, None).error(
                None, f"expected a JSON list of rows, not {_type_name(data)}"
            )
        in_split = self.split_filter(data)
        vocabulary = self.generic_vocabulary(path, lambda: (r for r in data if isinstance(r, dict)))
        base, skipped = self.parent(path), 0
        for index, row in enumerate(data):
            where = self.row(path, index)
            if not isinstance(row, dict):
                raise where.error(None, f"a row must be a JSON object, not {_type_name(row)}")
            if not self.keep(row) or (in_split is not None and not in_split(row)):
                skipped += 1
                continue
            yield self.item(
                where, index, row, self.image_of(where, row, base), vocabulary=vocabulary
            )
        if skipped:
            log.info(
                "%s: kept %d rows, left out %d (language or split)",
                path,
                len(data) - skipped,
                skipped,
            )

    def load_json(self, path: str) -> Any:
        where = self.where(path, None)
        try:
            text = self.fs.cat_file(path).decode("utf-8-sig")
        except FileNotFoundError:
            raise where.error(None, "file not found") from None
        except UnicodeDecodeError as exc:
            raise where.error(None, f"not UTF-8 ({exc.reason})") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise _Where(where.file, exc.lineno).error(
                None, f"invalid JSON: {exc.msg} (column {exc.colno})"
            ) from None

    # -- images -------------------------------------------------------------------------------

    def image_of(self, where: _Where, row: dict[str, Any], base: str) -> _Image:
        for name, folders in self.rows.image_fields:
            if name in row and row[name] is not None:
                return self.image_value(where, name, row[name], base, folders)
        names = [name for name, _ in self.rows.image_fields]
        also = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
        raise where.error(names[0], f"missing required field{also}")

    def image_value(
        self, where: _Where, name: str, value: Any, base: str, folders: tuple[str, ...]
    ) -> _Image:
        if isinstance(value, dict):  # HF Image feature: {bytes, path}
            if value.get("bytes") is not None:
                value = value["bytes"]
            elif value.get("path"):
                value = value["path"]
            else:
                raise where.error(name, "image struct has neither bytes nor path")
        if isinstance(value, (bytes, bytearray)):
            return _Image(name, data=bytes(value))
        if not isinstance(value, str) or not value.strip():
            raise where.error(name, f"expected an image path or bytes, got {_type_name(value)}")
        value = value.strip()
        if "://" in value:
            return _Image(name, paths=[filesystem(value)])
        if value.startswith("/"):
            return _Image(name, paths=[(self.fs, value)])
        if not folders:
            return _Image(name, paths=[(self.fs, p) for p in self.search(base, value, where, name)])
        return _Image(name, paths=[(self.fs, self.join(base, folder, value)) for folder in folders])

    def search(self, base: str, file_name: str, where: _Where, name: str) -> list[str]:
        """Paths under `base` named `file_name` (case-insensitive when none match exactly)."""
        if base not in self._search_index:
            index: dict[str, list[str]] = {}
            for p in self.find_images(base):
                index.setdefault(self.basename(p).lower(), []).append(p)
            self._search_index[base] = index
        hits = self._search_index[base].get(file_name.lower(), [])
        exact = [p for p in hits if self.basename(p) == file_name]
        hits = exact or hits
        if len(hits) > 1:
            shown = ", ".join(self.show(p) for p in hits[:3])
            raise where.error(name, f"image name {file_name!r} is ambiguous: {shown}")
        return hits or [self.join(base, file_name)]

    def find_images(self, root: str) -> list[str]:
        return sorted(p for p in self.fs.find(root) if p.lower().endswith(IMAGE_SUFFIXES))

    def read_image(self, where: _Where, image: _Image) -> bytes:
        if image.data is not None:
            return image.data
        if not (self.images(len(self.seen)) if callable(self.images) else self.images):
            return b""
        for fs, path in image.paths:
            try:
                return fs.cat_file(path)
            except (FileNotFoundError, IsADirectoryError):
                continue
        shown = [
            p if fs is self.fs and self.local else redact(fs.unstrip_protocol(p))
            for fs, p in image.paths
        ]
        tried = f" (also tried {', '.join(shown[1:])})" if len(shown) > 1 else ""
        raise where.error(image.key, f"image file not found: {shown[0]}{tried}")

    # -- one item -----------------------------------------------------------------------------

    def item(
        self,
        where: _Where,
        index: int,
        row: dict[str, Any],
        image: _Image,
        *,
        qid: str | None = None,
        vocabulary: tuple[str, ...] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> EvalItem:
        spec, used = self.rows, {image.key}
        meta: dict[str, Any] = {}

        qid_field = None
        if qid is None:
            qid_field = next((f for f in ("qid", "id") if row.get(f) is not None), None)
            if qid_field is None:
                qid = str(index)
            else:
                used.add(qid_field)
                value = row[qid_field]
                if isinstance(value, bool) or not isinstance(value, (str, int)):
                    raise where.error(
                        qid_field, f"expected a string or integer, got {_type_name(value)}"
                    )
                qid = str(value).strip()
        if qid in self.seen:
            raise where.error(
                qid_field or "qid", f"duplicate qid {qid!r} (first at {self.seen[qid]})"
            )

        prompt = None
        if row.get("input") is not None:  # AdaptLLM's benchmark release: Table 14 already applied
            used.add("input")
            prompt = _string(where, "input", row["input"]).strip() or None
        question_field = next((f for f in spec.question_fields if row.get(f) is not None), None)
        if question_field is None:
            if spec.question_required and prompt is None:
                raise where.error(spec.question_fields[0], "missing required field")
            question = ""
        else:
            used.add(question_field)
            question = _string(where, question_field, row[question_field]).strip()
            if spec.question_required and not question and prompt is None:
                raise where.error(question_field, "empty question")

        if spec.kind == "choice":
            answer, choices = self.choice_answer(where, row, used, meta)
        else:
            answer_field = next((f for f in spec.answer_fields if row.get(f) is not None), None)
            if answer_field is None:
                raise where.error(spec.answer_fields[0], "missing required field")
            used.add(answer_field)
            choices = self.row_choices(where, row, used)
            value = row[answer_field]
            if spec.kind == "text":
                answer = _string(where, answer_field, value, numbers=True).strip()
                if not answer:
                    raise where.error(answer_field, "empty answer")
            elif spec.kind == "class":
                choices = choices or list(spec.classes or ())
                answer = self.class_answer(where, answer_field, value, choices)
            else:
                if choices is None:
                    choices = list(spec.classes or vocabulary or ()) or None
                answer = self.multi_answer(where, answer_field, value, choices, meta)

        answer_type = None
        if row.get("answer_type") is not None:
            used.add("answer_type")
            raw_type = _string(where, "answer_type", row["answer_type"]).strip().upper()
            if raw_type not in ANSWER_TYPES:
                raise where.error(
                    "answer_type",
                    f"unknown answer_type {row['answer_type']!r} (expected OPEN or CLOSED)",
                )
            answer_type = raw_type
        elif spec.vqa:
            answer_type = "CLOSED" if isinstance(answer, str) and _is_yes_no(answer) else "OPEN"
            meta["answer_type_derived"] = True

        for name, value in row.items():
            if name and name not in used and _plain(value):
                meta.setdefault(name, value)
        meta.update(metadata or {})
        data = self.read_image(where, image)
        self.seen[qid] = where.source
        return EvalItem(
            qid=qid,
            image=data,
            question=question,
            answer=answer,
            answer_type=answer_type,
            choices=choices,
            prompt=prompt,
            source=where.source,
            metadata=meta,
        )

    def row_choices(self, where: _Where, row: dict[str, Any], used: set[str]) -> list[str] | None:
        if row.get("choices") is None:
            return None
        used.add("choices")
        value = row["choices"]
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise where.error(
                "choices", f"expected a non-empty list of strings, got {_type_name(value)}"
            )
        return [self.choice_text(c) for c in value]

    def class_answer(self, where: _Where, name: str, value: Any, choices: list[str]) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = self.class_of_id(where, name, value)
        label = _string(where, name, value).strip()
        by_key = {_key(c): c for c in choices}
        if _key(label) not in by_key:
            raise where.error(
                name, f"{label!r} is not one of the {len(choices)} {self.name} classes"
            )
        return by_key[_key(label)]

    def multi_answer(
        self, where: _Where, name: str, value: Any, choices: list[str] | None, meta: dict[str, Any]
    ) -> list[str]:
        values = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
        if not isinstance(values, list):
            raise where.error(name, f"expected a list of names, got {_type_name(value)}")
        known = {c.lower(): c for c in choices} if choices else None
        names: list[str] = []
        dropped: list[Any] = []
        for raw in values:
            entry = self.label_entry(where, name, raw)
            if entry is None:
                dropped.append(raw.strip() if isinstance(raw, str) else raw)
                continue
            if not isinstance(entry, str):
                raise where.error(
                    name, f"expected names (strings), got a {_type_name(entry)} in the list"
                )
            entry = entry.strip()
            if known is not None:
                if entry.lower() not in known:
                    raise where.error(name, f"{entry!r} is not in the {len(known)}-name vocabulary")
                entry = known[entry.lower()]
            if entry and entry not in names:
                names.append(entry)
        if dropped:
            meta["dropped_labels"] = dropped
        return names

    def choice_answer(
        self, where: _Where, row: dict[str, Any], used: set[str], meta: dict[str, Any]
    ) -> tuple[str, list[str]]:
        """PMC-VQA: (letter, option texts), from the release CSV's columns or a generic row."""
        if "Answer_label" in row or "Choice A" in row:  # release CSV
            choices = []
            for letter in PMC_LETTERS:
                column = f"Choice {letter}"
                if row.get(column) is None:
                    raise where.error(column, "missing required field")
                used.add(column)
                cell = _string(where, column, row[column]).strip()
                # ' B:Focal uptake ' -> 'Focal uptake'; a cell without a letter prefix stays whole.
                match = re.match(r"^([A-Da-d])\s*:", cell)
                choices.append(cell[match.end() :].strip() if match else cell)
            while len(choices) > 2 and choices[-1] == "None_Option":  # MedVInT drops these C/D
                choices.pop()
                meta["dropped_none_options"] = meta.get("dropped_none_options", 0) + 1
            used.update(("Answer", "Answer_label"))
            label = _string(where, "Answer_label", row.get("Answer_label") or "").strip().upper()
            text = _string(where, "Answer", row.get("Answer") or "").strip()
            field_name = "Answer_label"
        else:  # generic row: `choices`, or the official A..D columns; answer = letter or text
            choices = self.row_choices(where, row, used) or []
            if not choices:
                for letter in PMC_LETTERS:
                    if isinstance(row.get(letter), str):
                        used.add(letter)
                        choices.append(row[letter].strip())
            if not choices:
                raise where.error("choices", "missing required field")
            field_name = next((f for f in ("answer", "label") if row.get(f) is not None), "answer")
            if row.get(field_name) is None:
                raise where.error("answer", "missing required field")
            used.add(field_name)
            text = _string(where, field_name, row[field_name]).strip()
            label = text.upper() if text.upper() in PMC_LETTERS else ""
        letters = option_letters(len(choices))
        by_text = (
            [letters[i] for i, c in enumerate(choices) if c.lower() == text.lower()] if text else []
        )
        if label in letters:
            if by_text and label not in by_text:
                meta["answer_label_conflict"] = {
                    "answer_label": label,
                    "answer": text,
                    "used": by_text[0],
                }
                label = by_text[0]
        elif text.upper() in letters:
            label = text.upper()
        elif by_text:
            label = by_text[0]
            meta["answer_from_text"] = True
        else:
            raise where.error(
                field_name,
                f"answer {text or label!r} is neither a letter {'/'.join(letters)} "
                "nor an option's text",
            )
        meta["answer_text"] = choices[letters.index(label)]
        return label, choices

    # -- release forms that are not row lists -------------------------------------------------

    def csv_rows(self, path: str) -> Iterator[tuple[_Where, dict[str, Any]]]:
        header, rows = self.csv_records(path, header=True)
        for where, cells in rows:
            if len(cells) != len(header):
                raise where.error(None, f"{len(cells)} cells, the header has {len(header)}")
            yield where, dict(zip(header, cells, strict=True))

    def csv_records(
        self, path: str, *, header: bool
    ) -> tuple[list[str], Iterator[tuple[_Where, list[str]]]]:
        try:
            text = self.fs.cat_file(path).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise self.where(path, None).error(None, f"not UTF-8 ({exc.reason})") from None
        reader = csv.reader(io.StringIO(text, newline=""))
        names: list[str] = []
        if header:
            try:
                names = [n.strip() for n in next(reader)]
            except StopIteration:
                raise self.where(path, 1).error(None, "no header row") from None

        def records() -> Iterator[tuple[_Where, list[str]]]:
            start = reader.line_num + 1
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise self.where(path, start).error(None, f"bad CSV: {exc}") from None
                if any(c.strip() for c in cells):
                    yield self.where(path, start), cells
                start = reader.line_num + 1

        return names, records()


def _require(where: _Where, row: dict[str, Any], *names: str) -> None:
    """A release form's own required fields, so that errors name them as the file does."""
    for name in names:
        if row.get(name) is None:
            raise where.error(name, "missing required field")


def _string(where: _Where, name: str, value: Any, *, numbers: bool = False) -> str:
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise where.error(name, "missing required field")
    raise where.error(name, f"expected a string, got {_type_name(value)}")


def _texts(where: _Where, name: str, value: Any) -> list[str]:
    """Recipe1M `[{"text": ...}, ...]` lists."""
    if not isinstance(value, list) or not all(
        isinstance(v, dict) and isinstance(v.get("text"), str) for v in value
    ):
        raise where.error(name, 'expected a list of {"text": ...} objects')
    return [v["text"].strip() for v in value if v["text"].strip()]


def _plain(value: Any) -> bool:
    """JSON-like values worth keeping in metadata (not image bytes or masks)."""
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _python_list(text: str, name: str, where: _Where) -> list[Any]:
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise _Where(where.file, exc.lineno).error(None, f"not Python: {exc.msg}") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                raise _Where(where.file, node.lineno).error(name, "not a literal list") from None
    raise where.error(name, "no such list in the file")


# ---------------------------------------------------------------------------------------------
# The benchmarks: one registered class each (Table 13-14 entry, row conventions, release forms)

RELEASES: dict[str, type[BenchmarkRelease]] = {}


def register(release: type[BenchmarkRelease]) -> type[BenchmarkRelease]:
    name = release.spec.name
    if name in RELEASES:
        raise ValueError(f"benchmark {name!r} registered twice")
    RELEASES[name] = release
    return release


@register
class Slake(BenchmarkRelease):
    """Slake1.0 `test.json`; only English questions (`q_lang == "en"`) are kept."""

    spec = BenchmarkSpec(
        name="slake",
        title="SLAKE",
        domain="biomed",
        task="VQA (open) / binary (closed)",
        template="{question}",
        metric="vqa",
        max_new_tokens=1024,
        paper_test_size=645 + 416,
    )
    rows = RowConventions(vqa=True, image_fields=(("image", ("",)), ("img_name", ("imgs", ""))))
    release_hint = " or test.json"

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        if self.fs.isfile(self.join(root, "test.json")):
            return self.json_rows(self.join(root, "test.json"))
        return None

    def keep(self, row: dict[str, Any]) -> bool:
        return row.get("q_lang", "en") == "en"  # the Chinese half is not the paper's test set


@register
class PathVqa(BenchmarkRelease):
    spec = BenchmarkSpec(
        name="pathvqa",
        title="PathVQA",
        domain="biomed",
        task="VQA (open) / binary (closed)",
        template="{question}",
        metric="vqa",
        max_new_tokens=1024,
        paper_test_size=3357 + 3362,
    )
    rows = RowConventions(vqa=True)


@register
class VqaRad(BenchmarkRelease):
    """MEVF `testset.json` or the official `VQA_RAD Dataset Public.json`."""

    spec = BenchmarkSpec(
        name="vqa_rad",
        title="VQA-RAD",
        domain="biomed",
        task="VQA (open) / binary (closed)",
        template="{question}",
        metric="vqa",
        max_new_tokens=1024,
        paper_test_size=179 + 272,
    )
    # "VQA_RAD Image Folder" is the official release's folder name [M].
    rows = RowConventions(
        vqa=True,
        image_fields=(("image", ("",)), ("image_name", ("images", "", "VQA_RAD Image Folder"))),
    )
    release_hint = ", testset.json or 'VQA_RAD Dataset Public.json'"

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        for name in ("testset.json", "VQA_RAD Dataset Public.json"):
            if self.fs.isfile(self.join(root, name)):
                return self.json_rows(self.join(root, name))
        return None

    def split_filter(self, rows: list[Any]) -> Callable[[dict[str, Any]], bool] | None:
        """The official file holds every split: when any row's phrase_type is test*, those."""

        def is_test(row: dict[str, Any]) -> bool:
            return str(row.get("phrase_type", "")).startswith("test")

        if any(isinstance(r, dict) and is_test(r) for r in rows):
            return is_test
        return None


@register
class PmcVqa(BenchmarkRelease):
    """`test_clean.csv`: the answer is a letter, options in `Choice A..D`."""

    spec = BenchmarkSpec(
        name="pmc_vqa",
        title="PMC-VQA",
        domain="biomed",
        task="Multi-choice QA",
        template="Question: {question} The choices are: {options}",
        metric="choice",
        max_new_tokens=1024,
        paper_test_size=2000,
    )
    rows = RowConventions(
        kind="choice",
        question_fields=("question", "Question"),
        image_fields=(("image", ("",)), ("Figure_path", ("images", "figures", ""))),
    )
    release_hint = " or test_clean.csv"

    def release_file(self, path: str, name: str) -> Iterator[EvalItem] | None:
        return self.pmc_csv(path) if name.endswith(".csv") else None

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        # test_clean.csv: the 2,000-row test set; test_2.csv (v2) has the letter in Answer [M].
        for name in ("test_clean.csv", "test.csv", "test_2.csv"):
            if self.fs.isfile(self.join(root, name)):
                return self.pmc_csv(self.join(root, name))
        csvs = [p for p in self.fs.ls(root, detail=False) if p.lower().endswith(".csv")]
        if len(csvs) == 1:
            return self.pmc_csv(csvs[0])
        return None

    def pmc_csv(self, path: str) -> Iterator[EvalItem]:
        base = self.parent(path)
        for index, (where, row) in enumerate(self.csv_rows(path)):
            _require(where, row, "Figure_path", "Question")
            yield self.item(where, index, row, self.image_of(where, row, base))


@register
class Recipe1M(BenchmarkRelease):
    spec = BenchmarkSpec(
        name="recipe1m",
        title="Recipe1M",
        domain="food",
        task="Recipe generation",
        template="{question}",
        metric="rouge_l",
        max_new_tokens=1024,
        paper_test_size=1000,
    )
    rows = RowConventions()  # generic rows name their question (or AdaptLLM's `input`)
    release_hint = " or layer1.json"

    def release_file(self, path: str, name: str) -> Iterator[EvalItem] | None:
        return self.recipe1m(path) if name.endswith(".json") else None

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        if self.fs.isfile(self.join(root, "layer1.json")):
            return self.recipe1m(self.join(root, "layer1.json"))
        return None

    def recipe1m(self, path: str, partition: str = "test") -> Iterator[EvalItem]:
        """Recipe1M `layer1.json` + `layer2.json` [M: the answer's layout and the image folders]."""
        recipes = self.load_json(path)
        if not isinstance(recipes, list):
            raise self.where(path, None).error(
                None, f"expected a JSON list of recipes, not {_type_name(recipes)}"
            )
        base = self.parent(path)
        layer2 = self.join(base, "layer2.json")
        if not self.fs.isfile(layer2):
            raise self.where(layer2, None).error(
                None, "missing: layer2.json maps recipes to their images"
            )
        images: dict[str, str] = {}
        for index, entry in enumerate(self.load_json(layer2)):
            where = self.row(layer2, index)
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise where.error("id", "expected an object with a string id")
            listed = entry.get("images") or []
            if not isinstance(listed, list) or not all(
                isinstance(i, dict) and isinstance(i.get("id"), str) for i in listed
            ):
                raise where.error("images", "expected a list of {id, url} objects")
            if listed:
                images[entry["id"]] = listed[0]["id"]
        skipped = 0
        for index, recipe in enumerate(recipes):
            where = self.row(path, index)
            if not isinstance(recipe, dict):
                raise where.error(None, f"a recipe must be a JSON object, not {_type_name(recipe)}")
            if recipe.get("partition") != partition:
                continue
            recipe_id = _string(where, "id", recipe.get("id")).strip()
            if recipe_id not in images:
                skipped += 1  # most recipes have no image: not part of an image benchmark
                continue
            title = _string(where, "title", recipe.get("title")).strip()
            ingredients = _texts(where, "ingredients", recipe.get("ingredients"))
            instructions = _texts(where, "instructions", recipe.get("instructions"))
            answer = "\n".join(
                [title, "Ingredients:", *ingredients, "Instructions:", *instructions]
            )
            image_id = images[recipe_id]
            image = _Image(
                "images",
                paths=[
                    (self.fs, self.join(base, "images", partition, *image_id[:4], image_id)),
                    (self.fs, self.join(base, "images", image_id)),
                ],
            )
            row = {
                "question": RECIPE1M_QUESTION,
                "answer": answer,
                "title": title,
                "url": recipe.get("url"),
                "partition": partition,
            }
            yield self.item(where, index, row, image, qid=recipe_id)
        if skipped:
            log.info("recipe1m: %d %s recipes have no image in layer2.json", skipped, partition)


@register
class Nutrition5K(BenchmarkRelease):
    spec = BenchmarkSpec(
        name="nutrition5k",
        title="Nutrition5K",
        domain="food",
        task="Ingredient prediction",
        template="What ingredients are used to make the dish in the image?",
        metric="multilabel_recall",
        max_new_tokens=256,
        paper_test_size=507,
    )
    rows = RowConventions(
        kind="multi", question_required=False, answer_fields=("answer", "label", "ingredients")
    )
    release_hint = " or metadata/dish_metadata_cafe*.csv"

    def release_file(self, path: str, name: str) -> Iterator[EvalItem] | None:
        if not name.endswith(".csv"):
            return None
        folder = self.parent(path)
        root = self.parent(folder) if self.basename(folder) == "metadata" else folder
        return self.nutrition5k(root, [path])

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        csvs = sorted(self.fs.glob(self.join(root, "metadata", "dish_metadata_cafe*.csv")))
        csvs = csvs or sorted(self.fs.glob(self.join(root, "dish_metadata_cafe*.csv")))
        return self.nutrition5k(root, csvs) if csvs else None

    def generic_vocabulary(
        self, path: str, rows: Callable[[], Iterable[dict[str, Any]]]
    ) -> tuple[str, ...] | None:
        """Nutrition5K rows without `choices`: a vocabulary file beside, else the answers' union."""
        from_file = self.vocabulary_file(self.parent(path))
        if from_file is not None:
            return from_file
        # Without the official list, longest-first matching only knows the gold names.
        log.warning(
            "nutrition5k: no ingredients.txt/.json or nutrition5k_ingredients.py beside %s: "
            "matching against the union of the gold ingredients",
            self.show(path),
        )
        names: set[str] = set()
        for row in rows():
            for f in self.rows.answer_fields:
                value = row.get(f)
                if value is not None:
                    values = value if isinstance(value, list) else [value]
                    names.update(v.strip() for v in values if isinstance(v, str) and v.strip())
                    break
        return tuple(sorted(names))

    def vocabulary_file(self, root: str) -> tuple[str, ...] | None:
        """`ingredients.txt` (a name a line), `ingredients.json` (a list), or the official
        `nutrition5k_ingredients.py` (its `all_ingredients` list, read with `ast`, never run)."""
        for name in ("ingredients.txt", "ingredients.json", "nutrition5k_ingredients.py"):
            path = self.join(root, name)
            if not self.fs.isfile(path):
                continue
            where = self.where(path, None)
            text = self.fs.cat_file(path).decode("utf-8-sig")
            if name.endswith(".txt"):
                names: list[Any] = [line.strip() for line in text.splitlines() if line.strip()]
            elif name.endswith(".json"):
                names = self.load_json(path)
            else:
                names = _python_list(text, "all_ingredients", where)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise where.error(None, "expected a list of ingredient names")
            return tuple(dict.fromkeys(n.strip() for n in names))  # 'deprecated' repeats
        return None

    def nutrition5k(self, root: str, csv_paths: list[str]) -> Iterator[EvalItem]:
        dishes: list[tuple[_Where, str, list[str], list[tuple[str, str]]]] = []
        by_id: dict[str, str] = {}  # ingredient id -> name
        for path in csv_paths:
            _, records = self.csv_records(path, header=False)
            for where, cells in records:
                while cells and not cells[-1].strip():
                    cells = cells[:-1]
                dish_id = cells[0].strip()
                if not dish_id:
                    raise where.error("dish_id", "empty dish id")
                if len(cells) < 6 or (len(cells) - 6) % 7:
                    raise where.error(
                        "ingredients",
                        f"{len(cells)} cells: expected dish_id, 5 totals, then 7 per ingredient",
                    )
                ingredients = []
                for start in range(6, len(cells), 7):
                    ingr_id, name = cells[start].strip(), cells[start + 1].strip()
                    if not name:
                        raise where.error(
                            "ingredient name", f"empty name in the ingredient at cell {start + 2}"
                        )
                    by_id.setdefault(ingr_id, name)
                    ingredients.append((ingr_id, name))
                dishes.append((where, dish_id, cells[1:6], ingredients))
        vocabulary = self.vocabulary_file(root)
        if vocabulary is None:  # ingredient-id order, the official list's order
            vocabulary = tuple(dict.fromkeys(by_id[k] for k in sorted(by_id)))
        split = self.join(root, "dish_ids", "splits", "rgb_test_ids.txt")
        wanted: set[str] | None = None
        if self.fs.isfile(split):
            wanted = {
                line.strip()
                for line in self.fs.cat_file(split).decode().splitlines()
                if line.strip()
            }
        return self._nutrition5k_items(root, dishes, vocabulary, wanted)

    def _nutrition5k_items(
        self,
        root: str,
        dishes: list[tuple[_Where, str, list[str], list[tuple[str, str]]]],
        vocabulary: tuple[str, ...],
        wanted: set[str] | None,
    ) -> Iterator[EvalItem]:
        totals_names = ("total_calories", "total_mass", "total_fat", "total_carb", "total_protein")
        produced = skipped = 0
        # One listing decides which dishes have an overhead image (whether or not images are
        # read, so the items and their positions never depend on that).
        overhead = self.join(root, "imagery", "realsense_overhead")
        with_image = {
            p.rstrip("/").rsplit("/", 2)[-2]
            for p in self.fs.glob(self.join(overhead, "*", "rgb.png"))
        }
        for index, (where, dish_id, totals, ingredients) in enumerate(dishes):
            if wanted is not None and dish_id not in wanted:
                continue
            if dish_id not in with_image:
                skipped += 1  # the release has no overhead image for many dishes
                continue
            image = _Image("dish_id", paths=[(self.fs, self.join(overhead, dish_id, "rgb.png"))])
            meta: dict[str, Any] = {"ingredient_ids": [i for i, _ in ingredients]}
            for name, cell in zip(totals_names, totals, strict=True):
                try:
                    meta[name] = float(cell)
                except ValueError:
                    raise where.error(name, f"not a number: {cell!r}") from None
            row = {"ingredients": [n for _, n in ingredients]}
            yield self.item(
                where, index, row, image, qid=dish_id, vocabulary=vocabulary, metadata=meta
            )
            produced += 1
        if skipped:
            log.warning(
                "nutrition5k: skipped %d dishes without imagery/realsense_overhead/<dish>/rgb.png",
                skipped,
            )
            if not produced:
                raise self.where(root, None).error(
                    "imagery",
                    f"none of the {skipped} dishes has imagery/realsense_overhead/<dish>/rgb.png",
                )


@register
class Food101(BenchmarkRelease):
    """HF parquet (`label` a ClassLabel id) or the tarball layout (`meta/test.txt`)."""

    spec = BenchmarkSpec(
        name="food101",
        title="Food101",
        domain="food",
        task="Category classification",
        template="What type of food is shown in this image? Choose one type from the following options: {options}",
        metric="classification",
        max_new_tokens=256,
        paper_test_size=25250,
        class_parser="indexed",
    )
    # HF ethz/food101 names its test split "validation".
    rows = RowConventions(
        kind="class",
        classes=FOOD101,
        question_required=False,
        parquet_splits=("validation", "test"),
    )
    release_hint = " or meta/test.txt"

    def release_file(self, path: str, name: str) -> Iterator[EvalItem] | None:
        if not name.endswith(".txt"):
            return None
        folder = self.parent(path)
        root = self.parent(folder) if self.basename(folder) == "meta" else folder
        return self.food101_tarball(root, path)

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        if self.fs.isfile(self.join(root, "meta", "test.txt")):
            return self.food101_tarball(root, self.join(root, "meta", "test.txt"))
        return None

    def choice_text(self, text: str) -> str:
        return text.replace("_", " ").strip()

    def class_of_id(self, where: "_Where", name: str, value: int) -> str:
        if not 0 <= value < len(FOOD101):
            raise where.error(name, f"class id {value} is outside 0..{len(FOOD101) - 1}")
        return FOOD101[value]

    def food101_tarball(self, root: str, listing: str) -> Iterator[EvalItem]:
        text = self.fs.cat_file(listing).decode("utf-8")
        index = 0
        for line_number, line in enumerate(text.splitlines(), start=1):
            entry = line.strip()
            if not entry:
                continue
            where = self.where(listing, line_number)
            if entry.count("/") != 1:
                raise where.error(None, f"expected <class>/<image id>, got {entry!r}")
            label = entry.split("/", 1)[0]
            image = _Image("image", paths=[(self.fs, self.join(root, "images", entry + ".jpg"))])
            yield self.item(where, index, {"label": label}, image, qid=entry)
            index += 1


@register
class FoodSeg103(BenchmarkRelease):
    """HF parquet (`classes_on_image` ids); ids 0 and 103 (background, other) are dropped."""

    spec = BenchmarkSpec(
        name="foodseg103",
        title="FoodSeg103",
        domain="food",
        task="Multi-label classification",
        template="Identify the food categories present in the image. The available categories are: {options} "
        "Please return a list of the selected food categories, formatted as a list of names like "
        "[candy, egg tart, french fries, chocolate].",
        metric="multilabel_f1",
        max_new_tokens=256,
        paper_test_size=2135,
    )
    # HF EduardoPacheco/FoodSeg103: train + validation (2,135 = the test set) [M].
    rows = RowConventions(
        kind="multi",
        classes=tuple(FOODSEG103.values()),
        question_required=False,
        answer_fields=("answer", "classes_on_image", "label"),
        parquet_splits=("validation", "test"),
    )

    def label_entry(self, where: "_Where", name: str, entry: Any) -> Any:
        if isinstance(entry, int) and not isinstance(entry, bool):
            if entry in FOODSEG103_EXCLUDED:
                return None
            if entry not in FOODSEG103:
                raise where.error(name, f"class id {entry} is outside 0..103")
            return FOODSEG103[entry]
        if isinstance(entry, str) and entry.strip().lower() in FOODSEG103_EXCLUDED.values():
            return None
        return entry


class ClassFolders(BenchmarkRelease):
    """Scene classification releases: one folder of images per class."""

    release_hint = " or one folder of images per class"

    def folder_fallback(self, root: str) -> Iterator[EvalItem] | None:
        images = self.find_images(root)
        return self.class_folders(root, images) if images else None

    def class_folders(self, root: str, images: list[str]) -> Iterator[EvalItem]:
        classes = self.rows.classes or ()
        by_key = {_key(c): c for c in classes}
        for path in images:  # check every folder before the first item
            folder = self.basename(self.parent(path))
            if _key(folder) not in by_key:
                raise self.where(path, None).error(
                    "class",
                    f"folder {folder!r} is not one of the {len(classes)} {self.name} classes",
                )
        for index, path in enumerate(images):
            folder = self.basename(self.parent(path))
            row = {"answer": by_key[_key(folder)]}
            meta = {"class_folder": folder}
            image = _Image("image", paths=[(self.fs, path)])
            yield self.item(
                self.where(path, None),
                index,
                row,
                image,
                qid=f"{folder}/{self.basename(path)}",
                metadata=meta,
            )


@register
class Clrs(ClassFolders):
    spec = BenchmarkSpec(
        name="clrs",
        title="CLRS",
        domain="remote-sensing",
        task="Scene classification",
        template=CLASSIFY_SCENE,
        metric="classification",
        max_new_tokens=256,
        paper_test_size=15000,
    )
    rows = RowConventions(kind="class", classes=CLRS, question_required=False)


@register
class UcMerced(ClassFolders):
    spec = BenchmarkSpec(
        name="ucmerced",
        title="UC Merced",
        domain="remote-sensing",
        task="Land-use classification",
        template=CLASSIFY_SCENE,
        metric="classification",
        max_new_tokens=256,
        paper_test_size=21000,
    )
    rows = RowConventions(kind="class", classes=UC_MERCED, question_required=False)


@register
class FloodNet(BenchmarkRelease):
    """Track 2 question JSON keyed by id; images found by file name under its folder."""

    spec = BenchmarkSpec(
        name="floodnet",
        title="FloodNet",
        domain="remote-sensing",
        task="VQA",
        template="{question}",
        metric="floodnet",
        max_new_tokens=1024,
        paper_test_size=11000,
    )
    rows = RowConventions(
        question_fields=("question", "Question"),
        answer_fields=("answer", "label", "Ground_Truth"),
        image_fields=(("image", ("",)), ("Image_ID", ())),  # () = search the folder by name
    )
    release_hint = " or a question JSON file"

    def release_file(self, path: str, name: str) -> Iterator[EvalItem] | None:
        return self.floodnet(path) if name.endswith(".json") else None

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        # Question file names are unverified [M]: the only JSON, else the one named "test".
        jsons = sorted(p for p in self.fs.ls(root, detail=False) if p.lower().endswith(".json"))
        tests = [p for p in jsons if "test" in self.basename(p).lower()]
        if len(jsons) == 1 or len(tests) == 1:
            return self.floodnet(jsons[0] if len(jsons) == 1 else tests[0])
        if jsons:
            shown = ", ".join(self.basename(p) for p in jsons)
            raise self.where(root, None).error(None, f"several question files ({shown}); pass one")
        return None

    def floodnet(self, path: str) -> Iterator[EvalItem]:
        """FloodNet Track 2: {id: {Image_ID, Question, Ground_Truth, Question_Type}} [M]."""
        data = self.load_json(path)
        if isinstance(data, dict):
            entries: Iterable[tuple[str | None, Any]] = data.items()
        elif isinstance(data, list):
            entries = ((None, e) for e in data)
        else:
            raise self.where(path, None).error(
                None, f"expected a JSON object keyed by id, not {_type_name(data)}"
            )
        base = self.parent(path)
        for index, (key, row) in enumerate(entries):
            where = self.row(path, index)
            if not isinstance(row, dict):
                raise where.error(key, f"an entry must be a JSON object, not {_type_name(row)}")
            if "Image_ID" in row:  # the release's fields (else generic ones)
                _require(where, row, "Question", "Ground_Truth")
            yield self.item(where, index, row, self.image_of(where, row, base), qid=key)


@register
class NwpuCaptions(BenchmarkRelease):
    """`dataset_nwpu.json` (class -> entries, split `test`); the other captions as references."""

    spec = BenchmarkSpec(
        name="nwpu_captions",
        title="NWPU-Captions",
        domain="remote-sensing",
        task="Image captioning",
        template="Please provide an one-sentence caption for the provided remote sensing image in details.",
        metric="rouge_l",
        max_new_tokens=1024,
        paper_test_size=31500,
    )
    rows = RowConventions(question_required=False, answer_fields=("answer", "label", "raw"))
    release_hint = " or dataset_nwpu.json"

    def release_file(self, path: str, name: str) -> Iterator[EvalItem] | None:
        return self.nwpu(path) if name.endswith(".json") else None

    def release_in_folder(self, root: str) -> Iterator[EvalItem] | None:
        if self.fs.isfile(self.join(root, "dataset_nwpu.json")):
            return self.nwpu(self.join(root, "dataset_nwpu.json"))
        return None

    def nwpu(self, path: str, split: str = "test") -> Iterator[EvalItem]:
        data = self.load_json(path)
        if not isinstance(data, dict):
            raise self.where(path, None).error(
                None, f"expected a JSON object keyed by class, not {_type_name(data)}"
            )
        base, position = self.parent(path), -1
        for class_name, entries in data.items():
            if not isinstance(entries, list):
                raise self.row(path, position + 1).error(
                    class_name, f"expected a list of images, not {_type_name(entries)}"
                )
            for entry in entries:
                position += 1
                where = self.row(path, position)
                if not isinstance(entry, dict):
                    raise where.error(
                        class_name, f"an entry must be a JSON object, not {_type_name(entry)}"
                    )
                if entry.get("split") != split:
                    continue
                _require(where, entry, "filename", "raw")
                filename = _string(where, "filename", entry.get("filename")).strip()
                if not filename:
                    raise where.error("filename", "empty file name")
                references = []
                for name in ("raw_1", "raw_2", "raw_3", "raw_4"):
                    if entry.get(name) is not None:
                        references.append(_string(where, name, entry[name]).strip())
                row = {
                    k: v
                    for k, v in entry.items()
                    if k not in ("raw_1", "raw_2", "raw_3", "raw_4", "sentids")
                }
                image = _Image(
                    "filename",
                    paths=[
                        (self.fs, self.join(base, folder, class_name, filename))
                        for folder in ("NWPU_images", "images", "")  # [M] image folder name
                    ],
                )
                meta = {"class": class_name, "references": references}
                yield self.item(where, position, row, image, qid=filename, metadata=meta)


@register
class ProvingGround(BenchmarkRelease):
    """Not the paper's: the proving ground's generated domain (adamllm_core/proving), one-word
    answers by skill; generic rows with `choices` (the skill's answers) and `skill`. A
    chain-of-thought answer counts by the last option it names."""

    spec = BenchmarkSpec(
        name="proving_ground",
        title="Proving ground",
        domain="proving",
        task="Short-answer VQA by skill",
        template="{question}",
        metric="short_answer",
        max_new_tokens=64,
        paper_test_size=0,
        paper=False,
    )


BENCHMARKS: tuple[str, ...] = tuple(RELEASES)  # the registered names, in registration order
