"""Consistency-based filter (paper section 3.1.2, Figures 6-7) and the chain-of-thought
response made of a kept triplet's two answers.

A text-only LM reads the few-shot prompt ending `## Consistent:`; the label is the choice
among Yes / No / Open with the highest score (sum of token log-probabilities), and the
scores stay on every row. Only Yes is kept.
"""

import hashlib
import random
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.engines import ChatRequest, EngineConfig
from adamllm_core.prompts import CONSISTENCY_LABELS, consistency_prompt, judge_prompt_short

# Scored continuations of "## Consistent:", in label order.
LABEL_CHOICES = tuple(f" {label}" for label in CONSISTENCY_LABELS)

# Words that mark a sentence as a conclusion (the official joining rule).
CONCLUSION = re.compile(r"\b(so|thus|therefore|answer|result|could be)\b", re.IGNORECASE)

# Chain-of-thought patterns: reasoning first, then the precise answer as the conclusion.
# (The official list also has patterns that ask for the question from the answer; they
# invert the task and are left out.)
COT_PATTERNS = (
    "{cot}\nThe answer is {answer}",
    "Answer: {cot} So the answer is {answer}",
    "{cot} Therefore, the answer is {answer}",
    "{cot}\nSo the final answer is: {answer}",
    "{cot} Thus, the answer is {answer}",
    "Let's think step by step. {cot} The answer is {answer}",
    "{cot}\nFinal answer: {answer}",
)


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: EngineConfig
    keep: tuple[str, ...] = Field(default=("Yes",), description="labels whose triplets are kept")
    seed: int = Field(
        default=0, description="seeds the choice of chain-of-thought pattern per triplet"
    )
    template: Literal["figures_6_7", "short"] = Field(
        default="figures_6_7",
        description="the paper's few-shot prompt, or its fields alone (small judges)",
    )


def judge_request(
    instruction: str, informative: str, precise: str, template: str = "figures_6_7"
) -> ChatRequest:
    render = judge_prompt_short if template == "short" else consistency_prompt
    return ChatRequest(prompt=render(instruction, informative, precise), choices=LABEL_CHOICES)


def label_of(scores: dict[str, float]) -> tuple[str, dict[str, float]]:
    """The best-scored label and the scores keyed by label (Yes / No / Open)."""
    by_label = {choice.strip(): score for choice, score in scores.items()}
    best = max(CONSISTENCY_LABELS, key=lambda label: by_label[label])
    return best, by_label


def last_sentence(text: str) -> str:
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s.strip()]
    return sentences[-1] if sentences else ""


def chain_of_thought(informative: str, precise: str, *, seed: int, key: str) -> tuple[str, str]:
    """The response of a kept triplet, and which rule made it.

    - the informative answer already concludes (its last sentence): used alone;
    - else the precise answer reads as a conclusion: "{informative} {precise}";
    - else a pattern, chosen by a generator seeded with (seed, key), joins them.
    """
    informative, precise = informative.strip(), precise.strip()
    if CONCLUSION.search(last_sentence(informative)):
        return informative, "informative_concludes"
    if CONCLUSION.search(precise):
        return f"{informative} {precise}", "precise_concludes"
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    pattern = random.Random(int.from_bytes(digest[:8], "big")).choice(COT_PATTERNS)
    return pattern.format(cot=informative, answer=precise), f"pattern_{COT_PATTERNS.index(pattern)}"
