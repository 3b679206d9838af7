"""What a run started from the Prefect UI (or `prefect deployment run --param`) may set.

Flow parameters are these typed models, every field titled and described, so each
deployment's run form is a form, and the server refuses a bad value (naming the field)
before any worker starts. Unset fields keep what the config file says.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from adamllm_core.training.trainer import PRESETS, TrainConfig


class Group(BaseModel):
    """Optional settings that apply under one key of a config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def dotted(self, prefix: str) -> dict[str, Any]:
        """The fields set, as `prefix.field` keys."""
        return {f"{prefix}.{k}": v for k, v in self.model_dump(exclude_none=True).items()}


class EngineChoice(Group):
    """The engine and model a stage runs on; unset fields keep the config file's."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Engine")

    kind: Literal["transformers", "openai", "vllm"] | None = Field(
        default=None,
        title="Engine kind",
        description="transformers (in process), vllm (in process, GPU) or openai (a served"
        " OpenAI-compatible endpoint)",
    )
    model: str | None = Field(
        default=None,
        title="Model",
        min_length=1,
        description="hub id, local folder, object-storage URI of a published model, or a"
        " model built here (tiny:vlm, tiny:lm)",
    )
    batch_size: int | None = Field(
        default=None, title="Batch size", gt=0, description="requests the engine takes at once"
    )
    data_parallel_size: int | None = Field(
        default=None,
        title="Engine actors",
        gt=0,
        description="engines on the Ray pool, one warm engine each (1: in this process)",
    )


class Sampling(Group):
    """How the synthesizer writes; unset fields keep the config file's."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Sampling")

    max_new_tokens: int | None = Field(
        default=None,
        title="Max new tokens",
        gt=0,
        le=32_768,
        description="longest synthesizer output, in tokens",
    )
    temperature: float | None = Field(
        default=None, title="Temperature", ge=0, le=2, description="0: greedy"
    )
    seed: int | None = Field(
        default=None, title="Sampling seed", ge=0, description="seed of sampled outputs"
    )


class Budget(Group):
    """How much post-training the run does; unset fields keep the config file's."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Budget")

    max_steps: int | None = Field(
        default=None,
        title="Max steps",
        gt=0,
        description="stop post-training after this many steps",
    )
    epochs: float | None = Field(
        default=None, title="Epochs", gt=0, description="passes over the mixture (max_steps wins)"
    )


# Defaults of the flows' parameters: nothing replaced
KEEP_ENGINE = EngineChoice()
KEEP_SAMPLING = Sampling()
KEEP_BUDGET = Budget()


def synth_overrides(
    source: str | None,
    out: str | None,
    synthesizer: EngineChoice,
    judge: EngineChoice,
    sampling: Sampling,
    budget: Budget,
) -> dict[str, Any]:
    """The synth flow's form as dotted domain-config keys (see config.load_domain_config)."""
    return {
        **{k: v for k, v in {"source": source, "out": out}.items() if v is not None},
        **synthesizer.dotted("synthesize.engine"),
        **judge.dotted("filter.engine"),
        **sampling.dotted("synthesize"),
        **budget.dotted("post_train.train"),
    }


def _train_field(name: str, field: Any) -> tuple[Any, Any]:
    return (
        field.annotation | None,
        Field(
            default=None,
            title=name.replace("_", " ").capitalize(),
            description=field.description,
            # bounds of the setting itself (gt, le ...) stay with it
            **{
                key: getattr(meta, key)
                for meta in field.metadata
                for key in ("gt", "ge", "lt", "le")
                if getattr(meta, key, None) is not None
            },
        ),
    )


class _TrainSettingsBase(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        title="Training settings",
        # the form refuses a run with neither (the server checks the schema)
        json_schema_extra={"anyOf": [{"required": ["preset"]}, {"required": ["model"]}]},
    )

    @model_validator(mode="after")
    def _preset_or_model(self) -> "_TrainSettingsBase":
        if getattr(self, "preset", None) is None and getattr(self, "model", None) is None:
            raise ValueError("set a preset or a model")
        return self

    def mapping(self) -> dict[str, Any]:
        """The settings set, as load_train_config takes them."""
        return self.model_dump(mode="json", exclude_none=True)


TrainSettings = create_model(
    "TrainSettings",
    __base__=_TrainSettingsBase,
    __doc__="A training run's settings: a preset (Table 9/10 values), and any setting that"
    " replaces the preset's; unset fields keep the preset's or the default.",
    preset=(
        Literal[tuple(PRESETS)] | None,  # type: ignore[valid-type]
        Field(default=None, title="Preset", description="a named set of settings"),
    ),
    **{name: _train_field(name, field) for name, field in TrainConfig.model_fields.items()},
)
