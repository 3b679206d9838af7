"""Tasks of the proving ground: the generated world, its base models, truth measurement, report."""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from adamllm_core.hashing import canonical_json
from adamllm_core.proving.bundles import write_world
from adamllm_core.proving.experiment import (
    ProveConfig,
    gains_table,
    measure_synthesis,
    write_report,
)
from adamllm_core.proving.models import build_initial_models, cache_key, proving_cache
from adamllm_core.training.trainer import load_train_config, train_to


@task(name="make-world", persist_result=True)
def make_world(config: ProveConfig, out: str) -> dict[str, Any]:
    """Write the world's bundles under `out` (kept when the same seed and sizes are there)."""
    marker = Path(out) / "world.json"
    wanted = {
        "seed": config.seed,
        "sizes": config.sizes.model_dump(),
        "world": config.world.model_dump(mode="json"),
    }
    if marker.exists():
        written = json.loads(marker.read_text())
        if canonical_json({k: written.get(k) for k in wanted}) == canonical_json(wanted):
            return written["counts"]
        shutil.rmtree(out)
    return write_world(out, config.seed, config.sizes, config.world)


@task(name="build-base-models", persist_result=True)
def build_base_models(config: ProveConfig, world: str) -> dict[str, str]:
    """The base MLLM (pretrained on the general world) and the judge LM (tuned on general
    triplets), built once per machine under the proving cache, keyed by what makes them."""
    root = proving_cache() / cache_key(config.base_identity())
    if not (root / "models.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".init-", dir=root.parent))
        initial = build_initial_models(staging, config.models, config.world, seed=config.seed)
        root.mkdir(exist_ok=True)
        for path in initial.values():
            target = root / path.name
            if not target.exists():
                path.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        perception = train_to(
            load_train_config({**config.perception, "model": str(root / "vlm-init")}),
            f"{world}/general/pretrain-perception",
            str(root / "base-perception"),
        )
        base = train_to(
            load_train_config({**config.pretrain, "model": perception["final"]}),
            f"{world}/general/pretrain",
            str(root / "base"),
        )
        judge = train_to(
            load_train_config({**config.judge, "model": str(root / "lm-init")}),
            f"{world}/general/judge",
            str(root / "judge"),
        )
        models = {
            "base": base["final"],
            "judge": judge["final"],
            "root": str(root),
            "pretrain_seconds": (perception.get("seconds") or 0) + (base.get("seconds") or 0),
            "judge_seconds": judge.get("seconds"),
        }
        (root / "models.json").write_text(json.dumps(models, indent=2))
    return json.loads((root / "models.json").read_text())


@task(name="measure-synthesis", persist_result=True)
def measure_synthetic_data(
    pairs: str, triplets: str, judged: list[str], kept: str
) -> dict[str, Any]:
    """Parse rate, answer accuracy before and after the filter, and the filter's agreement with truth."""
    return measure_synthesis(pairs, triplets, judged, kept)


@task(name="prove-report")
def prove_report(out: str, report: dict[str, Any]) -> dict[str, str]:
    """report.json / .md / .png, and the table of gains as a Markdown artifact."""
    written = write_report(out, report)
    create_markdown_artifact(
        markdown=f"# Proving ground, seed {report['seed']}\n\n{gains_table(report)}\n",
        key="prove-report",
        description=f"report → {written['report.md']}",
    )
    return written
