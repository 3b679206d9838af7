"""What every importer yields, and the record interpretation they share."""

import posixpath
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adamllm_core.errors import ConfigError, Rejected
from adamllm_core.storage import join, normalise_uri, protocol_of, redact

IMAGE_FIELDS = (
    "image",
    "images",
    "file_name",
    "image_path",
    "image_file",
    "path",
    "filename",
    "img",
)
CAPTION_FIELDS = ("caption", "captions", "text", "description")
SHAREGPT_TURN_FIELDS = ("messages", "conversations")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif")


class SourceOptions(BaseModel):
    """How to read a source's records into (image, caption) candidates."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["auto", "folder", "sharegpt", "parquet"] = Field(
        default="auto",
        description="auto: told from the source; folder: images with an annotation file",
    )
    image_field: str | None = Field(default=None, description=f"default: first of {IMAGE_FIELDS}")
    caption_field: str | None = Field(
        default=None, description=f"default: first of {CAPTION_FIELDS}"
    )
    caption_template: str | None = Field(
        default=None,
        description="build the caption from the record's fields, e.g. 'A photo of {label}.'",
    )
    captions: Literal["first", "all"] = Field(
        default="first",
        description="records with a list of captions: one pair from the first usable caption "
        "(the others kept in metadata), or one pair per caption",
    )
    image_root: str | None = Field(
        default=None,
        description="resolve relative image paths here (default: the annotation file's folder)",
    )
    allow_image_uris: tuple[str, ...] = Field(
        default=(),
        description="images may also come from under these prefixes (e.g. s3://other-bucket/,"
        " https://images.example.org/); any other path outside the image root is refused",
    )

    @model_validator(mode="after")
    def _check_caption_source(self) -> "SourceOptions":
        if self.caption_field and self.caption_template:
            raise ConfigError("set caption_field or caption_template, not both")
        if self.caption_template:
            try:
                names = [f for _, f, _, _ in string.Formatter().parse(self.caption_template) if f]
            except ValueError as error:
                raise ConfigError(
                    f"caption_template is not a valid format string: {error}"
                ) from None
            if not names:
                raise ConfigError("caption_template names no field, e.g. 'A photo of {label}.'")
            if any(not n.isidentifier() for n in names):
                raise ConfigError(f"caption_template fields must be plain names, got {names}")
        return self


@dataclass(frozen=True)
class RawRecord:
    """One input record, before its image is read: cheap to create, picklable."""

    index: int
    source_ref: str
    image_uri: str | None = None
    image_bytes: bytes | None = None
    captions: tuple[Any, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None
    error: Rejected | None = None


class Importer(Protocol):
    source: str

    def fingerprint(self) -> str:
        """Changes whenever the source's records or files change."""

    def count(self) -> int:
        """Number of records `records()` yields."""

    def records(self) -> Iterator[RawRecord]:
        """Records in a fixed order (resume relies on it)."""


def resolve_image_uri(value: str, base: str, allowed: Sequence[str] = ()) -> str:
    """The URI of the image a record names. It must lie under `base` (the annotation file's
    folder, or `--image-root`) or under one of the `allowed` prefixes: a `../` escape, an
    absolute path or a URL elsewhere (`file://`, `http(s)://` to a cloud metadata address,
    another bucket) is refused as `image_outside_root`, before anything is read."""
    scheme = protocol_of(value)
    if scheme == "file":
        path = value.removeprefix("file://")
        joined = path if path.startswith("/") else join(base, path)
        uri = _normalised(joined) if protocol_of(joined) == "file" else _normalised_url(joined)
    else:
        uri = _normalised_url(value)
    if _under(uri, base) or any(_under(uri, prefix) for prefix in allowed):
        return uri
    raise Rejected(
        "image_outside_root",
        f"{redact(value)} is outside {redact(base)}; to read images there, name the prefix"
        " in the source's allow_image_uris",
    )


def _normalised(path: str) -> str:
    path = path.removeprefix("file://")
    return posixpath.normpath(path) if path.startswith("/") else path


def _normalised_url(uri: str) -> str:
    scheme, rest = uri.split("://", 1)
    authority, _, path = rest.partition("/")
    # "s3://bucket/a/../../other/x": normpath keeps the bucket (the authority) fixed
    return f"{scheme}://{authority}" + posixpath.normpath("/" + path).rstrip("/")


def _under(uri: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    if protocol_of(prefix) == "file":
        prefix = _normalised(normalise_uri(prefix))
    return uri == prefix or uri.startswith(prefix + "/")


def jsonable(value: Any) -> Any:
    """Metadata values that survive JSON: bytes are dropped, not mangled."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def pick_field(
    record: dict[str, Any], configured: str | None, candidates: tuple[str, ...]
) -> str | None:
    if configured:
        return configured
    return next((name for name in candidates if name in record), None)


def detect_caption_field(
    first_record: dict[str, Any], options: SourceOptions, where: str
) -> str | None:
    """The caption field for a source, decided once from its first record."""
    if options.caption_template:
        return None
    name = pick_field(first_record, options.caption_field, CAPTION_FIELDS)
    if name is None or (options.caption_field and options.caption_field not in first_record):
        raise ConfigError(
            f"{where}: no caption field in the first record (fields: {sorted(first_record)}). "
            f"Name one with --caption-field (e.g. --caption-field label) or build captions with "
            f"--caption-template (e.g. --caption-template 'A photo of {{label}}.')."
        )
    return name


def interpret_captioned(
    index: int,
    source_ref: str,
    record: dict[str, Any],
    options: SourceOptions,
    caption_field: str | None,
    base: str,
) -> RawRecord:
    """A record of the (image, caption | captions) kind."""
    image_field = pick_field(record, options.image_field, IMAGE_FIELDS)
    metadata_skip = {image_field, caption_field}
    raw = {k: jsonable(v) for k, v in record.items()}
    try:
        image_uri, image_bytes = _image_of(record, image_field, base, options.allow_image_uris)
        if options.caption_template:
            captions: tuple[Any, ...] = (_render_template(options.caption_template, record),)
        else:
            value = record.get(caption_field) if caption_field else None
            if value is None:
                raise Rejected("missing_caption", f"no {caption_field!r} in this record")
            captions = tuple(value) if isinstance(value, list) else (value,)
            if not captions:
                raise Rejected("missing_caption", f"{caption_field!r} is an empty list")
    except Rejected as rejected:
        return RawRecord(index=index, source_ref=source_ref, raw=raw, error=rejected)
    metadata = {k: jsonable(v) for k, v in record.items() if k not in metadata_skip}
    return RawRecord(
        index=index,
        source_ref=source_ref,
        image_uri=image_uri,
        image_bytes=image_bytes,
        captions=captions,
        metadata=metadata,
        raw=raw,
    )


def interpret_sharegpt(
    index: int, source_ref: str, record: dict[str, Any], options: SourceOptions, base: str
) -> RawRecord:
    """A LLaVA / ShareGPT record: the first assistant turn is the caption.

    Accepts `messages` with role/content (LLaMA-Factory, the official AdaMLLM input) and
    `conversations` with from/value (original LLaVA).
    """
    raw = {k: jsonable(v) for k, v in record.items()}
    image_field = pick_field(record, options.image_field, ("images", "image"))
    try:
        image_uri, image_bytes = _image_of(record, image_field, base, options.allow_image_uris)
        turns_field = next((f for f in SHAREGPT_TURN_FIELDS if f in record), None)
        turns = record.get(turns_field) if turns_field else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise Rejected("bad_record", "no list of turns under 'messages' or 'conversations'")
        roles = [str(t.get("role", t.get("from", ""))).lower() for t in turns]
        texts = [t.get("content", t.get("value")) for t in turns]
        assistant = [i for i, r in enumerate(roles) if r in ("assistant", "gpt")]
        if not assistant:
            raise Rejected("missing_caption", "no assistant turn to take the caption from")
        first = assistant[0]
        prompt = next((texts[i] for i in range(first) if roles[i] in ("user", "human")), None)
    except Rejected as rejected:
        return RawRecord(index=index, source_ref=source_ref, raw=raw, error=rejected)
    metadata = {k: jsonable(v) for k, v in record.items() if k not in (image_field, turns_field)}
    if isinstance(prompt, str):
        metadata["caption_prompt"] = prompt.replace("<image>", "").strip()
    if len(turns) > first + 1:
        metadata["extra_turns"] = len(turns) - first - 1
    return RawRecord(
        index=index,
        source_ref=source_ref,
        image_uri=image_uri,
        image_bytes=image_bytes,
        captions=(texts[first],),
        metadata=metadata,
        raw=raw,
    )


def _image_of(
    record: dict[str, Any], image_field: str | None, base: str, allowed: Sequence[str]
) -> tuple[str | None, bytes | None]:
    value = record.get(image_field) if image_field else None
    if isinstance(value, list):
        if len(value) > 1:
            raise Rejected(
                "multi_image_record", f"{len(value)} images in one record; pairs take one"
            )
        value = value[0] if value else None
    if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return None, bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return None, bytes(value)
    if isinstance(value, str) and value.strip():
        return resolve_image_uri(value.strip(), base, allowed), None
    raise Rejected(
        "missing_image",
        f"no image under {image_field!r}" if image_field else "no image field in record",
    )


def _render_template(template: str, record: dict[str, Any]) -> str:
    try:
        return template.format(**record)
    except KeyError as error:
        raise Rejected(
            "missing_caption", f"caption_template needs field {error} absent here"
        ) from None


def is_local(uri: str) -> bool:
    return protocol_of(uri) == "file"
