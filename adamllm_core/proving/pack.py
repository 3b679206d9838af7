"""A models pack: the proving ground's set-up models for one world seed and scale (the base
MLLM, the judge and the tuned synthesizer), copied out of the proving cache so that another
machine skips the 60-90 minutes they take to build on 2 cores (the test suite's gain check
installs one). A pack records the identity it was built for (`ProveConfig.base_identity`
and the synthesizer's settings) and each file's sha256: installing it for another recipe,
or with a changed or missing file, is refused with the reason."""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adamllm_core.errors import ConfigError
from adamllm_core.hashing import canonical_json, sha256_hex
from adamllm_core.proving.experiment import ProveConfig, synthesizer_folder, synthesizer_identity
from adamllm_core.proving.models import cache_key, proving_cache
from adamllm_core.training.trainer import finished_run

PACK_FILE = "pack.json"
# training_args.bin is a pickle the models do not need (and a pack should not execute)
SKIPPED = {"training_args.bin"}


def _copy_model(source: Path, target: Path) -> dict[str, str]:
    target.mkdir(parents=True)
    hashes = {}
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in SKIPPED:
            shutil.copy2(path, target / path.name)
            hashes[path.name] = sha256_hex(path.read_bytes())
    return hashes


def export_pack(config: ProveConfig, out: str | Path) -> Path:
    """Copy the cached models of `config` (built by `adamllm prove` with the same seed and
    scale) into the folder `out`, written whole or not at all."""
    root = proving_cache() / cache_key(config.base_identity())
    if not (root / "models.json").exists():
        raise ConfigError(
            f"no finished models for world seed {config.seed} at scale {config.scale} in"
            f" {root}: build them first (adamllm prove --seed {config.seed} --scale"
            f" {config.scale})"
        )
    models = json.loads((root / "models.json").read_text())
    synthesizer = finished_run(str(root / synthesizer_folder(config) / "model"))
    if synthesizer is None:
        raise ConfigError(f"{root}: the synthesizer is not tuned yet (run adamllm prove first)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    sources = {
        "base": models["base"],
        "judge": models["judge"],
        "synthesizer": synthesizer["final"],
    }
    files = {role: _copy_model(Path(path), staging / role) for role, path in sources.items()}
    measured = {key: models.get(key) for key in ("llm_reading", "judge_accuracy", "training")}
    meta = {
        "identity": synthesizer_identity(config),
        "seed": config.seed,
        "scale": config.scale,
        "files": files,
        "models": measured,
        "synthesizer_run": {k: v for k, v in synthesizer.items() if k != "final"},
    }
    (staging / PACK_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def install_pack(pack: str | Path, config: ProveConfig) -> dict[str, Any]:
    """Put the pack's models where `ensure_base_models` and `ensure_synthesizer` find them
    for `config`, unless models for it are already there; returns models.json's content."""
    pack = Path(pack)
    if not (pack / PACK_FILE).is_file():
        raise ConfigError(f"{pack}: not a models pack (no {PACK_FILE})")
    meta = json.loads((pack / PACK_FILE).read_text())
    wanted = synthesizer_identity(config)
    if canonical_json(meta["identity"]) != canonical_json(wanted):
        differs = sorted(
            f"{part}.{key}"
            for part in wanted
            for key in set(wanted[part]) | set(meta["identity"].get(part, {}))
            if canonical_json(wanted[part].get(key))
            != canonical_json(meta["identity"].get(part, {}).get(key))
        )
        raise ConfigError(
            f"{pack} holds models built for another recipe (differs in: {', '.join(differs)});"
            f" rebuild it: adamllm prove --seed {config.seed} --scale {config.scale}, then"
            f" adamllm prove-pack --seed {config.seed} --scale {config.scale} --out {pack}"
        )
    for role, hashes in meta["files"].items():
        for name, digest in hashes.items():
            path = pack / role / name
            if not path.is_file() or sha256_hex(path.read_bytes()) != digest:
                raise ConfigError(f"{path}: missing or changed since the pack was written")
    root = proving_cache() / cache_key(config.base_identity())
    if (root / "models.json").exists():
        return json.loads((root / "models.json").read_text())
    root.mkdir(parents=True, exist_ok=True)
    finals = {
        "base": root / "base" / "final",
        "judge": root / "judge" / "final",
        "synthesizer": root / synthesizer_folder(config) / "model" / "final",
    }
    for role, final in finals.items():
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(pack / role, final)
    summary = {**meta["synthesizer_run"], "final": str(finals["synthesizer"])}
    (finals["synthesizer"].parent / "train_summary.json").write_text(json.dumps(summary, indent=2))
    models = {
        "base": str(finals["base"]),
        "synth_base": None,  # the synthesizer is tuned already; its backbone is not packed
        "judge": str(finals["judge"]),
        "llm": None,
        **meta["models"],
        "root": str(root),
        "pack": str(pack.resolve()),
    }
    # written last: ensure_base_models takes the models as built once this file exists
    (root / "models.json").write_text(json.dumps(models, indent=2))
    return models
