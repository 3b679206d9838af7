"""Canonical hashing of configs and content, shared by manifests and cache keys."""

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values hash equally."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, read in blocks (a model's weights can be many GB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    return sha256_hex(canonical_json(config))[:16]


def pair_id(image_sha256: str, caption: str) -> str:
    """Stable id of a pair: the hash of its image's bytes (by their sha256) and its caption."""
    return hashlib.sha256(f"{image_sha256}\0{caption}".encode()).hexdigest()[:32]
