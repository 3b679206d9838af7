"""Flow `train`: one training run, deployed on its own (GPU) work pool."""

from typing import Any

from prefect import flow

from adamllm_core.run_parameters import TrainSettings
from tasks.train import train_model


@flow(name="train", log_prints=True)
def train_flow(config: TrainSettings, data: str, out: str) -> dict[str, Any]:
    """Train on a seed or mixture dataset; resumes from the output's last checkpoint, and a
    finished run of the same data and settings is not run again.

    Args:
        config: the training settings: a preset and the settings that replace its values
        data: the dataset to train on (a mixture, or seed data for the synthesizer), local
            or s3://
        out: where the run writes checkpoints, metrics and final/ (local or s3://)
    """
    summary = train_model(config.mapping(), data, out)
    print(
        f"trained {summary['steps']} steps, loss {summary['train_loss']:.3f}, "
        f"padding {summary['padding_fraction']:.1%} → {out}"
    )
    return summary
