"""Task synthesis (paper section 3.1.1, Table 1): prompt the synthesizer with an image and
its caption, then parse what it writes into (instruction, precise, informative) triplets.

The prompt is the caption round of Table 1 rendered with the synthesizer's own chat
template, followed by an open user turn that starts with the precise-response hint; the
model writes the rest of the conversation. Turn boundaries are found with delimiters
derived from that same template, never hard-coded tokens.
"""

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.engines import ChatRequest, EngineConfig, Message, SamplingConfig
from adamllm_core.errors import Rejected
from adamllm_core.prompts import (
    LLAVA_LLAMA3_SYSTEM_PROMPT,
    SYNTH_CAPTION_PROMPT,
    SYNTH_INFORMATIVE_HINT,
    SYNTH_PRECISE_HINT,
)
from adamllm_core.text import CONTROL_TOKEN_PATTERN

# Tokens that end a whole text (not a turn) in common tokenizers: the synthesizer stops there.
END_OF_TEXT_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
_SENTINELS = (
    "\u2460USER-ONE\u2460",
    "\u2461ASSISTANT-ONE\u2461",
    "\u2462USER-TWO\u2462",
    "\u2463ASSISTANT-TWO\u2463",
)


class SynthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: EngineConfig
    template_model: str | None = Field(
        default=None,
        description="model whose chat template defines the turns (default: engine.model)",
    )
    system_prompt: str | None = Field(
        default=None,
        description="default: the synthesizer's own (see synthesizer_system_prompt); '' for none",
    )
    max_new_tokens: int = Field(default=512, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 0
    stop: tuple[str, ...] = Field(
        default=(), description="extra stop strings, e.g. the template's end-of-text"
    )


@dataclass(frozen=True)
class TurnDelimiters:
    """Strings a chat template puts between turns, found by rendering sentinels."""

    user_to_assistant: str  # end of a user turn + start of an assistant turn
    assistant_to_user: str  # end of an assistant turn + start of a user turn
    assistant_end: str  # what closes an assistant turn

    @classmethod
    def from_renderer(cls, render: Any) -> "TurnDelimiters":
        u1, a1, u2, a2 = _SENTINELS
        text = render(
            [
                {"role": "user", "content": u1},
                {"role": "assistant", "content": a1},
                {"role": "user", "content": u2},
                {"role": "assistant", "content": a2},
            ]
        )
        one_round = render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1}])
        positions = [text.index(s) for s in _SENTINELS]
        return cls(
            user_to_assistant=text[positions[2] + len(u2) : positions[3]],
            assistant_to_user=text[positions[1] + len(a1) : positions[2]],
            assistant_end=one_round[one_round.index(a1) + len(a1) :],
        )


def special_token_pattern(special_tokens: list[str]) -> re.Pattern[str]:
    tokens = sorted({t for t in special_tokens if t}, key=len, reverse=True)
    parts = [re.escape(t) for t in tokens] + [CONTROL_TOKEN_PATTERN.pattern]
    return re.compile("|".join(parts), flags=re.IGNORECASE)


def safe_text(text: str, pattern: re.Pattern[str]) -> str:
    """Text that cannot open or close a turn of this template (its special tokens removed)."""
    return re.sub(r"[ \t]{2,}", " ", pattern.sub(" ", text)).strip()


def synthesizer_system_prompt(renderer: Any, configured: str | None) -> str | None:
    """The system prompt a synthesizer is tuned and prompted with: the configured one (""
    for none), else its family's own. A LLaVA-NeXT model with a Llama-3 chat template (the
    released AdaptLLM synthesizer) was tuned in LLaVA-NeXT's Llama-3 conversation, which
    opens with LLAVA_LLAMA3_SYSTEM_PROMPT; its shipped chat_template.json adds none by
    itself, so without this the prompt would not be the one it learned."""
    if configured is not None:
        return configured or None
    template = getattr(renderer.processor, "chat_template", None) or ""
    if getattr(renderer.config, "model_type", None) == "llava_next" and (
        "<|start_header_id|>" in template
    ):
        return LLAVA_LLAMA3_SYSTEM_PROMPT
    return None


@dataclass(frozen=True)
class PromptContext:
    """What synthesis prompts are made with, from the synthesizer's processor."""

    delimiters: TurnDelimiters
    special_tokens: re.Pattern[str]  # removed from captions: they could open or close a turn
    stop: tuple[str, ...]  # strings that end a synthesis
    system_prompt: str | None


def prompt_context(renderer: Any, config: SynthConfig) -> PromptContext:
    """From the synthesizer's processor: its turn delimiters, the pattern of its special
    tokens, the stop strings that end a synthesis and its system prompt."""
    delimiters = TurnDelimiters.from_renderer(
        lambda messages: renderer.chat_text([Message(**m) for m in messages])
    )
    tokenizer = renderer.tokenizer
    pattern = special_token_pattern(
        list(getattr(tokenizer, "all_special_tokens", [])) + list(tokenizer.get_added_vocab())
    )
    inside_turns = delimiters.user_to_assistant + delimiters.assistant_to_user
    vocab = tokenizer.get_vocab()
    stop = tuple(config.stop) + tuple(
        t for t in END_OF_TEXT_TOKENS if t in vocab and t not in inside_turns
    )
    return PromptContext(
        delimiters, pattern, stop, synthesizer_system_prompt(renderer, config.system_prompt)
    )


def synth_request(
    caption: str, image: bytes, config: SynthConfig, context: PromptContext
) -> ChatRequest:
    messages = []
    if context.system_prompt:
        messages.append(Message(role="system", content=context.system_prompt))
    messages += [
        Message(role="user", content=SYNTH_CAPTION_PROMPT, images=1),
        Message(role="assistant", content=safe_text(caption, context.special_tokens)),
        Message(role="user", content=SYNTH_PRECISE_HINT),
    ]
    return ChatRequest(
        messages=tuple(messages),
        images=(image,),
        continue_final_message=True,
        sampling=SamplingConfig(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=config.seed,
            stop=context.stop,
            ignore_eos=True,  # the end-of-turn token ends a turn, not the conversation
            skip_special_tokens=False,  # turn delimiters are what the parser splits on
        ),
    )


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str
    closed: bool


@dataclass(frozen=True)
class ParsedTriplet:
    instruction: str
    precise: str
    informative: str
    turns: int  # turns parsed in the whole continuation


def split_turns(continuation: str, delimiters: TurnDelimiters) -> list[Turn]:
    """(user, assistant) rounds of the continuation; the prompt's open user turn is the first."""
    text = SYNTH_PRECISE_HINT + continuation
    turns: list[Turn] = []
    position = 0
    end_marker = delimiters.assistant_end.strip()
    while position < len(text):
        to_assistant = text.find(delimiters.user_to_assistant, position)
        if to_assistant < 0:
            break
        user = text[position:to_assistant]
        start = to_assistant + len(delimiters.user_to_assistant)
        to_user = text.find(delimiters.assistant_to_user, start)
        if to_user < 0:
            rest = text[start:]
            closed = bool(end_marker) and end_marker in rest
            assistant = rest[: rest.index(end_marker)] if closed else rest
            turns.append(Turn(user.strip(), assistant.strip(), closed))
            break
        turns.append(Turn(user.strip(), text[start:to_user].strip(), True))
        position = to_user + len(delimiters.assistant_to_user)
    return turns


def _hinted(user: str) -> tuple[str | None, str]:
    for kind, hint in (("precise", SYNTH_PRECISE_HINT), ("informative", SYNTH_INFORMATIVE_HINT)):
        if user.startswith(hint):
            return kind, user[len(hint) :].strip()
    return None, user


def parse_triplet(continuation: str, delimiters: TurnDelimiters) -> ParsedTriplet:
    """The first question asked under both hints, with its two answers; else Rejected."""
    turns = split_turns(continuation, delimiters)
    if not turns:
        raise Rejected("unparseable", "no user/assistant turn boundary in the output")
    closed = [t for t in turns if t.closed]
    truncated = len(closed) < len(turns)
    answers: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for turn in closed:
        kind, question = _hinted(turn.user)
        if kind is None or not question:
            continue
        if question not in answers:
            answers[question] = {}
            order.append(question)
        answers[question].setdefault(kind, turn.assistant)
    for question in order:
        pair = answers[question]
        if "precise" in pair and "informative" in pair:
            if not pair["precise"] or not pair["informative"]:
                raise Rejected("empty_response", f"an answer to {question[:80]!r} is empty")
            return ParsedTriplet(question, pair["precise"], pair["informative"], len(turns))
    if truncated:
        raise Rejected(
            "truncated", "the output ended inside a task turn before a triplet was complete"
        )
    if order:
        raise Rejected(
            "missing_hint", f"no question appears under both hints ({len(order)} questions)"
        )
    raise Rejected("unparseable", "no turn opens with a precise or informative hint")


def triplet_id(pair_id: str, instruction: str) -> str:
    return hashlib.sha256(f"{pair_id}\0{instruction}".encode()).hexdigest()[:32]
