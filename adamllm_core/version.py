"""Package version and the code versions recorded in manifests and cache keys."""

import ast
import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

try:
    __version__ = metadata.version("adamllm")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

PACKAGE = "adamllm_core"
_PACKAGE_DIR = Path(__file__).parent


def _module_file(name: str) -> Path | None:
    relative = Path(*name.split(".")[1:])
    for path in (_PACKAGE_DIR / relative / "__init__.py", _PACKAGE_DIR / f"{relative}.py"):
        if path.is_file():
            return path
    return None


def _imported(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (function bodies
    included: lazy imports are code the stage runs), with the packages above each."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] == PACKAGE:
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {module for module in found if _module_file(module)}


@cache
def modules_of(*roots: str) -> tuple[str, ...]:
    """`roots` and every module of the package they import, transitively, sorted."""
    seen: set[str] = set()
    pending = [PACKAGE, *roots]
    while pending:
        name = pending.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        pending.extend(_imported(name, path) - seen)
    return tuple(sorted(seen))


@cache
def code_version(*roots: str) -> str:
    """The version of the code a stage runs: the package version and a hash of the source of
    `roots` and the package modules they import. Editing a module a stage does not import
    (the evaluation code, for ingest) leaves that stage's outputs valid; editing one it
    does makes every cache key that depends on it new, so stale data is never taken for
    fresh."""
    digest = hashlib.sha256()
    for name in modules_of(*roots):
        path = _module_file(name)
        assert path is not None
        digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# The whole package's version: for what is not one stage's output (reports, the proving
# world's generator marker); stages use code_version(their module).
CODE_VERSION = f"{__version__}+{_source_digest()}"
