"""Does a language model read a world caption? Does the judge label consistency?

Reading: a caption, then a question about it, in one of four forms: `plain` text, one
ChatML user turn (`chat`), the caption as the reply to a request for one (`reply`, where
the synthesizer reads it) and that under Table 1's precise hint (`precise`, what the
synthesizer's precise turn does; the LLM's reading gate). Each question is scored through
the engine's choice scoring over the skill's answers (`"green."`), so the reading is
measured apart from the answer's form.

The scenes are held out (their own random streams, apart from every dataset the world
writes) and drawn from the general palette: the LLM is gated on its own world, never on the
domain the experiment measures. Judging: held-out general triplets labelled as the judge's
training data is, scored as the consistency filter scores them (the judge's gate).
"""

import random
from collections import Counter
from typing import Any

from adamllm_core.engines.base import ChatRequest, Engine, Message
from adamllm_core.filtering import judge_request, label_of
from adamllm_core.prompts import SYNTH_CAPTION_PROMPT, SYNTH_PRECISE_HINT
from adamllm_core.proving.bundles import judge_example
from adamllm_core.proving.world import (
    SKILL_ANSWERS,
    Question,
    WorldConfig,
    caption,
    questions,
    sample_scene,
)

# Random streams of the held-out scenes: the world's datasets draw from seeds far below this.
HELD_OUT_BASE = 50_000
# The judge's held-out triplets: a stream of their own, apart from the reading scenes.
JUDGE_HELD_OUT_BASE = 70_000


FORMS = ("plain", "chat", "reply", "precise")


def _request(described: str, question: str, form: str) -> ChatRequest:
    if form == "plain":
        return ChatRequest(prompt=f"{described} {question}")
    if form == "chat":
        return ChatRequest(messages=(Message(role="user", content=f"{described} {question}"),))
    asked = f"{SYNTH_PRECISE_HINT}\n{question}" if form == "precise" else question
    return ChatRequest(
        messages=(
            Message(role="user", content=SYNTH_CAPTION_PROMPT),
            Message(role="assistant", content=described),
            Message(role="user", content=asked),
        )
    )


def reading_prompts(
    engine: Engine, world: WorldConfig, scenes: int, part: str = "general", form: str = "precise"
) -> list[tuple[str, Question]]:
    """Every question of `scenes` held-out scenes after its scene's caption, as the exact
    prompt `engine` gives its model."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: one of {FORMS}")
    out = []
    for index in range(scenes):
        rng = random.Random(HELD_OUT_BASE + index)
        scene = sample_scene(rng, getattr(world, part), world)
        described = caption(scene, rng)
        for question in questions(scene, rng):
            out.append((engine.render(_request(described, question.question, form)), question))
    return out


def reading_accuracy(
    engine: Engine,
    world: WorldConfig,
    scenes: int = 60,
    part: str = "general",
    form: str = "precise",
) -> dict[str, Any]:
    """Accuracy (0-100) over all questions and per skill, and the number asked per skill."""
    asked = reading_prompts(engine, world, scenes, part, form)
    requests = [
        ChatRequest(
            prompt=prompt,
            choices=tuple(f"{answer}." for answer in SKILL_ANSWERS[question.skill]),
        )
        for prompt, question in asked
    ]
    results = engine.run(requests)
    if len(results) != len(requests):
        raise RuntimeError(f"{len(requests)} reading questions, {len(results)} results")
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for (_, question), result in zip(asked, results, strict=True):
        totals[question.skill] += 1
        hits[question.skill] += result.text == f"{question.answer}."
    return {
        "accuracy": round(100 * sum(hits.values()) / max(1, sum(totals.values())), 2),
        "per_skill": {s: round(100 * hits[s] / totals[s], 2) for s in sorted(totals)},
        "asked": dict(sorted(totals.items())),
    }


def judging_accuracy(engine: Engine, world: WorldConfig, examples: int = 300) -> dict[str, Any]:
    """The judge's labels (Yes / No / Open, scored as the consistency filter scores them, short
    template) against the truth on `examples` held-out general-world triplets made as its
    training data is made: accuracy (0-100) over all and per label, and how often it said each."""
    truth, requests = [], []
    for index in range(examples):
        rng = random.Random(JUDGE_HELD_OUT_BASE + index)
        scene = sample_scene(rng, world.general, world)
        instruction, informative, precise, label = judge_example(scene, rng)
        truth.append(label)
        requests.append(judge_request(instruction, informative, precise, template="short"))
    results = engine.run(requests)
    if len(results) != len(requests):
        raise RuntimeError(f"{len(requests)} judge triplets, {len(results)} results")
    said = [label_of(result.choice_scores or {})[0] for result in results]
    totals, hits = Counter(truth), Counter(t for t, s in zip(truth, said, strict=True) if t == s)
    return {
        "accuracy": round(100 * sum(hits.values()) / max(1, len(truth)), 2),
        "per_label": {
            label: round(100 * hits[label] / totals[label], 2) for label in sorted(totals)
        },
        "said": dict(sorted(Counter(said).items())),
    }
