"""The ingest task: a source becomes a `pairs` dataset."""

from prefect import task

from adamllm_core.dataset import DatasetRef
from adamllm_core.ingest import IngestConfig, ingest, ingest_identity
from tasks.caching import OutputDatasetPolicy
from tasks.reporting import publish_stats, stage_progress


@task(
    name="ingest-pairs",
    cache_policy=OutputDatasetPolicy(
        expected_identity=lambda inputs: ingest_identity(inputs["source"], inputs["config"])
    ),
    persist_result=True,
)
def ingest_pairs(
    source: str, out: str, config: IngestConfig, overwrite: bool = False
) -> DatasetRef:
    """Ingest image-caption pairs from a source into a dataset, resuming unfinished shards."""
    with stage_progress("ingest") as progress:
        manifest = ingest(source, out, config, overwrite=overwrite, progress=progress)
    publish_stats("ingest", out, manifest)
    return DatasetRef.of(out, manifest)
