"""A domain's pipeline configuration (deployments/<domain>.yaml), validated by pydantic.

A wrong key or value is an error naming it, e.g. `synthesize.engine.kind: Input should be
'transformers', 'openai' or 'vllm'`.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adamllm_core.errors import ConfigError
from adamllm_core.filtering import FilterConfig
from adamllm_core.ingest import IngestConfig
from adamllm_core.pipeline import GENERAL_OUTPUTS, AssembleConfig, variant_outputs
from adamllm_core.storage import join, normalise_uri
from adamllm_core.synthesis import SynthConfig
from adamllm_core.training.seed import SeedConfig
from adamllm_core.training.trainer import load_train_config


class TuneSynthesizer(BaseModel):
    """Tune the synthesizer on seed data before synthesizing (paper 3.1.1)."""

    model_config = ConfigDict(extra="forbid")

    vision_flan: str
    allava_caption: str
    allava_instruct: str
    image_root: str
    seed: SeedConfig = Field(default_factory=SeedConfig)
    train: dict[str, Any] = Field(description="TrainConfig keys (task: synthesizer), or a preset")

    @model_validator(mode="after")
    def _train_is_valid(self) -> "TuneSynthesizer":
        load_train_config({**self.train, "task": "synthesizer"})
        return self


class PostTrain(BaseModel):
    """Post-train the target model on the single-stage mixture (paper 3.2)."""

    model_config = ConfigDict(extra="forbid")

    train: dict[str, Any] = Field(description="TrainConfig keys, or a preset")
    pipeline: Literal["single_stage", "two_stage", "two_stage_reuse"] = Field(
        default="single_stage",
        description="single_stage trains on the first assemble variant's mixture; two_stage"
        " (ablation): captions first, then synthetic tasks; two_stage_reuse (ablation):"
        " captions first, then synthetic tasks with the captions again",
    )
    deployment: str | None = Field(
        default=None, description="e.g. train/qwen2-vl-2b: run there; else in this flow"
    )

    @model_validator(mode="after")
    def _train_is_valid(self) -> "PostTrain":
        load_train_config(self.train)
        if self.pipeline != "single_stage" and self.deployment:
            raise ValueError(
                f"{self.pipeline} runs in the synth flow; drop deployment or use single_stage"
            )
        return self


class DomainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    source: str = Field(description="image-caption source to ingest (see `adamllm ingest`)")
    out: str = Field(default="runs", description="outputs land under OUT/<domain>/<stage>/")
    ingest: dict[str, Any] = Field(
        default_factory=dict, description="ingest settings (IngestConfig without domain)"
    )
    synthesize: SynthConfig
    filter: FilterConfig
    assemble: AssembleConfig
    schedule: str | None = Field(
        default=None, description="cron schedule of the refresh deployment"
    )
    tune_synthesizer: TuneSynthesizer | None = None
    general_seed: str | None = Field(
        default=None,
        description="seed dataset (`adamllm seed`) for the general_cot variants; default:"
        " the one tune_synthesizer builds",
    )
    post_train: PostTrain | None = None
    browse_rows: int | None = Field(
        default=1000,
        ge=0,
        description="rows of each dataset in the run's HTML data browser (OUT/<domain>/_browse,"
        " linked from the run's artifacts); 0: no browser; null: every row",
    )

    @model_validator(mode="after")
    def _ingest_is_valid(self) -> "DomainConfig":
        self.ingest_config()  # raises with the failing key
        pipeline = self.post_train.pipeline if self.post_train else "single_stage"
        if pipeline != "single_stage" and pipeline not in self.assemble.variants:
            raise ValueError(
                f"post_train.pipeline {pipeline} needs assemble.variants to include {pipeline}"
            )
        if self.general_seed_uri() is None and any(
            output in GENERAL_OUTPUTS for output in variant_outputs(self.assemble)
        ):
            raise ValueError(
                "the general_cot variants need seed data: set general_seed (a dataset"
                " `adamllm seed` wrote) or tune_synthesizer"
            )
        if self.post_train:
            train = load_train_config(self.post_train.train)
            if train.image_resolution != self.assemble.image_resolution:
                raise ValueError(
                    "assemble.image_resolution and post_train.train.image_resolution differ "
                    f"({self.assemble.image_resolution.bounds()} and "
                    f"{train.image_resolution.bounds()}): the mixture's token counts would not "
                    "be the trained ones"
                )
        return self

    def ingest_config(self) -> IngestConfig:
        return IngestConfig.model_validate({**self.ingest, "domain": self.domain})

    def root(self) -> str:
        """The domain's run folder: OUT/<domain>."""
        return join(normalise_uri(self.out), self.domain)

    def uri(self, stage: str) -> str:
        return join(self.root(), stage)

    def general_seed_uri(self) -> str | None:
        if self.general_seed:
            return normalise_uri(self.general_seed)
        return self.uri("seed") if self.tune_synthesizer else None

    def mixture_uris(self) -> dict[str, str]:
        names = variant_outputs(self.assemble)
        return {
            name: self.uri(
                "mixture" if name == "single_stage" else f"mixture-{name.replace('_', '-')}"
            )
            for name in names
        }


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return data


def validation_problems(error: ValidationError, separator: str = "; ") -> str:
    """Each invalid setting as `dotted.key: message`."""
    return separator.join(
        f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
    )


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """`target[a][b][c] = value` for `a.b.c`, making the mappings on the way."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[leaf] = value


def load_domain_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DomainConfig:
    """Read and validate a domain config file, with `overrides` (dotted keys, e.g.
    `synthesize.engine.model`; None: keep the file's); errors name the file and the key."""
    data = read_settings_file(path)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return DomainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_problems(error)}") from None
