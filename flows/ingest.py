"""Flow `ingest`: one source into a `pairs` dataset."""

from prefect import flow

from adamllm_core.dataset import DatasetRef
from adamllm_core.ingest import IngestConfig
from tasks.ingest import ingest_pairs


@flow(name="ingest", log_prints=True)
def ingest_flow(source: str, out: str, config: IngestConfig, overwrite: bool = False) -> DatasetRef:
    """Ingest image-caption data into a pairs dataset: images checked and normalised,
    captions cleaned, every rejected record quarantined with its reason.

    Args:
        source: a folder of images with an annotation file, an annotation file
            (JSONL/JSON/CSV/TSV), ShareGPT JSON or Parquet; local or s3://
        out: where the pairs dataset is written (local folder or s3:// URI)
        config: ingest settings (domain, image checks, caption rules, shard size)
        overwrite: replace a dataset made from another source or with other settings
    """
    return ingest_pairs(source, out, config, overwrite=overwrite)
