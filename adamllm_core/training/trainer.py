"""Training with transformers' Trainer (optionally DeepSpeed ZeRO-2/3): synthesizer tuning
on a `seed` dataset, or post-training on a `mixture` dataset.

Writes checkpoints, `metrics.jsonl` (step, loss, learning rate, tokens/s) and
`loss_curve.png` to the output folder, and resumes from its last checkpoint.
"""

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import ROW_GROUP_SIZE, Dataset
from adamllm_core.engines.base import ImageResolution
from adamllm_core.engines.hf import HFRenderer
from adamllm_core.hashing import config_hash
from adamllm_core.models import publish_model, quiet_transformers, resolve_model
from adamllm_core.pipeline import CAPTION_PROMPTS
from adamllm_core.storage import redact
from adamllm_core.synthesis import synthesizer_system_prompt
from adamllm_core.training.data import Plan, RejectLog, StreamedRecords, training_order
from adamllm_core.training.encoding import (
    IGNORE_INDEX,
    Encoded,
    conversation_segments,
    encode_segments,
    synthesizer_segments,
)

VISION_PARAMETER_MARKERS = ("vision_tower", "visual", "vision_model")
PROGRESS_LINES = 20  # printed per run when progress_every is unset
ProgressCallback = Callable[[int, int, dict[str, Any]], None]


class TrainConfig(BaseModel):
    """Hyper-parameters; presets carry Table 9 (synthesizer) and Table 10 (post-training)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="hub id, local folder or published model URI to start from (tiny:vlm and"
        " tiny:lm are built here)"
    )
    task: Literal["synthesizer", "post_train", "completion"] = Field(
        default="post_train",
        description="seed → synthesizer; mixture → post_train; completions (text LM) → completion",
    )
    loss_on: Literal["replies", "after_opening", "caption_replies"] = Field(
        default="replies",
        description="post_train: replies (assistant turns, paper 3.2); after_opening (every"
        " token after the opening exchange, which is context: language-model training that"
        " reads a given text without learning to predict it); caption_replies (only replies"
        " to a caption request; the synthetic task's turns stay as context: the proving"
        " ground's masked-synthetic mutation, a broken single-stage method)",
    )
    system_prompt: str | None = Field(
        default=None,
        description="synthesizer: the system prompt it is tuned with; default: its family's"
        " own, as synthesis gives it (see synthesis.synthesizer_system_prompt); '' for none",
    )
    trainable: Literal["full", "projector", "vision"] = Field(
        default="full",
        description="projector: the projector alone (LLaVA stage 1); vision: all but the"
        " language model (a random vision tower learning to feed a trained LLM)",
    )
    learning_rate: float = Field(default=1e-5, gt=0, description="peak learning rate")
    vision_learning_rate: float | None = Field(
        default=None, gt=0, description="default: learning_rate"
    )
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(
        default=0.1, ge=0, le=1, description="share of the steps the learning rate warms up"
    )
    lr_scheduler: str = Field(
        default="cosine", description="transformers scheduler name (cosine, linear, constant)"
    )
    epochs: float = Field(default=1.0, gt=0, description="passes over the data")
    max_steps: int = Field(default=-1, description="stop after this many steps (-1: epochs decide)")
    global_batch_size: int = Field(
        default=128, gt=0, description="examples per optimizer step, over all devices"
    )
    per_device_batch_size: int = Field(
        default=1,
        gt=0,
        description="examples per forward pass on one device (the rest: gradient accumulation)",
    )
    max_seq_len: int = Field(
        default=6144, gt=0, description="longest example in tokens, image tokens included"
    )
    group_by_length: bool = Field(default=True, description="batch similar lengths: less padding")
    save_steps: int = Field(
        default=500, gt=0, description="checkpoint (and validate) every this many steps"
    )
    save_total_limit: int = Field(default=2, gt=0, description="checkpoints kept")
    logging_steps: int = Field(
        default=1, gt=0, description="a metrics.jsonl row every this many steps"
    )
    progress_every: int | None = Field(
        default=None,
        gt=0,
        description="a progress line every this many steps (default: about 20 lines a run);"
        " does not change what is trained",
    )
    seed: int = Field(default=0, description="seed of initialisation and data order")
    bf16: bool = Field(default=False, description="bfloat16 mixed precision (GPU)")
    deepspeed: Literal["zero2", "zero3"] | None = Field(
        default=None, description="DeepSpeed ZeRO stage (none: plain data parallel)"
    )
    image_resolution: ImageResolution = Field(
        default_factory=ImageResolution,
        description="pixel bounds for Qwen2-VL-family processors; the mixture's assemble"
        " step must count tokens with the same bounds",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="recompute activations in the backward pass: less memory, ~30% more"
        " compute; on in the real presets (full fine-tuning of 8B/11B at 6,144 tokens needs it)",
    )
    dataloader_workers: int = Field(
        default=0,
        ge=0,
        description="processes per rank that read and encode records ahead of the model"
        " (0: the training process itself)",
    )

    def trained_settings(self) -> dict[str, Any]:
        """The settings that decide what is trained (how often progress is printed does not)."""
        return self.model_dump(mode="json", exclude={"progress_every"})


PRESETS: dict[str, dict[str, Any]] = {
    # Table 10 (single-stage post-training), 1 epoch, global batch 128, max length 6144.
    "qwen2-vl-2b": {
        "model": "Qwen/Qwen2-VL-2B-Instruct",
        "learning_rate": 1e-5,
        "vision_learning_rate": 1e-5,
        "weight_decay": 0.1,
        "warmup_ratio": 0.1,
        "deepspeed": "zero2",
        "bf16": True,
        "gradient_checkpointing": True,
        "dataloader_workers": 4,
    },
    "llava-v1.6-8b": {
        "model": "llava-hf/llama3-llava-next-8b-hf",
        "learning_rate": 2e-5,
        "vision_learning_rate": 2e-6,
        "weight_decay": 0.0,
        "warmup_ratio": 0.03,
        "deepspeed": "zero3",
        "bf16": True,
        "gradient_checkpointing": True,
        "dataloader_workers": 4,
    },
    "llama-3.2-11b": {
        "model": "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "learning_rate": 5e-6,
        "vision_learning_rate": 5e-6,
        "weight_decay": 0.1,
        "warmup_ratio": 0.1,
        "deepspeed": "zero3",
        "bf16": True,
        "gradient_checkpointing": True,
        "dataloader_workers": 4,
    },
    # The error-driven paper's students (arXiv 2412.15652 gives no hyper-parameters): LLaVA-1.5's
    # own fine-tuning recipe (lr 2e-5, warmup 0.03, no weight decay), and Qwen2-VL as above.
    "llava-1.5-7b": {
        "model": "llava-hf/llava-1.5-7b-hf",
        "learning_rate": 2e-5,
        "vision_learning_rate": 2e-6,
        "weight_decay": 0.0,
        "warmup_ratio": 0.03,
        "deepspeed": "zero3",
        "bf16": True,
        "gradient_checkpointing": True,
        "dataloader_workers": 4,
    },
    "qwen2-vl-7b": {
        "model": "Qwen/Qwen2-VL-7B-Instruct",
        "learning_rate": 1e-5,
        "vision_learning_rate": 1e-5,
        "weight_decay": 0.1,
        "warmup_ratio": 0.1,
        "deepspeed": "zero3",
        "bf16": True,
        "gradient_checkpointing": True,
        "dataloader_workers": 4,
    },
    # Table 9 (synthesizer tuning on LLaVA-v1.6-8B): 2 epochs, no weight decay.
    "synthesizer-llava-v1.6-8b": {
        "model": "llava-hf/llama3-llava-next-8b-hf",
        "task": "synthesizer",
        "epochs": 2,
        "learning_rate": 2e-5,
        "vision_learning_rate": 2e-6,
        "weight_decay": 0.0,
        "warmup_ratio": 0.03,
        "deepspeed": "zero3",
        "bf16": True,
        "gradient_checkpointing": True,
        "dataloader_workers": 4,
    },
    # The tiny demo model: same code path, CPU-sized.
    "tiny": {
        "model": "tiny:vlm",
        "learning_rate": 3e-3,
        "weight_decay": 0.0,
        "warmup_ratio": 0.05,
        "global_batch_size": 8,
        "per_device_batch_size": 8,
        "save_steps": 50,
        "max_seq_len": 1024,
    },
}


def load_train_config(data: dict[str, Any]) -> TrainConfig:
    """A config mapping, optionally naming a `preset` whose values it overrides."""
    data = dict(data)
    name = data.pop("preset", None)
    return preset(name, **data) if name else TrainConfig.model_validate(data)


LLAVA_FAMILY = ("llava", "llava_next", "llava_onevision")


def stage1_overrides(config: TrainConfig) -> dict[str, Any]:
    """Two-stage ablation (Appendix E), stage 1 on captions: only the projector for the
    LLaVA family, at learning rate 2e-3; the full model, with the same settings, for others."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(resolve_model(config.model)).model_type
    return {"trainable": "projector", "learning_rate": 2e-3} if model_type in LLAVA_FAMILY else {}


def stage1_train_config(train: dict[str, Any]) -> dict[str, Any]:
    """The two-stage ablation's stage-1 training mapping (see stage1_overrides)."""
    return {**train, **stage1_overrides(load_train_config(train))}


def limit_threads(threads: int) -> None:
    """Give this process's torch `threads` CPU threads: the initializer of a worker process
    that trains beside others on a share of the cores."""
    import torch

    torch.set_num_threads(threads)


def idempotency_key(data_fingerprint: str, train: dict[str, Any], out: str) -> str:
    """One training run per (data, training config, output): the key Prefect deduplicates
    flow runs on (a fingerprint is the same wherever the data lies, so the output must be
    part of it, or a run into a new output would return the old one's flow run)."""
    return f"{data_fingerprint}-{config_hash({'train': train, 'out': out})}"


def preset(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return TrainConfig.model_validate({**PRESETS[name], **overrides})


def deepspeed_config(stage: Literal["zero2", "zero3"], bf16: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {
            "stage": 2 if stage == "zero2" else 3,
            "overlap_comm": False,
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": "auto"},
        # The Trainer's optimizer (with per-module learning rates) runs under ZeRO; never the
        # fused CPU Adam, whose JIT build takes minutes.
        "zero_force_ds_cpu_optimizer": False,
    }
    if stage == "zero3":
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return config


def gloo_allreduce_on_cpu() -> None:
    """Keep DeepSpeed on CPU off its shared-memory allreduce op; gloo's serves.

    DeepSpeed JIT-builds that op (a C++ toolchain at run time), under a bare lock file that a
    build killed midway leaves behind for every later run to wait on forever (CI did, 600 s a
    test), and its two 66 MB buffers per run stay in /dev/shm (RAM) after the run ends. CPU
    ranks are for development and tests; GPUs use NCCL and never build it.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:  # deepspeed.comm.torch.build_shm_op reads this map
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def training_segments(
    row: dict[str, Any], renderer: HFRenderer, config: TrainConfig
) -> list[tuple[str, bool]]:
    """A record's text as (segment, trained) pieces for `config.task` and `config.loss_on`."""
    if config.task == "synthesizer":
        return synthesizer_segments(
            renderer,
            row["caption"],
            row["instruction"],
            row["precise"],
            row["informative"],
            synthesizer_system_prompt(renderer, config.system_prompt),
        )
    if config.task == "completion":
        return [(row["prompt"], False), (row["completion"], True)]
    segments = conversation_segments(renderer, row["messages"])
    if config.loss_on == "after_opening":  # segments alternate (prompt, reply)
        return [(text, index >= 2) for index, (text, _) in enumerate(segments)]
    if config.loss_on == "caption_replies":
        asked = _caption_requests(row)
        return [
            (text, trained and asked[index // 2]) for index, (text, trained) in enumerate(segments)
        ]
    return segments


def encode_row(row: dict[str, Any], renderer: HFRenderer, config: TrainConfig) -> Encoded:
    """One training record as token ids and labels (its image through the processor)."""
    return encode_segments(renderer, training_segments(row, renderer, config), row.get("image"))


class RecordEncoder:
    """`encode_row` as a callable DataLoader workers can unpickle (they are spawned)."""

    def __init__(self, renderer: HFRenderer, config: TrainConfig):
        self.renderer = renderer
        self.config = config

    def __call__(self, row: dict[str, Any]) -> Encoded:
        return encode_row(row, self.renderer, self.config)


def record_lengths(
    data_uri: str, renderer: HFRenderer, config: TrainConfig
) -> tuple[list[int], list[int], list[bool]]:
    """Each shard's row count, each row's length in tokens, read without images (a
    mixture's `tokens` column: the target processor's count, image tokens included; else
    the tokens of its text, each image its one placeholder token), and whether the row is
    held out for validation (a seed dataset's `dev` split)."""
    dataset = Dataset(data_uri)
    shard_rows = [shard.rows for shard in dataset.manifest.shards]
    names = dataset.schema.arrow.names
    if "tokens" in names:
        lengths = [row["tokens"] for row in dataset.iter_rows(["tokens"])]
        held_out = [False] * len(lengths)
        return shard_rows, lengths, held_out
    lengths, held_out = [], []
    for row in dataset.iter_rows([name for name in names if name != "image"]):
        lengths.append(
            sum(
                len(renderer.tokenizer(piece, add_special_tokens=False)["input_ids"])
                for piece, _ in training_segments(row, renderer, config)
            )
        )
        held_out.append(row.get("split") == "dev")
    return shard_rows, lengths, held_out


def _caption_requests(row: dict[str, Any]) -> list[bool]:
    """For each assistant turn: whether it answers a caption request. A mixture's `kind`
    names its rounds in order ("task+caption"); other conversations are read by their
    prompts (a caption prompt of the pool)."""
    turns = row["messages"]
    if row.get("kind"):
        return [part == "caption" for part in row["kind"].split("+")]
    return [
        i > 0 and turns[i - 1]["content"].removeprefix("<image>") in CAPTION_PROMPTS
        for i, turn in enumerate(turns)
        if turn["role"] == "assistant"
    ]


class Collator:
    """Pads a batch; a class, not a closure, so spawned DataLoader workers can unpickle it."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        pad_id = self.pad_id
        longest = max(len(item["input_ids"]) for item in batch)
        ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, item in enumerate(batch):
            n = len(item["input_ids"])
            ids[row, :n] = torch.tensor(item["input_ids"])
            labels[row, :n] = torch.tensor(item["labels"])
            mask[row, :n] = 1
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if batch[0]["pixel_values"] is not None:
            out["pixel_values"] = torch.cat([item["pixel_values"] for item in batch])
            for key in batch[0]:
                if key in ("input_ids", "labels", "pixel_values") or not torch.is_tensor(
                    batch[0][key]
                ):
                    continue
                if _per_token(batch[0], key):  # padded like the ids (Qwen2-VL's token types)
                    out[key] = torch.zeros((len(batch), longest), dtype=batch[0][key].dtype)
                    for row, item in enumerate(batch):
                        out[key][row, : len(item["input_ids"])] = item[key][0]
                else:  # per image: one row each (image_sizes, image_grid_thw)
                    out[key] = torch.cat([item[key] for item in batch])
        return out


def _per_token(item: dict[str, Any], key: str) -> bool:
    return tuple(item[key].shape) == (1, len(item["input_ids"]))


def _optimizer_groups(model: Any, config: TrainConfig) -> list[dict[str, Any]]:
    vision_lr = config.vision_learning_rate or config.learning_rate
    groups: dict[tuple[float, float], list[Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr = vision_lr if any(m in name for m in VISION_PARAMETER_MARKERS) else config.learning_rate
        decay = (
            0.0
            if parameter.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
            else config.weight_decay
        )
        groups.setdefault((lr, decay), []).append(parameter)
    return [
        {"params": params, "lr": lr, "weight_decay": decay}
        for (lr, decay), params in groups.items()
    ]


def _freeze_for(model: Any, trainable: str) -> None:
    if trainable == "projector":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = "multi_modal_projector" in name or "merger" in name
    elif trainable == "vision":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = not ("language_model" in name or "lm_head" in name)


def plot_loss(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="#d95f02", label="train")
    validation = metrics_path.parent / VALIDATION_METRICS
    if validation.exists():
        points = [json.loads(line) for line in validation.read_text().splitlines() if line]
        axis.plot(
            [p["step"] for p in points],
            [p["validation_loss"] for p in points],
            color="#1b9e77",
            marker="o",
            label="validation (dev split)",
        )
        axis.legend()
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path)
    plt.close(figure)


def train_identity(config: TrainConfig, data_uri: str) -> str:
    """What a training run is made from: the data's fingerprint, the config, the code."""
    from adamllm_core.hashing import canonical_json, sha256_hex
    from adamllm_core.version import code_version

    return sha256_hex(
        canonical_json(
            {
                "data": Dataset(data_uri).manifest.fingerprint,
                "config": config.trained_settings(),
                "code": code_version(__name__),
            }
        )
    )[:32]


def finished_run(out_uri: str) -> dict[str, Any] | None:
    """The summary of a finished run at `out_uri`, if any."""
    from adamllm_core.storage import filesystem, join

    fs, path = filesystem(out_uri)
    summary = join(path, "train_summary.json")
    return json.loads(fs.cat_file(summary)) if fs.exists(summary) else None


def train_to(
    config: TrainConfig,
    data_uri: str,
    out_uri: str,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Train into `out_uri` (local or object storage); a finished identical run is returned as
    is. `progress`: see `train`.

    Object storage: the run trains in a local staging folder, which is synced to the URI
    after every checkpoint and at the end, and restored from it to resume.
    """
    from adamllm_core.storage import filesystem, normalise_uri, protocol_of

    identity = train_identity(config, data_uri)
    done = finished_run(out_uri)
    if done and done.get("identity") == identity:
        return done
    out_uri = normalise_uri(out_uri)
    if protocol_of(out_uri) == "file":
        return train(config, data_uri, out_uri, identity=identity, progress=progress)
    fs, remote = filesystem(out_uri)
    staging = (
        Path(os.environ.get("ADAMLLM_TRAIN_STAGING", "~/.cache/adamllm/train")).expanduser()
        / identity
    )
    staging.mkdir(parents=True, exist_ok=True)
    # One process per node restores (the others wait on the lock, then find it done): the
    # latest complete checkpoint, when this node lacks it (a fresh node, or one that held
    # only its own ranks' partitions of it)
    with FileLock(str(staging / ".restore.lock")):
        latest = _latest_checkpoint(
            [p.rsplit("/", 2)[-2] for p in fs.glob(f"{remote}/checkpoint-*/{RUN_IDENTITY}")]
        )
        here = _latest_checkpoint(
            [p.parent.name for p in staging.glob(f"checkpoint-*/{RUN_IDENTITY}")]
        )
        if latest is not None and (here is None or latest[0] > here[0]):
            name = latest[1]
            fs.get(f"{remote}/{name}/", str(staging / name) + "/", recursive=True)
            for small in (RUN_IDENTITY, "metrics.jsonl", VALIDATION_METRICS):
                if fs.exists(f"{remote}/{small}"):
                    fs.get_file(f"{remote}/{small}", str(staging / small))

    class BucketSync:
        def upload(self, checkpoint: Path) -> None:
            """This node's files of a new checkpoint (its ranks' partitions), all but the
            run-identity file: in the bucket, too, that file marks a complete checkpoint."""
            files = [
                p for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != RUN_IDENTITY
            ]
            fs.put(
                [str(p) for p in files],
                [
                    f"{remote}/{checkpoint.name}/{p.relative_to(checkpoint).as_posix()}"
                    for p in files
                ],
            )

        def complete(self, checkpoint: Path) -> None:
            """Once every node uploaded: the run's small files (a resume needs the run's
            identity beside the checkpoint), then the checkpoint's run-identity file;
            remote checkpoints the Trainer rotated out locally go."""
            for name in (RUN_IDENTITY, "metrics.jsonl", VALIDATION_METRICS):
                if (staging / name).exists():
                    fs.put_file(str(staging / name), f"{remote}/{name}")
            fs.put_file(
                str(checkpoint / RUN_IDENTITY), f"{remote}/{checkpoint.name}/{RUN_IDENTITY}"
            )
            kept = {p.name for p in staging.glob("checkpoint-*")}
            for path in fs.glob(f"{remote}/checkpoint-*"):
                if path.rstrip("/").rsplit("/", 1)[-1] not in kept:
                    fs.rm(path, recursive=True)

    summary = train(
        config, data_uri, str(staging), identity=identity, sync=BucketSync(), progress=progress
    )
    summary["final"] = f"{out_uri}/final"  # not this node's staging folder
    if int(os.environ.get("RANK", "0")) != 0:
        return summary  # rank 0 alone holds the whole final model and publishes the run
    # final/ first (published with its manifest, so an engine on any node pulls and checks
    # it), the rest, the summary last: a reader that finds the summary finds it all
    publish_model(staging / "final", f"{out_uri}/final")
    (staging / "train_summary.json").write_text(json.dumps(summary, indent=2))
    for path in staging.iterdir():
        if path.name not in ("final", "train_summary.json") and not path.name.startswith("."):
            if path.is_dir():
                fs.put(str(path) + "/", f"{remote}/{path.name}/", recursive=True)
            else:
                fs.put_file(str(path), f"{remote}/{path.name}")
    fs.put_file(str(staging / "train_summary.json"), f"{remote}/train_summary.json")
    return summary


def _latest_checkpoint(names: list[str]) -> tuple[int, str] | None:
    steps = [(int(name.split("-")[1]), name) for name in names if name.split("-")[1].isdigit()]
    return max(steps) if steps else None


RUN_IDENTITY = "run_identity"
RUN_COUNTS = "run_counts.json"
VALIDATION_METRICS = "validation_metrics.jsonl"
REFUSAL_KINDS = ("processor_error", "too_long")


def _own_checkpoints(out: Path, identity: str) -> list[Path]:
    """This run's complete checkpoints in `out`, oldest first. Checkpoints of another run
    (other settings, data or code: another identity, or none recorded) are stale: resuming
    from them would continue the old run under the new name. Rank 0 removes them before it
    records this run's identity, so a rank that reads the new identity finds them gone."""
    marker = out / RUN_IDENTITY
    recorded = marker.read_text().strip() if marker.exists() else None
    if recorded != identity:
        if int(os.environ.get("RANK", "0")) == 0:
            for stale in out.glob("checkpoint-*"):
                shutil.rmtree(stale)
            (out / "metrics.jsonl").unlink(missing_ok=True)
            staging = out / f".{RUN_IDENTITY}.tmp"
            staging.write_text(identity)
            staging.replace(marker)
        return []
    # Each checkpoint names its run last: a checkpoint without it was cut short.
    complete = sorted(
        (p for p in out.glob("checkpoint-*") if (p / RUN_IDENTITY).exists()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for checkpoint in complete:
        made_by = (checkpoint / RUN_IDENTITY).read_text().strip()
        if made_by != identity:
            raise ValueError(
                f"{checkpoint} was made by run {made_by[:12]}, not by this run ({identity[:12]}:"
                " other data, settings or code); resuming from it would continue that run."
                " Remove it, or train into another output"
            )
    return complete


def train(
    config: TrainConfig,
    data_uri: str,
    out_dir: str,
    *,
    identity: str | None = None,
    sync: Any = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Train and save to `out_dir` (a local folder); resumes from its last checkpoint.

    `sync`: after each checkpoint every node's local rank 0 calls `sync.upload(checkpoint)`
    (its own ranks' files), then, once all have, rank 0 `sync.complete(checkpoint)`.
    `progress(step, max_steps, figures)`: on rank 0 after each logged step, with the loss,
    tokens/s and seconds left; a line is printed every `config.progress_every` steps."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)
    model_path = resolve_model(config.model)
    renderer = HFRenderer(model_path, resolution=config.image_resolution)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    shard_rows, lengths, held_out = record_lengths(data_uri, renderer, config)
    fits = [length <= config.max_seq_len for length in lengths]
    too_long = fits.count(False)
    examples = sum(fit and not dev for fit, dev in zip(fits, held_out, strict=True))
    if not examples:
        reason = (
            f"all {too_long} are longer than max_seq_len {config.max_seq_len}"
            if too_long
            else "it has no rows outside its dev split"
            if lengths
            else "it has no rows"
        )
        raise ValueError(f"{data_uri}: nothing to train on: {reason}")

    def order(dev: bool, readers_world: int, readers_workers: int) -> Plan:
        return training_order(
            shard_rows,
            ROW_GROUP_SIZE,
            [
                n if fit and d == dev else -1
                for n, fit, d in zip(lengths, fits, held_out, strict=True)
            ],
            batch_size=config.per_device_batch_size,
            world=readers_world,
            workers=readers_workers,
            seed=config.seed,
            group_by_length=config.group_by_length,
        )

    plan = order(False, world, config.dataloader_workers)
    # the dev split (validation loss): small, read by one reader per rank
    validation = order(True, 1, 0) if any(fit and d for fit, d in zip(fits, held_out)) else None

    run_identity = identity or train_identity(config, data_uri)
    checkpoints = _own_checkpoints(out, run_identity)
    # Weights come from the checkpoint itself: the Trainer's own reload of a LLaVA checkpoint
    # left the freshly initialised weights in place (seen with transformers 5.24).
    start = (
        str(checkpoints[-1])
        if checkpoints and (checkpoints[-1] / "model.safetensors").exists()
        else model_path
    )
    auto = AutoModelForImageTextToText if renderer.multimodal else AutoModelForCausalLM
    quiet_transformers()
    # safetensors only: a pickled .bin checkpoint could run code when loaded
    model = auto.from_pretrained(
        start, dtype=torch.bfloat16 if config.bf16 else torch.float32, use_safetensors=True
    )
    _freeze_for(model, config.trainable)
    accumulation = max(1, config.global_batch_size // (config.per_device_batch_size * world))
    # tokens and padding slots trained here, plus those before the checkpoint resumed from
    counted = {"tokens": 0, "slots": 0, "trained": 0}
    before = (
        json.loads((checkpoints[-1] / RUN_COUNTS).read_text())
        if checkpoints and (checkpoints[-1] / RUN_COUNTS).exists()
        else {}
    )

    def run_counts(device: Any) -> dict[str, int]:
        summed = _sum_over_ranks(list(counted.values()), device)  # a collective: every rank
        return {k: before.get(k, 0) + n for k, n in zip(counted, summed, strict=True)}

    rejects = RejectLog(out / "refused", rank)
    if not checkpoints:
        rejects.clear()  # a fresh run: refusals of an earlier one are not this run's
    metrics_path = out / "metrics.jsonl"

    class Metrics(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.perf_counter()
            self.tokens_seen = 0
            self.began = (self.last, 0)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = (time.perf_counter(), state.global_step)  # after a resume too

        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            logs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            if not logs or not state.is_world_process_zero:
                return
            if "eval_loss" in logs:  # the dev split's loss, in a file of its own
                row = {"step": state.global_step, "validation_loss": logs["eval_loss"]}
                with open(out / VALIDATION_METRICS, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                return
            if "loss" not in logs:
                return
            now = time.perf_counter()
            seen = int(state.num_input_tokens_seen)  # non-padding tokens, counted by the Trainer
            tokens = seen - self.tokens_seen
            self.tokens_seen, elapsed, self.last = seen, now - self.last, now
            row = {
                "step": state.global_step,
                "loss": logs["loss"],
                "learning_rate": logs.get("learning_rate"),
                "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
            }
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            step, total = state.global_step, state.max_steps
            left = seconds_left(step, total, *self.began, now)
            if progress is not None:
                progress(step, total, {**row, "seconds_left": left})
            every = config.progress_every or max(1, round(total / PROGRESS_LINES))
            if step % every == 0 or step == total or step == self.began[1] + 1:
                print(progress_line(row, total, left), flush=True)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            totals = run_counts(args.device)
            checkpoint = out / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero:
                (checkpoint / RUN_COUNTS).write_text(json.dumps(totals))
                (checkpoint / RUN_IDENTITY).write_text(run_identity)  # last: it is complete
            _barrier()  # every rank's ZeRO partition is written before any node uploads
            if sync is None:
                return
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                sync.upload(checkpoint)  # each node its own ranks' partitions
            _barrier()  # every node's files are up before the checkpoint is marked complete
            if state.is_world_process_zero:
                sync.complete(checkpoint)

    if config.deepspeed:
        gloo_allreduce_on_cpu()
    arguments = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=config.lr_scheduler,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        train_sampling_strategy="sequential",  # the order above: seeded, and exact on resume
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=config.dataloader_workers,
        # Workers start fresh, not forked: a training process inside a Prefect flow run
        # holds threads and handlers that made forked workers die at exit (code 1).
        dataloader_multiprocessing_context="spawn" if config.dataloader_workers else None,
        dataloader_persistent_workers=config.dataloader_workers > 0,
        eval_strategy="steps" if validation else "no",
        eval_steps=config.save_steps,
        per_device_eval_batch_size=config.per_device_batch_size,
        prediction_loss_only=True,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        deepspeed=deepspeed_config(config.deepspeed, config.bf16) if config.deepspeed else None,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    train_set, validation_set = (
        StreamedRecords(
            data_uri,
            records,
            RecordEncoder(renderer, config),
            batch_size=config.per_device_batch_size,
            max_seq_len=config.max_seq_len,
            rejects=rejects,
        )
        if records
        else None
        for records in (plan, validation)
    )

    class GroupedTrainer(Trainer):
        def create_optimizer(self) -> Any:
            if self.optimizer is None:
                self.optimizer = torch.optim.AdamW(_optimizer_groups(self.model, config))
            return self.optimizer

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any):
            # counted here, in the training process: the collator may run in workers
            mask = inputs["attention_mask"]
            counted["tokens"] += int(mask.sum())
            counted["slots"] += mask.numel()
            counted["trained"] += int((inputs["labels"] != IGNORE_INDEX).sum())
            return super().training_step(model, inputs, *args, **kwargs)

    trainer = GroupedTrainer(
        model=model,
        args=arguments,
        train_dataset=train_set,
        eval_dataset=validation_set,
        data_collator=Collator(renderer.tokenizer.pad_token_id),
        callbacks=[Metrics()],
    )
    # One progress line per log (step of total, time left) in place of the raw log dicts:
    # tqdm bars garble Prefect's captured logs.
    trainer.remove_callback(PrinterCallback)
    if not checkpoints:
        (out / VALIDATION_METRICS).unlink(missing_ok=True)
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    validation_loss = (
        trainer.evaluate()["eval_loss"] if validation_set is not None else None
    )  # after the last step
    final = out / "final"
    trainer.save_model(str(final))  # rank 0 writes; ZeRO-3 gathers the shards first
    totals = run_counts(trainer.args.device)
    refused, refused_kinds = rejects.read()
    refused_total, *kind_totals = _sum_over_ranks(
        [len(refused), *(refused_kinds.get(kind, 0) for kind in REFUSAL_KINDS)],
        trainer.args.device,
    )
    summary = {
        "examples": examples,
        "dropped_too_long": too_long,
        "refused": refused_total,
        "refused_by_reason": {k: n for k, n in zip(REFUSAL_KINDS, kind_totals, strict=True) if n},
        "refused_ids": sorted(refused)[:20],
        "repeated_for_balance": plan.padded,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "validation_loss": validation_loss,
        "validation_examples": len(set(validation.order)) if validation else 0,
        "padding_fraction": round(1 - totals["tokens"] / max(1, totals["slots"]), 4),
        "world_size": world,
        "dataloader_workers": config.dataloader_workers,
        "gradient_checkpointing": bool(getattr(model, "is_activation_checkpointing", False)),
        "resumed_from": checkpoints[-1].name if checkpoints else None,
        "final": str(final),
        "trained_tokens": totals["trained"],
        "epochs": config.epochs,
        "steps_per_epoch": math.ceil(
            len(plan.order) / (config.per_device_batch_size * accumulation * world)
        ),
        "identity": identity or train_identity(config, data_uri),
        # what it was trained on and with (for `adamllm lineage`)
        "data": redact(data_uri),
        "data_fingerprint": Dataset(data_uri).manifest.fingerprint,
        "config_hash": config_hash(config.trained_settings()),
        "model": config.model,
        "seconds": round(result.metrics.get("train_runtime", 0.0), 1),
        "samples_per_s": round(result.metrics.get("train_samples_per_second", 0.0), 1),
    }
    if trainer.is_world_process_zero():  # one writer under the deepspeed launcher
        renderer.processor.save_pretrained(str(final))
        if metrics_path.exists():
            plot_loss(metrics_path, out / "loss_curve.png")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    _end_process_group()
    return summary


def _end_process_group() -> None:
    """Every rank done, then the process group closed: a rank that exits with the group's
    threads still running aborts ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seconds_left(
    step: int, max_steps: int, began: float, began_step: int, now: float
) -> float | None:
    """At the pace since `began` (at `began_step`: a resume counts from there)."""
    done = step - began_step
    if done <= 0 or max_steps <= step:
        return None
    return (now - began) / done * (max_steps - step)


def progress_line(row: dict[str, Any], max_steps: int, left: float | None) -> str:
    """`step 250/2500 (10%) · loss 0.4477 · 7,302 tokens/s · about 22 min left`."""
    step = row["step"]
    parts = [f"step {step}/{max_steps} ({100 * step // max(1, max_steps)}%)"]
    parts.append(f"loss {row['loss']:.4f}")
    if row.get("tokens_per_s"):
        parts.append(f"{row['tokens_per_s']:,.0f} tokens/s")
    if left is not None:
        parts.append(
            f"about {left / 60:.0f} min left" if left >= 60 else f"about {left:.0f} s left"
        )
    return " · ".join(parts)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _sum_over_ranks(values: list[int], device: Any) -> list[int]:
    """Per-rank counters summed over all ranks (the values themselves when not distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
