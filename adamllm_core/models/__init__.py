"""Model references: Hugging Face ids, local paths, `tiny:vlm` / `tiny:lm` (built here),
and models the pipeline published to object storage (`s3://.../final`): pulled once per
machine into a local cache and checked file by file against the manifest published with
them, so an engine on any node loads exactly what was trained."""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from adamllm_core.hashing import file_sha256
from adamllm_core.storage import filesystem, join, normalise_uri, protocol_of, redact

TINY_PREFIX = "tiny:"


def quiet_transformers() -> None:
    """No transformers progress bars (one per weight load and per checkpoint save: hundreds
    of lines in a run's log); stages and training show their own progress."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def tiny_models_dir() -> Path:
    return Path(os.environ.get("ADAMLLM_TINY_MODELS", "~/.cache/adamllm/tiny-models")).expanduser()


MODEL_MANIFEST = "adamllm_model.json"  # written last: a published model is complete


def publish_model(local: str | Path, uri: str) -> dict:
    """Upload a model folder to `uri` (object storage), its manifest (every file's size
    and sha256, and their digest: the model's identity) last."""
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MODEL_MANIFEST)
    entries = {p.relative_to(local).as_posix(): _file_entry(p) for p in files}
    manifest = {
        "identity": hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:32],
        "files": entries,
    }
    fs, root = filesystem(normalise_uri(uri))
    fs.put([str(p) for p in files], [join(root, name) for name in entries])
    fs.pipe_file(join(root, MODEL_MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def _file_entry(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def models_cache_dir() -> Path:
    return Path(os.environ.get("ADAMLLM_MODEL_CACHE", "~/.cache/adamllm/models")).expanduser()


def pull_model(uri: str) -> str:
    """The local copy of a model published at `uri`: downloaded once per machine (per
    identity) beside the cache, checked against its manifest, renamed into place."""
    fs, root = filesystem(uri)
    manifest_path = join(root, MODEL_MANIFEST)
    if not fs.exists(manifest_path):
        raise FileNotFoundError(
            f"{redact(uri)}: no {MODEL_MANIFEST}, so not a complete published model"
            " (publish_model writes it last)"
        )
    manifest = json.loads(fs.cat_file(manifest_path))
    target = models_cache_dir() / manifest["identity"]
    if (target / MODEL_MANIFEST).exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=target.parent))
    try:
        names = list(manifest["files"])
        fs.get([join(root, name) for name in names], [str(staging / name) for name in names])
        for name, expected in manifest["files"].items():
            if _file_entry(staging / name) != expected:
                raise ValueError(
                    f"{redact(uri)}/{name} differs from its manifest (size or sha256):"
                    " the model changed or was cut while published"
                )
        (staging / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            staging.rename(target)
        except OSError:  # another process on this machine pulled it first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def resolve_model(name: str) -> str:
    """A loadable id or path; `tiny:NAME` builds the tiny models once (no download); an
    object-storage URI is a published model, pulled and checked (see pull_model)."""
    if protocol_of(name) not in ("file",) and "://" in name:
        return pull_model(normalise_uri(name))
    if not name.startswith(TINY_PREFIX):
        return name
    which = name[len(TINY_PREFIX) :]
    if which not in ("vlm", "lm"):
        raise ValueError(f"unknown tiny model {name!r}: use tiny:vlm or tiny:lm")
    root = tiny_models_dir()
    if not (root / "tiny.json").exists():
        from adamllm_core.models.tiny import build_tiny_models

        # Built beside the target and renamed into place: concurrent first uses never
        # see a half-written checkpoint.
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root.parent))
        build_tiny_models(staging)
        try:
            staging.rename(root)
        except OSError:  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
    return str(root / which)
