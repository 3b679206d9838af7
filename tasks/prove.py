"""Tasks of the proving ground: the generated world, its base models, truth measurement, report."""

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from adamllm_core.proving.experiment import (
    ProveConfig,
    ensure_base_models,
    ensure_initial_models,
    ensure_synthesizer,
    ensure_world,
    gains_table,
    measure_synthesis,
    write_report,
)
from adamllm_core.proving.pack import install_pack
from adamllm_core.proving.selection import (
    SelectionSetup,
    ensure_selection_models,
    ensure_selection_world,
)


@task(name="make-world", persist_result=True)
def make_world(config: ProveConfig, out: str) -> dict[str, Any]:
    """Write the world's bundles under `out` (kept when the same seed and sizes are there)."""
    return ensure_world(config, out)


@task(name="install-models-pack")
def install_models_pack(pack: str, config: ProveConfig) -> dict[str, Any]:
    """The set-up models from a pack (see proving.pack), unless built here already."""
    return install_pack(pack, config)


@task(name="build-base-models", persist_result=True)
def build_base_models(config: ProveConfig, world: str) -> dict[str, Any]:
    """The base MLLM and the judge LM, built once per machine (see ensure_base_models)."""
    return ensure_base_models(config, world)


@task(name="tune-synthesizer", persist_result=True)
def tune_synthesizer_once(
    config: ProveConfig, world: str, models: dict[str, Any]
) -> dict[str, Any]:
    """The synthesizer tuned on the world's seed data, once per machine (see ensure_synthesizer)."""
    return ensure_synthesizer(config, world, models)


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


@task(name="selection-world", persist_result=True)
def make_selection_world(seed: int, files: str, setup: SelectionSetup) -> dict[str, Any]:
    """The error-driven experiment's files (student data, pool, replay, benchmarks); kept
    when written for the same seed and setup."""
    return ensure_selection_world(seed, files, setup)


@task(name="build-selection-models", persist_result=True)
def build_selection_models(
    config: ProveConfig, world: str, files: str, models: dict[str, Any], setup: SelectionSetup
) -> dict[str, Any]:
    """The weak student and the teacher, once per machine (see ensure_selection_models)."""
    ensure_initial_models(config, Path(models["root"]))  # a pack brings only built models
    return ensure_selection_models(
        models, world, files, setup, config.perception, config.pretrain, config.seed
    )
