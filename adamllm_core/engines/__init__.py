"""Inference engines behind one interface; the config picks one."""

import functools
import importlib.util
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adamllm_core.engines.base import (
    ChatRequest,
    ChatResult,
    Engine,
    ImageResolution,
    Message,
    SamplingConfig,
)
from adamllm_core.engines.cache import EngineStats, RequestCache, run_cached, shard_cache
from adamllm_core.errors import ConfigError


class EngineConfig(BaseModel):
    """Which engine runs a model, and how."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["transformers", "openai", "vllm"] = "transformers"
    model: str = Field(
        description="Hugging Face id or local checkpoint path (served name for openai)"
    )
    revision: str | None = None
    batch_size: int = Field(
        default=8, gt=0, description="requests per engine call (and per cache batch)"
    )
    # transformers
    device: str = "auto"
    dtype: str = "auto"
    # openai-compatible server
    base_url: str | None = None
    api_key_env: str = Field(
        default="OPENAI_API_KEY", description="environment variable holding the key"
    )
    max_concurrency: int = Field(default=8, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=5, ge=1)
    # The engine pool (see pool.py): engines on Ray actors, shards handed out as they free up
    data_parallel_size: int = Field(
        default=1,
        gt=0,
        description="engine actors on the pool, one warm engine each (1 and no Ray cluster:"
        " the stage runs in this process)",
    )
    ray_address: str | None = Field(
        default=None,
        description="the Ray cluster of the pool (RAY_ADDRESS wins); none: a local Ray when"
        " data_parallel_size > 1",
    )
    gpus_per_engine: float | None = Field(
        default=None,
        ge=0,
        description="GPUs each actor reserves (default: tensor_parallel_size for vllm, 1 for"
        " transformers on cuda, else 0: a CPU actor)",
    )
    shard_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="a shard running longer (a hung engine) goes to a fresh actor",
    )
    # vllm
    tensor_parallel_size: int = Field(default=1, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int | None = None
    trust_remote_code: bool = False
    image_resolution: ImageResolution = Field(
        default_factory=ImageResolution,
        description="pixel bounds for Qwen2-VL-family processors (transformers and vllm; an"
        " openai-compatible server applies its own)",
    )

    @model_validator(mode="after")
    def _needs_url(self) -> "EngineConfig":
        if self.kind == "openai" and not self.base_url:
            raise ValueError("the openai engine needs base_url (e.g. http://127.0.0.1:8000)")
        return self

    def pool_resources(self) -> dict[str, float]:
        """What each pool actor reserves: its GPUs (Ray never gives two actors one card)
        and one CPU."""
        gpus = self.gpus_per_engine
        if gpus is None:
            gpus = (
                self.tensor_parallel_size
                if self.kind == "vllm"
                else 1
                if self.kind == "transformers" and self.device.startswith("cuda")
                else 0
            )
        return {"num_gpus": gpus, "num_cpus": 1}

    def identity_dump(self) -> dict[str, object]:
        """What changes results: the model, the engine and its library's version (they
        sample and round differently), not how it is run (batch size, device, processes)."""
        return {
            "kind": self.kind,
            "library": _library_version(self.kind),
            "model": self.model,
            "revision": self.revision,
            "dtype": self.dtype,
            "image_resolution": self.image_resolution.model_dump(),
        }


@functools.cache  # reads the package's metadata files: once per process
def _library_version(kind: str) -> str:
    from importlib import metadata

    if kind == "openai":
        return "served"  # the server's model is in the engine's model_identity
    try:
        return f"{kind}=={metadata.version(kind)}"
    except metadata.PackageNotFoundError:
        return f"{kind} (not installed)"


def make_engine(config: EngineConfig) -> Engine:
    """The configured engine (heavy state loads on first use); `tiny:*` names resolve here."""
    from adamllm_core.models import resolve_model

    if config.model != (resolved := resolve_model(config.model)):
        config = config.model_copy(update={"model": resolved})
    if config.kind == "transformers":
        from adamllm_core.engines.hf import TransformersEngine

        return TransformersEngine(
            config.model,
            revision=config.revision,
            device=config.device,
            dtype=config.dtype,
            batch_size=config.batch_size,
            trust_remote_code=config.trust_remote_code,
            resolution=config.image_resolution,
        )
    if config.kind == "openai":
        from adamllm_core.engines.openai_compat import OpenAIEngine

        return OpenAIEngine(
            config.model,
            base_url=config.base_url or "",
            api_key=os.environ.get(config.api_key_env),
            revision=config.revision,
            max_concurrency=config.max_concurrency,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
        )
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "engine kind 'vllm' needs the vllm package, which runs on GPUs only: install the gpu extra "
            "(pip install '.[gpu]') on a GPU machine, or use kind 'transformers', or 'openai' with a vllm serve"
        )
    from adamllm_core.engines.vllm_engine import VLLMEngine

    return VLLMEngine(
        config.model,
        revision=config.revision,
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_model_len=config.max_model_len,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
        resolution=config.image_resolution,
    )


__all__ = [
    "ChatRequest",
    "ChatResult",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "ImageResolution",
    "Message",
    "RequestCache",
    "SamplingConfig",
    "make_engine",
    "run_cached",
    "shard_cache",
]
