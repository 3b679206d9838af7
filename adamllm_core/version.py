"""Package version and the code version recorded in manifests and cache keys."""

import hashlib
from importlib import metadata
from pathlib import Path

try:
    __version__ = metadata.version("adamllm")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"


def _source_digest() -> str:
    # Any change to the method's code changes every cache key that depends on it:
    # stale datasets are never mistaken for fresh ones.
    digest = hashlib.sha256()
    package_dir = Path(__file__).parent
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


CODE_VERSION = f"{__version__}+{_source_digest()}"
