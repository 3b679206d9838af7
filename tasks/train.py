"""Tasks of the training pipeline: seed data, and a training run."""

from typing import Any

from prefect import task
from prefect.deployments import run_deployment

from adamllm_core.dataset import DatasetRef
from adamllm_core.errors import ConfigError
from adamllm_core.training.seed import SeedConfig, build_seed
from adamllm_core.training.trainer import (
    finished_run,
    idempotency_key,
    load_train_config,
    train_identity,
    train_to,
)
from tasks.caching import OutputDatasetPolicy
from tasks.reporting import publish_stats, stage_progress


@task(name="build-seed", persist_result=True)
def build_seed_data(
    vision_flan: str,
    allava_caption: str,
    allava_instruct: str,
    image_root: str,
    out: str,
    config: SeedConfig,
) -> DatasetRef:
    """Join Vision-Flan and ALLaVA records into synthesizer tuning data."""
    manifest = build_seed(
        vision_flan, allava_caption, allava_instruct, image_root, out, config, overwrite=True
    )
    publish_stats("seed", out, manifest)
    return DatasetRef.of(out, manifest)


@task(
    name="train-model",
    # key = (output, data fingerprint, config, code) while that run's summary is at the output
    cache_policy=OutputDatasetPolicy(
        expected_identity=lambda i: train_identity(load_train_config(i["config"]), i["data"]),
        stored_identity=lambda out: (finished_run(out) or {}).get("identity"),
    ),
    persist_result=True,
)
def train_model(config: dict[str, Any], data: str, out: str) -> dict[str, Any]:
    """Train (or tune the synthesizer) on a dataset; resumes from the output's last checkpoint."""
    with stage_progress("train", unit="step") as report:

        def progress(step: int, total: int, row: dict[str, Any]) -> None:
            figures = {"loss": f"{row['loss']:.4f}"}
            if row.get("tokens_per_s"):
                figures["tokens/s"] = f"{row['tokens_per_s']:,.0f}"
            report(step, total, figures)

        return train_to(load_train_config(config), data, out, progress=progress)


def train_on_deployment(
    deployment: str, config: dict[str, Any], data: DatasetRef, out: str, *, wait: bool
) -> dict[str, Any]:
    """A training run on the training deployment (its own workers and GPUs). The same data,
    settings and output never train twice: Prefect keeps one flow run per idempotency key.

    wait: block until the run ends and return the finished model's summary (with the flow
    run's id); else return at once with the flow run's id and state.
    """
    run = run_deployment(
        deployment,
        parameters={"config": config, "data": data.uri, "out": out},
        idempotency_key=idempotency_key(data.fingerprint, config, out),
        timeout=None if wait else 0,
    )
    if not wait:
        return {"deployment": deployment, "flow_run": str(run.id), "state": run.state_name}
    summary = finished_run(out)
    if summary is None:
        raise ConfigError(
            f"{deployment} run {run.name} ended {run.state_name} without a finished model at {out}"
        )
    return {**summary, "flow_run": str(run.id)}
