"""Model references: Hugging Face ids, local paths, and `tiny:vlm` / `tiny:lm` (built here)."""

import os
import shutil
import tempfile
from pathlib import Path

TINY_PREFIX = "tiny:"


def tiny_models_dir() -> Path:
    return Path(os.environ.get("ADAMLLM_TINY_MODELS", "~/.cache/adamllm/tiny-models")).expanduser()


def resolve_model(name: str) -> str:
    """A loadable id or path; `tiny:NAME` builds the tiny models once (no download)."""
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
