"""One interface for every inference engine: batched chat or text requests in, text,
token counts and (when asked) choice scores out, in input order.

Choice scoring is defined once for all engines: the score of a choice is the sum of the
log-probabilities of the tokens of `prompt + choice` that start at or after the end of
`prompt` (character offsets), so a label is decided by comparing scores, never by
parsing free text.
"""

import hashlib
from abc import ABC, abstractmethod
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adamllm_core.errors import Rejected
from adamllm_core.hashing import canonical_json

# The official evaluation's cap for Qwen2-VL: 1,280 visual tokens of 28x28 pixels.
PAPER_MAX_PIXELS = 1280 * 28 * 28


class ImageResolution(BaseModel):
    """Pixel bounds for processors that size an image by its pixel count (the Qwen2-VL
    family): the image is resized to within [min_pixels, max_pixels] before it becomes
    visual tokens, so a 4000x3000 photo is not 15K tokens that overflow max_model_len.
    LLaVA-NeXT (a grid of at most 672-pixel tiles) and Mllama (at most 4 tiles) bound
    their tokens themselves; these settings leave them as they are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_pixels: int | None = Field(default=None, gt=0, description="null: the processor's own")
    max_pixels: int | None = Field(
        default=PAPER_MAX_PIXELS,
        gt=0,
        description="1280*28*28, the official evaluation's; null: the processor's own",
    )

    @model_validator(mode="after")
    def _ordered(self) -> "ImageResolution":
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self

    def bounds(self) -> dict[str, int]:
        """The set bounds, as processors and vLLM's mm_processor_kwargs take them."""
        return {
            name: value
            for name, value in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels))
            if value is not None
        }

    def apply(self, processor: object) -> bool:
        """Set the bounds on a loaded processor; whether it sizes images by pixel count."""
        images = getattr(processor, "image_processor", processor)
        size = getattr(images, "size", None)
        if not hasattr(images, "temporal_patch_size") or size is None:
            return False
        if self.min_pixels is not None:
            size["shortest_edge"] = self.min_pixels
        if self.max_pixels is not None:
            size["longest_edge"] = self.max_pixels
        return True


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(default=512, ge=0)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0
    stop: tuple[str, ...] = Field(
        default=(), description="strings that end generation (not included)"
    )
    ignore_eos: bool = Field(
        default=False, description="run past the end-of-turn token (synthesis needs it)"
    )
    skip_special_tokens: bool = Field(
        default=True, description="False keeps turn delimiters in the text"
    )


class Message(BaseModel):
    """A chat turn. `images` placeholders come first in the turn, in request image order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str
    images: int = Field(default=0, ge=0)


class ChatRequest(BaseModel):
    """Either chat `messages` (rendered with the model's chat template) or a raw `prompt`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    images: tuple[bytes, ...] = ()
    continue_final_message: bool = Field(
        default=False, description="leave the last message open for the model to continue"
    )
    choices: tuple[str, ...] | None = Field(
        default=None, description="score these continuations instead of generating"
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _one_kind(self) -> "ChatRequest":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a request has messages or a prompt, not both or neither")
        if self.messages is not None and sum(m.images for m in self.messages) != len(self.images):
            raise ValueError("image placeholders in messages must match the images given")
        if self.prompt is not None and self.images:
            raise ValueError("raw prompts take no images")
        if self.choices is not None and self.prompt is None:
            raise ValueError("choices are scored after a raw prompt")
        return self

    def image_hashes(self) -> list[str]:
        return [hashlib.sha256(image).hexdigest() for image in self.images]


class ChatResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length", "scored"] = "stop"
    choice_scores: dict[str, float] | None = None
    # The engine refused this one request (RequestRejected): its row is quarantined with
    # this reason, the others go on, and it is never cached (a later run asks again).
    error_reason: str | None = None
    error_detail: str = ""

    def refusal(self) -> "Rejected | None":
        """The engine's refusal of this request, as the quarantine reason it becomes."""
        return None if self.error_reason is None else Rejected(self.error_reason, self.error_detail)


class RequestRejected(Rejected):
    """One request's own content is refused: an HTTP 4xx other than 429, a prompt longer
    than the model's context, an image the processor rejects. Not for transient failures
    (timeouts, 5xx, storage): those fail the shard, which a re-run retries."""

    def result(self) -> "ChatResult":
        return ChatResult(error_reason=self.reason, error_detail=self.detail[:2000])


class EngineError(RuntimeError):
    """The engine broke its contract (e.g. returned another number of results than asked)."""


def request_key(model_identity: str, rendered_prompt: str, request: ChatRequest) -> str:
    """Cache key of one request: model and revision, rendered prompt, images, sampling, choices."""
    return hashlib.sha256(
        canonical_json(
            {
                "model": model_identity,
                "prompt": rendered_prompt,
                "images": request.image_hashes(),
                "sampling": request.sampling.model_dump(mode="json"),
                "choices": list(request.choices) if request.choices is not None else None,
            }
        ).encode()
    ).hexdigest()


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Engine(ABC):
    """An inference engine. Subclasses load heavy state lazily and keep it until close()."""

    kind: str

    @property
    @abstractmethod
    def model_identity(self) -> str:
        """Model id and revision (or a local checkpoint's content fingerprint)."""

    @property
    def results_identity(self) -> str:
        """What a cached result depends on beyond the request: the model, and how this
        engine turns images into tokens where that is not in the prompt text."""
        return self.model_identity

    @abstractmethod
    def render(self, request: ChatRequest) -> str:
        """The exact prompt text the model sees (chat template applied)."""

    @abstractmethod
    def run(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Results in input order."""

    def close(self) -> None:
        pass
