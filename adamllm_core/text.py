"""Caption cleaning: text that enters a prompt must never carry chat-template control tokens.

A caption with `<|im_end|>` or `<image>` inside it would end a turn or add an image slot
when rendered into a chat template; such tokens are removed (neutralise) or the caption
is rejected (quarantine), never passed through raw.
"""

import re
import unicodedata
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.errors import Rejected

# Special tokens of the chat templates in common MLLM and LLM families, plus the generic
# `<|...|>` form most recent tokenizers use.
CONTROL_TOKEN_PATTERN = re.compile(
    r"<\|[^<>|\s]{1,64}\|>"  # <|im_end|>, <|eot_id|>, <|image_pad|>, <|reserved_special_token_4|>
    r"|</?s>"  # Llama-2 / Mistral BOS, EOS
    r"|<image>|<video>|<audio>|<img>|</img>|<image_\d+>"  # multimodal placeholders
    r"|\[/?INST\]|<<SYS>>|<</SYS>>"  # Llama-2 / Mistral instruction markers
    r"|<start_of_turn>|<end_of_turn>|<start_of_image>|<end_of_image>|<bos>|<eos>"  # Gemma
    r"|<\uff5c[^<>]{1,64}\uff5c>",  # DeepSeek's full-width bars
    flags=re.IGNORECASE,
)
# C0/C1 control characters other than tab and newline, and the NUL that breaks C tokenizers.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t]{2,}")

CaptionRejected = Rejected


class CaptionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    control_tokens: str = Field(
        default="neutralise",
        pattern="^(neutralise|quarantine)$",
        description="captions with chat-template control tokens: strip the tokens, or reject",
    )
    max_chars: int = Field(default=16_384, gt=0, description="longer captions are rejected")


@dataclass(frozen=True)
class CleanCaption:
    text: str
    removed_tokens: tuple[str, ...] = ()


def find_control_tokens(text: str) -> list[str]:
    return CONTROL_TOKEN_PATTERN.findall(text)


def clean_caption(value: object, policy: CaptionPolicy) -> CleanCaption:
    """A caption fit for a prompt, or CaptionRejected with a reason."""
    if value is None:
        raise CaptionRejected("missing_caption", "the record has no caption")
    if not isinstance(value, str):
        raise CaptionRejected("bad_caption", f"caption is a {type(value).__name__}, not text")
    text = unicodedata.normalize("NFC", value)
    text = _CONTROL_CHARS.sub("", text).strip()
    removed: tuple[str, ...] = ()
    tokens = find_control_tokens(text)
    if tokens:
        if policy.control_tokens == "quarantine":
            raise CaptionRejected(
                "control_tokens", f"caption contains chat-template tokens {sorted(set(tokens))}"
            )
        removed = tuple(tokens)
        text = CONTROL_TOKEN_PATTERN.sub(" ", text)
        text = _SPACES.sub(" ", text).strip()
    if not text:
        detail = "caption is empty" + (" once control tokens are removed" if removed else "")
        raise CaptionRejected("empty_caption", detail)
    if len(text) > policy.max_chars:
        raise CaptionRejected(
            "caption_too_long", f"{len(text)} characters > max_chars {policy.max_chars}"
        )
    return CleanCaption(text=text, removed_tokens=removed)
