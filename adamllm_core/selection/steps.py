"""The student's reasoning: a prompt that asks for numbered steps and a final answer, and the
parser that reads them back. An output that cannot be read is refused with a reason (it
becomes a quarantine row of the errors stage, counted), never guessed at."""

import re
from dataclasses import dataclass

from adamllm_core.errors import Rejected

STEP_INSTRUCTION = (
    'Reason step by step. Write each step on its own line as "Step 1: ...", "Step 2: ...",'
    ' and end with a line "Answer: <your answer>".'
)

_STEP = re.compile(r"^\s*(?:step\s*)?(\d{1,3})\s*[:.)\-]\s*(.*)$", re.IGNORECASE)
_ANSWER = re.compile(
    r"^\s*(?:the\s+)?(?:final\s+)?answer\b\s*(?:is\b)?\s*[:\-]?\s*(.+)$", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ANSWER_IN_TEXT = re.compile(r"\bthe (?:final )?answer is[:\s]+(.+?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Reasoning:
    steps: tuple[str, ...]
    answer: str


def step_prompt(question: str, choices: list[str] | None) -> str:
    """The student's instruction: the question, its options when it has them, the format."""
    options = f"\nOptions: {', '.join(choices)}." if choices else ""
    return f"{question.strip()}{options}\n{STEP_INSTRUCTION}"


def _clean_answer(text: str) -> str:
    return text.strip().strip("\"'").rstrip(".!").strip()


def parse_reasoning(text: str) -> Reasoning:
    """Numbered steps (`Step 1:`, `1.`, `1)`) and the final `Answer:` line. Unnumbered lines
    continue the step before them; with no numbered step at all, each line before the
    answer is a step (each sentence, when there is one line). Without an `Answer:` line, "the answer is X" at the end of the last
    step is the answer. Refused: `empty_output`, `no_answer`, `no_steps`."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise Rejected("empty_output", "the student wrote nothing")
    answer: str | None = None
    answer_line = None
    for index in range(len(lines) - 1, -1, -1):
        if _STEP.match(lines[index]):
            break  # an answer line comes after the steps
        if match := _ANSWER.match(lines[index]):
            answer, answer_line = _clean_answer(match.group(1)), index
            break
    body = lines if answer_line is None else lines[:answer_line]
    numbered: list[str] = []
    loose: list[str] = []
    for line in body:
        if match := _STEP.match(line):
            numbered.append(match.group(2).strip())
        elif numbered:
            numbered[-1] = f"{numbered[-1]} {line}".strip()
        else:
            loose.append(line)
    if not numbered and len(loose) == 1:  # one unnumbered line: its sentences are the steps
        loose = _SENTENCE_END.split(loose[0])
    steps = [s for s in (numbered or loose) if s]
    if answer is None and steps and (match := _ANSWER_IN_TEXT.search(steps[-1])):
        answer = _clean_answer(match.group(1))
    if not answer:
        raise Rejected("no_answer", f"no final answer line in: {text.strip()[:300]!r}")
    if not steps:
        raise Rejected("no_steps", f"an answer without reasoning steps: {text.strip()[:300]!r}")
    return Reasoning(tuple(steps), answer)
