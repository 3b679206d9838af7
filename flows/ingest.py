"""Flow `ingest`: one source into a `pairs` dataset."""

from prefect import flow

from adamllm_core.dataset import DatasetRef
from adamllm_core.ingest import IngestConfig
from tasks.ingest import ingest_pairs


@flow(name="ingest", log_prints=True)
def ingest_flow(source: str, out: str, config: IngestConfig, overwrite: bool = False) -> DatasetRef:
    """Ingest image-caption data from a folder, annotation file, ShareGPT JSON or Parquet."""
    return ingest_pairs(source, out, config, overwrite=overwrite)
