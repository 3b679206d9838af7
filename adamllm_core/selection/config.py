"""A target task's selection config (deployments/select-<target>.yaml), validated by
pydantic: the student and its validation set, the teacher, the pool, budgets and methods,
training and the test set the report scores on. A wrong key or value is an error naming it."""

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adamllm_core.config import read_settings_file, set_dotted, validation_problems
from adamllm_core.engines import EngineConfig
from adamllm_core.errors import ConfigError
from adamllm_core.evaluation.benchmarks import benchmark
from adamllm_core.images import ImagePolicy
from adamllm_core.selection.retrieval import BUDGET_PRESETS, BudgetSplit
from adamllm_core.selection.skills import DEFAULT_MERGE_THRESHOLD
from adamllm_core.selection.switch import SwitchConfig
from adamllm_core.selection.teacher import TeacherPrompts
from adamllm_core.storage import join, normalise_uri
from adamllm_core.training.trainer import load_train_config

Method = Literal[
    "error_driven",
    "random",
    "instruction_similarity",
    "full",
    "no_mistake_identification",
    "no_skill_analysis",
]
# What each method retrieves by: skills named at the erroneous step (the method), skills
# named from the whole reasoning (ablation), the wrong questions' text against the skill
# labels (ablation), the validation questions against the pool's instructions (INSTA-like).
SKILL_METHODS = ("error_driven", "no_mistake_identification", "no_skill_analysis")


class Validation(BaseModel):
    """The target task's small validation set (the paper's is about 1,000 questions)."""

    model_config = ConfigDict(extra="forbid")

    benchmark: str = Field(description="any benchmark the evaluation suite reads")
    data: str = Field(description="its file or folder")
    limit: int | None = Field(default=None, gt=0, description="the first N questions only")


class Pool(BaseModel):
    """The task-agnostic pool: an annotation file (Vision-Flan form or generic records) to
    import, or a pool dataset already imported."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="annotation file (.json, .jsonl, .csv, .tsv) or pool dataset")
    image_root: str | None = Field(default=None, description="default: the file's folder")
    images: ImagePolicy = Field(default_factory=ImagePolicy)
    replay: str | None = Field(
        default=None,
        description="data of the student's own kind (annotation file or pool dataset) added"
        " whole to every selection it is tuned on, against forgetting; none: selections alone",
    )
    labels: str | None = Field(
        default=None,
        description="where pool labels are kept, per teacher, across runs and targets"
        " (default: <out>/labels)",
    )


class Training(BaseModel):
    """How the student is tuned on each selection."""

    model_config = ConfigDict(extra="forbid")

    train: dict[str, Any] = Field(description="TrainConfig keys (the student's model), or a preset")
    deployment: str | None = Field(
        default=None, description="e.g. train/qwen2-vl-7b: run there (waited for); else here"
    )

    @model_validator(mode="after")
    def _train_is_valid(self) -> "Training":
        load_train_config(self.train)
        return self


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="the target task's name")
    out: str = Field(description="output root (local or s3://)")
    student: EngineConfig = Field(description="the student, as it answers the validation set")
    validation: Validation
    teacher: EngineConfig = Field(description="the teacher (text only; a stronger model)")
    switch: SwitchConfig = Field(default_factory=SwitchConfig)
    prompts: TeacherPrompts = Field(default_factory=TeacherPrompts)
    student_max_new_tokens: int = Field(default=256, gt=0)
    student_prompt: Literal["steps", "question"] = Field(
        default="steps",
        description="steps: ask for numbered steps and an answer line; question: the question"
        " alone (a student that always reasons)",
    )
    skill_merge_threshold: float = Field(default=DEFAULT_MERGE_THRESHOLD, ge=0, le=100)
    pool: Pool
    budgets: list[int | Literal["10k", "30k", "100k"]] = Field(
        default_factory=lambda: ["10k"], min_length=1, description="samples per selection"
    )
    split: BudgetSplit = Field(
        default="proportional",
        description="a skill's share of the budget: proportional to its errors, or equal",
    )
    per_task_cap: int | None = Field(default=None, gt=0, description="at most this many per task")
    methods: list[Method] = Field(
        default_factory=lambda: ["error_driven", "random", "instruction_similarity"],
        min_length=1,
    )
    seed: int = Field(default=0, description="seeds the random baseline and fallbacks")
    training: Training | None = Field(default=None, description="none: select only")
    test: Validation | None = Field(
        default=None,
        description="the benchmark the report scores on (default: the validation set itself)",
    )
    eval_batch_size: int = Field(default=8, gt=0)

    @model_validator(mode="after")
    def _checked(self) -> "SelectConfig":
        for part in (self.validation, self.test):
            if part is not None:
                benchmark(part.benchmark)  # an unknown name is an error here, not mid-run
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: a method is named twice")
        return self

    def budget_sizes(self) -> list[int]:
        sizes = [BUDGET_PRESETS[b] if isinstance(b, str) else b for b in self.budgets]
        if any(size <= 0 for size in sizes):
            raise ConfigError(f"budgets: every budget must be positive, got {self.budgets}")
        return list(dict.fromkeys(sizes))

    def uri(self, *parts: str) -> str:
        return join(normalise_uri(self.out), self.target, *parts)

    def labels_root(self) -> str:
        return (
            normalise_uri(self.pool.labels)
            if self.pool.labels
            else join(normalise_uri(self.out), "labels")
        )

    def test_set(self) -> Validation:
        return self.test or self.validation


def load_select_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SelectConfig:
    """Read and validate a selection config file, with `overrides` (dotted keys; None:
    keep the file's); errors name the file and the key."""
    data = read_settings_file(path)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return SelectConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_problems(error)}") from None
