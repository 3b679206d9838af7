"""An evaluation suite (deployments/eval-<domain>.yaml): one model on a domain's benchmarks."""

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adamllm_core.config import read_settings_file, set_dotted, validation_problems
from adamllm_core.engines import EngineConfig
from adamllm_core.errors import ConfigError
from adamllm_core.evaluation.benchmarks import benchmark
from adamllm_core.evaluation.run import EvalConfig
from adamllm_core.storage import join, normalise_uri


class BenchmarkData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        description="benchmark file or folder (release or generic form), local or s3://"
    )
    limit: int | None = Field(default=None, gt=0)


class EvalSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str
    name: str = Field(description="run name: outputs land under OUT/<name>/<benchmark>/")
    out: str
    engine: EngineConfig
    benchmarks: dict[str, BenchmarkData] = Field(min_length=1)
    limit: int | None = Field(
        default=None, gt=0, description="default per-benchmark question limit"
    )
    max_new_tokens: int | None = Field(
        default=None, gt=0, description="default: each benchmark's own limit"
    )
    seed: int = 0
    system_prompt: str | None = None
    compare_with: list[str] = Field(
        default_factory=list, description="earlier run folders for the report"
    )
    browse_rows: int | None = Field(
        default=1000,
        ge=0,
        description="predictions of each benchmark in the run's HTML data browser"
        " (OUT/<name>/_browse, linked from the run's artifacts); 0: no browser; null: all",
    )

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, value: dict[str, BenchmarkData]) -> dict[str, BenchmarkData]:
        return {benchmark(name).name: data for name, data in value.items()}

    def run_uri(self) -> str:
        return join(normalise_uri(self.out), self.name)

    def eval_configs(self) -> list[EvalConfig]:
        return [
            EvalConfig(
                benchmark=name,
                data=entry.data,
                engine=self.engine,
                limit=entry.limit or self.limit,
                seed=self.seed,
                system_prompt=self.system_prompt,
                max_new_tokens=self.max_new_tokens,
            )
            for name, entry in self.benchmarks.items()
        ]


def load_suite(path: str | Path | None, overrides: dict[str, Any] | None = None) -> EvalSuite:
    """A suite from a YAML file (if given) with overrides applied; errors name the key."""
    data = read_settings_file(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:  # `model` is short for engine.model
            set_dotted(data, "engine.model" if key == "model" else key, value)
    try:
        return EvalSuite.model_validate(data)
    except ValidationError as error:
        raise ConfigError(
            f"{path or 'evaluation settings'}: {validation_problems(error)}"
        ) from None
    except ValueError as error:
        raise ConfigError(f"{path or 'evaluation settings'}: {error}") from None
