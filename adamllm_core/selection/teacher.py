"""The teacher's requests (text only): the answer-switch prefix scored over the options, the
missing skill of a wrong answer, and the skills a pool sample exercises. Any engine serves
them (a served model, vLLM, transformers); the wording is ours."""

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.engines import ChatRequest, Message, SamplingConfig


class TeacherPrompts(BaseModel):
    """What the teacher is asked; part of every teacher stage's identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prior: str = Field(
        default='Hint: the correct answer is likely "{gold}".',
        description="the prior that favours the gold answer, shown before the steps",
    )
    skill_max_new_tokens: int = Field(default=24, gt=0)
    label_max_new_tokens: int = Field(default=48, gt=0)


def _steps(steps: list[str] | tuple[str, ...]) -> str:
    return "\n".join(f"Step {number}: {step}" for number, step in enumerate(steps, start=1))


def switch_request(
    question: str,
    options: list[str],
    gold: str,
    steps: list[str] | tuple[str, ...],
    prompts: TeacherPrompts,
) -> ChatRequest:
    """The teacher's probabilities over `options` after the student's `steps` (a prefix)."""
    reasoning = _steps(steps) if steps else "(no step yet)"
    prompt = (
        f"Question: {question}\nOptions: {', '.join(options)}\n"
        f"{prompts.prior.format(gold=gold)}\n"
        f"A student reasons step by step:\n{reasoning}\n"
        "Given the student's reasoning so far, the answer is:"
    )
    return ChatRequest(
        prompt=prompt,
        choices=tuple(f" {option}" for option in options),
        sampling=SamplingConfig(max_new_tokens=0),
    )


def skill_request(
    question: str,
    gold: str,
    answer: str,
    steps: list[str] | tuple[str, ...],
    wrong_step: int | None,
    prompts: TeacherPrompts,
) -> ChatRequest:
    """The one skill the student lacked: at `wrong_step` (1-based), or over the whole
    reasoning when no step was identified."""
    where = (
        f"The first wrong step is step {wrong_step}: {steps[wrong_step - 1]}\n"
        "Name the one skill the student lacks to get this step right"
        if wrong_step is not None
        else "Name the one skill the student lacks to answer correctly"
    )
    content = (
        f"A student answered a question wrongly.\nQuestion: {question}\n"
        f"Correct answer: {gold}\nStudent's answer: {answer}\n"
        f"Student's reasoning:\n{_steps(steps)}\n"
        f"{where}, in a few words. Reply with the skill only."
    )
    return ChatRequest(
        messages=(Message(role="user", content=content),),
        sampling=SamplingConfig(max_new_tokens=prompts.skill_max_new_tokens, stop=("\n",)),
    )


def label_request(instruction: str, answer: str, prompts: TeacherPrompts) -> ChatRequest:
    """The skills a pool sample exercises, as a comma-separated list."""
    content = (
        f"Task: {instruction}\nAnswer: {answer}\n"
        "Which skills does this task exercise? Reply with a short list of skills, separated"
        " by commas."
    )
    return ChatRequest(
        messages=(Message(role="user", content=content),),
        sampling=SamplingConfig(max_new_tokens=prompts.label_max_new_tokens, stop=("\n",)),
    )
