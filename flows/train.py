"""Flow `train`: one training run, deployed on its own (GPU) work pool."""

from typing import Any

from prefect import flow

from tasks.train import train_model


@flow(name="train", log_prints=True)
def train_flow(config: dict[str, Any], data: str, out: str) -> dict[str, Any]:
    """Train on `data` (a seed or mixture dataset) into `out` with `config` (TrainConfig keys or a preset)."""
    summary = train_model(config, data, out)
    print(
        f"trained {summary['steps']} steps, loss {summary['train_loss']:.3f}, "
        f"padding {summary['padding_fraction']:.1%} → {out}"
    )
    return summary
