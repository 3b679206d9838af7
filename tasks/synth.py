"""Tasks of the synthesis pipeline: synthesize, filter, assemble, export."""

from prefect import task

from adamllm_core.dataset import DatasetRef
from adamllm_core.filtering import FilterConfig
from adamllm_core.pipeline import (
    AssembleConfig,
    assemble,
    assemble_identity,
    export_llamafactory,
    filter_identity,
    general_tasks,
    general_tasks_identity,
    synthesize_identity,
)
from adamllm_core.pool import run_on_pool
from adamllm_core.synthesis import SynthConfig
from tasks.caching import OutputDatasetPolicy
from tasks.reporting import pool_reporter, publish_stats, stage_progress


@task(
    name="synthesize-triplets",
    cache_policy=OutputDatasetPolicy(
        expected_identity=lambda i: synthesize_identity(i["pairs_uri"], i["config"])
    ),
    persist_result=True,
)
def synthesize_triplets(
    pairs_uri: str,
    out: str,
    config: SynthConfig,
    cache_uri: str | None = None,
    overwrite: bool = False,
) -> DatasetRef:
    """Synthesize task triplets from image-caption pairs (requests cached for resume)."""
    with stage_progress("synthesize") as progress:
        manifest = run_on_pool(
            "synthesize",
            [pairs_uri, out],
            config,
            cache_uri=cache_uri,
            overwrite=overwrite,
            progress=progress,
            report=pool_reporter(),
        )
    publish_stats("synthesize", out, manifest)
    return DatasetRef.of(out, manifest)


@task(
    name="filter-consistent",
    cache_policy=OutputDatasetPolicy(
        expected_identity=lambda i: filter_identity(i["triplets_uri"], i["config"]),
        output_parameter="out_kept",
    ),
    persist_result=True,
)
def filter_consistent(
    triplets_uri: str,
    out_kept: str,
    out_rejected: str,
    config: FilterConfig,
    cache_uri: str | None = None,
    overwrite: bool = False,
) -> tuple[DatasetRef, DatasetRef]:
    """Keep triplets whose precise answer follows from the informative one (label Yes)."""
    with stage_progress("filter") as progress:
        kept, rejected = run_on_pool(
            "filter_triplets",
            [triplets_uri, out_kept, out_rejected],
            config,
            cache_uri=cache_uri,
            overwrite=overwrite,
            progress=progress,
            report=pool_reporter(),
        )
    publish_stats("filter", out_kept, kept)
    return DatasetRef.of(out_kept, kept), DatasetRef.of(out_rejected, rejected)


@task(
    name="general-tasks",
    cache_policy=OutputDatasetPolicy(
        expected_identity=lambda i: general_tasks_identity(i["seed_uri"]),
        output_parameter="pairs_out",
    ),
    persist_result=True,
)
def general_task_data(
    seed_uri: str, pairs_out: str, triplets_out: str, overwrite: bool = False
) -> tuple[DatasetRef, DatasetRef]:
    """The seed data in the task format, for Table 5's General CoT ablations."""
    with stage_progress("general-tasks") as progress:
        pairs, triplets = general_tasks(
            seed_uri, pairs_out, triplets_out, overwrite=overwrite, progress=progress
        )
    publish_stats("general-tasks", pairs_out, pairs)
    return DatasetRef.of(pairs_out, pairs), DatasetRef.of(triplets_out, triplets)


@task(
    name="assemble-mixtures",
    cache_policy=OutputDatasetPolicy(
        expected_identity=lambda i: assemble_identity(
            i["pairs_uri"], i["filtered_uri"], i["config"], i["triplets_uri"], i["general"]
        ),
        output_parameter="primary_out",
    ),
    persist_result=True,
)
def assemble_mixtures(
    pairs_uri: str,
    filtered_uri: str,
    outs: dict[str, str],
    primary_out: str,
    config: AssembleConfig,
    triplets_uri: str | None = None,
    general: tuple[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, DatasetRef]:
    """Mix each image's caption task with its synthetic task (single-stage) and the ablation variants."""
    with stage_progress("assemble") as progress:
        manifests = assemble(
            pairs_uri,
            filtered_uri,
            outs,
            config,
            triplets_uri=triplets_uri,
            general=general,
            overwrite=overwrite,
            progress=progress,
        )
    for name, manifest in manifests.items():
        publish_stats(f"assemble-{name.replace('_', '-')}", outs[name], manifest)
    return {name: DatasetRef.of(outs[name], manifest) for name, manifest in manifests.items()}


@task(name="export-llamafactory")
def export_mixture(mixture_uri: str, out: str, dataset_name: str) -> dict:
    """Export a mixture as LLaMA-Factory sharegpt JSON with images and dataset_info.json."""
    return export_llamafactory(mixture_uri, out, dataset_name)
