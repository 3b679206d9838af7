"""Training examples as token ids and labels, with the loss masks the paper specifies.

Text is rendered with the model's own chat template and cut into segments that are
either trained or masked (label -100); segments are tokenized one by one, the first with
the image through the processor (so image tokens are expanded exactly as at inference).

- Synthesizer tuning (Table 1): masked are the caption round and the open user turn with
  the precise-response hint, which are the prompt at synthesis time; trained is every
  token the synthesizer writes at synthesis time (instruction, both answers, the turn
  delimiters the parser splits on) and the end-of-text token that teaches it to stop.
- Post-training (section 3.2): loss on assistant responses only (content and end of turn).
"""

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from adamllm_core.engines.base import Message
from adamllm_core.engines.hf import HFRenderer
from adamllm_core.prompts import SYNTH_CAPTION_PROMPT, SYNTH_INFORMATIVE_HINT, SYNTH_PRECISE_HINT
from adamllm_core.synthesis import END_OF_TEXT_TOKENS

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    pixel_values: Any  # tensor from the image processor, or None
    # Other processor outputs: per image (image_sizes, image_grid_thw) or, shaped
    # (1, len(input_ids)), per token (Qwen2-VL's mm_token_type_ids, which its M-RoPE needs).
    extra: dict[str, Any]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_segments(
    renderer: HFRenderer, segments: list[tuple[str, bool]], image: bytes | None
) -> Encoded:
    """Token ids of the concatenated segments; labels copy the ids of trained segments."""
    input_ids: list[int] = []
    labels: list[int] = []
    pixel_values = None
    extra: dict[str, Any] = {}
    per_token: set[str] = set()
    for position, (text, trained) in enumerate(segments):
        if not text:
            continue
        if position == 0 and image is not None:
            picture = Image.open(io.BytesIO(image)).convert("RGB")
            encoded = renderer.processor(
                text=[text], images=[picture], return_tensors="pt", add_special_tokens=False
            )
            ids = encoded["input_ids"][0].tolist()
            pixel_values = encoded["pixel_values"]
            extra = {
                k: v
                for k, v in encoded.items()
                if k not in ("input_ids", "attention_mask", "pixel_values")
            }
            per_token = {k for k, v in extra.items() if tuple(v.shape) == (1, len(ids))}
        else:
            ids = renderer.tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    for key in per_token:  # the text segments after the image are text tokens (type 0)
        value = extra[key]
        extra[key] = value.new_zeros((1, len(input_ids)))
        extra[key][0, : value.shape[1]] = value[0]
    return Encoded(input_ids, labels, pixel_values, extra)


def end_of_text(renderer: HFRenderer) -> str:
    vocab = renderer.tokenizer.get_vocab()
    return next((t for t in END_OF_TEXT_TOKENS if t in vocab), renderer.tokenizer.eos_token or "")


def synthesizer_segments(
    renderer: HFRenderer,
    caption: str,
    instruction: str,
    precise: str,
    informative: str,
    system_prompt: str | None = None,
) -> list[tuple[str, bool]]:
    """Table 1 as (prompt, masked) + (what the synthesizer writes, trained)."""
    head = [Message(role="system", content=system_prompt)] if system_prompt else []
    head += [
        Message(role="user", content=SYNTH_CAPTION_PROMPT, images=1),
        Message(role="assistant", content=caption),
    ]
    prompt = renderer.chat_text(
        [*head, Message(role="user", content=SYNTH_PRECISE_HINT)],
        continue_final_message=True,
        add_generation_prompt=False,
    )
    full = renderer.chat_text(
        [
            *head,
            Message(role="user", content=f"{SYNTH_PRECISE_HINT}\n{instruction}"),
            Message(role="assistant", content=precise),
            Message(role="user", content=f"{SYNTH_INFORMATIVE_HINT}\n{instruction}"),
            Message(role="assistant", content=informative),
        ],
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the open turn differently from the closed one")
    return [(prompt, False), (full[len(prompt) :] + end_of_text(renderer), True)]


def conversation_segments(
    renderer: HFRenderer, turns: list[dict[str, str]]
) -> list[tuple[str, bool]]:
    """A post-training conversation (`<image>` opening the first user turn): assistant turns trained."""
    messages = []
    for i, turn in enumerate(turns):
        content = turn["content"]
        images = 0
        if i == 0 and content.startswith("<image>"):
            content, images = content[len("<image>") :], 1
        messages.append(Message(role=turn["role"], content=content, images=images))
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message.role != "assistant":
            continue
        before = renderer.chat_text(messages[:i], add_generation_prompt=True)
        after = renderer.chat_text(messages[: i + 1])
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError("the chat template does not render turns as a growing prefix")
        segments += [(before[len(done) :], False), (after[len(before) :], True)]
        done = after
    return segments
