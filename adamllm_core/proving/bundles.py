"""The proving ground's data, written as the bundles the real pipeline reads.

`write_world(out, seed, sizes)` writes, under `out/`:

- `general/seed/`: synthesizer tuning data in the releases' formats (`vision_flan.json`,
  `allava_caption.json`, `allava_instruct.json` + `images/`), read by `build_seed`;
- `general/text/`: a `text_chats` dataset the language model is trained on (a caption and
  questions about it as a conversation, text only);
- `general/pretrain-perception/`, `general/pretrain/`: `conversations` datasets the base model
  is pretrained on, in that order (colour, shape and count questions; then captions and
  short-answer questions of every skill);
- `general/judge/`: a `completions` dataset teaching an LM the consistency labels on
  general-world triplets (Yes: the precise answer follows; No: it does not; Open);
- `domain/pairs/`: `data.jsonl` + `images/`, image-caption pairs only (what `adamllm ingest`
  reads); each record keeps its scene under `world_scene` (metadata, for measurement);
- `domain/benchmark/`: `data.jsonl` + `images/` in the evaluation's generic form: held-out
  domain images, one question per skill, with `skill` and the skill's `choices`;
- `general/benchmark/`: the same on held-out general images (what the base model knows).

Everything is a function of (seed, sizes): the same call writes the same bytes.
"""

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import DatasetWriter, Manifest
from adamllm_core.hashing import canonical_json, config_hash
from adamllm_core.pipeline import CAPTION_PROMPTS, seeded_rng
from adamllm_core.prompts import judge_prompt_short
from adamllm_core.proving.world import (
    ATTRIBUTE_WORDS,
    BRIEF_INSTRUCTIONS,
    COPY_DRILL_PROMPTS,
    LONG_INSTRUCTIONS,
    OPEN_QUESTIONS,
    SKILL_ANSWERS,
    TEXT,
    Palette,
    Question,
    Scene,
    WorldConfig,
    caption,
    questions,
    render,
    sample_scene,
)
from adamllm_core.schemas import (
    COMPLETIONS,
    CONVERSATIONS,
    QUARANTINE,
    TEXT_CHATS,
    ChatTurn,
    Completion,
    Conversation,
    TextChat,
)
from adamllm_core.version import code_version


class WorldSizes(BaseModel):
    """How much of each bundle to generate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed_images: int = Field(
        default=6000, gt=0, description="general images for synthesizer tuning"
    )
    pretrain_images: int = Field(
        default=60000, gt=0, description="general images for base pretraining"
    )
    text_records: int = Field(
        default=20000, gt=0, description="text records for the language model's pretraining"
    )
    judge_examples: int = Field(default=12000, gt=0)
    domain_pairs: int = Field(default=2000, gt=0)
    benchmark_images: int = Field(
        default=300, gt=0, description="held-out domain images; one question per skill each"
    )


# How often each seed annotator is wrong (see write_seed).
PRECISE_NOISE = 0.15
INFORMATIVE_NOISE = 0.05


def world_scenes(seed: int, name: str, palette: Palette, world: WorldConfig, count: int):
    """(index, scene, image bytes, rng) for `count` scenes of one bundle, each seeded by (seed, name, index)."""
    for index in range(count):
        rng = seeded_rng(seed, name, str(index))
        scene = sample_scene(rng, palette, world)
        yield index, scene, render(scene, world.image_size, rng), rng


def _write_image(folder: Path, name: str, data: bytes) -> str:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "images" / name).write_bytes(data)
    return f"images/{name}"


def write_seed(out: Path, seed: int, world: WorldConfig, count: int) -> dict[str, int]:
    """Vision-Flan / ALLaVA-Caption-VFLAN / ALLaVA-Instruct-VFLAN files for general images."""
    flan, captions, instructs = [], [], []
    for index, scene, image, rng in world_scenes(seed, "seed", world.general, world, count):
        path = _write_image(out, f"general-{index:06d}.png", image)
        text = caption(scene, rng)
        for question in rng.sample(questions(scene, rng), 2):  # two tasks per image
            record_id = f"{question.skill}+world+{index}"
            # Two annotators, each wrong at times, independently (as Vision-Flan's labels
            # and ALLaVA's GPT-4V answers are): with answers that always agree, the tuned
            # synthesizer copied its precise answer into the informative one (99.7% agreed,
            # measured), and the consistency filter had no disagreement left to catch.
            precise = (
                question.answer if rng.random() >= PRECISE_NOISE else _wrong_answer(question, rng)
            )
            informative = (
                question.informative
                if rng.random() >= INFORMATIVE_NOISE
                else _informative_with(question, _wrong_answer(question, rng))
            )
            flan.append(
                {
                    "id": record_id,
                    "image": path,
                    "task_name": question.skill,
                    "conversations": [
                        {"from": "human", "value": question.question},
                        {"from": "gpt", "value": precise},
                    ],
                }
            )
            captions.append(
                {
                    "id": record_id,
                    "image": path,
                    "conversations": [
                        {"from": "human", "value": "<image>\nPlease depict the image in words."},
                        {"from": "gpt", "value": text},
                    ],
                }
            )
            instructs.append(
                {
                    "id": record_id,
                    "image": path,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{question.question}"},
                        {"from": "gpt", "value": informative},
                    ],
                }
            )
    for name, records in (
        ("vision_flan", flan),
        ("allava_caption", captions),
        ("allava_instruct", instructs),
    ):
        (out / f"{name}.json").write_text(json.dumps(records, indent=0))
    return {"images": count, "records": len(flan)}


def dataset_writer(uri: str, schema: Any, stage: str, settings: dict[str, Any]) -> DatasetWriter:
    return DatasetWriter(
        uri,
        schema=schema,
        stage=stage,
        parents=[],
        config=settings,
        config_hash=config_hash(settings),
        code_version=code_version(__name__),
        overwrite=True,
    )


def commit_rows(
    writer: DatasetWriter, schema: Any, rows: list[Any], per_shard: int = 2000
) -> Manifest:
    shards = max(1, -(-len(rows) // per_shard))
    try:
        for k in range(shards):
            part = rows[k * per_shard : (k + 1) * per_shard]
            writer.write_shard(k, schema.to_table(part), QUARANTINE.to_table([]), rows_in=len(part))
        return writer.commit(shards)
    except BaseException:
        writer.give_back_lease()
        raise


# Pretraining's first phase: one object per image, questions only the image answers. Mixed
# from the start with count questions and scenes of several objects, colour and shape stayed
# at chance for 2,400 steps (the model answered one colour to every colour question, even
# about a lone object) while count reached 100%; 400 steps of these first, then every task,
# and colour and shape are read (measured, world seed 1).
PERCEPTION_SKILLS = ("colour", "shape", "size")
DIALOGUE_SHARE = 0.3


def write_pretrain(
    uri: str,
    seed: int,
    world: WorldConfig,
    count: int,
    caption_share: float = 0.3,
    skills: tuple[str, ...] | None = None,
    dialogue_share: float = 0.0,
    rare_skill: str | None = None,
    rare_share: float = 1.0,
    reasoned: bool = False,
) -> Manifest:
    """Base-model pretraining: mostly one task per image, a caption (`caption_share`) or one
    short-answer question (of `skills`, default all). One task each keeps sequences short,
    so the answer tokens that need the image are not drowned by caption text in the loss.

    A `dialogue_share` of records are LLaVA-style dialogues: the caption turn, then two
    questions the caption answers. A base LLM reads its context; without these the model
    never learned to, and the synthesizer tuned from it could not take answers from captions.

    `rare_skill`: its questions are asked at `rare_share` of their rate (error-driven
    selection's student, weak at it for want of data); `reasoned`: answers are the short
    reasoning that states the facts, then the answer (a student whose steps can be read)."""
    rows = []
    stream = "pretrain" if skills is None else "pretrain-" + "-".join(skills)
    if rare_skill is not None or reasoned:
        stream += f"-rare-{rare_skill}-{rare_share}-reasoned-{reasoned}"
    for index, scene, image, rng in world_scenes(seed, stream, world.general, world, count):
        asked = [q for q in questions(scene, rng) if skills is None or q.skill in skills]
        if rare_skill is not None and rng.random() >= rare_share:
            asked = [q for q in asked if q.skill != rare_skill]
        draw = rng.random()
        if draw < dialogue_share and len(asked) >= 2:
            turns = [(rng.choice(CAPTION_PROMPTS), caption(scene, rng))]
            turns += [(q.question, q.answer) for q in rng.sample(asked, 2)]
        elif draw < dialogue_share + caption_share or not asked:
            turns = [(rng.choice(CAPTION_PROMPTS), caption(scene, rng))]
        else:
            question = rng.choice(asked)
            turns = [(question.question, question.informative if reasoned else question.answer)]
        messages = []
        for number, (prompt, answer) in enumerate(turns):
            messages += [
                ChatTurn(role="user", content=("<image>" if number == 0 else "") + prompt),
                ChatTurn(role="assistant", content=answer),
            ]
        identifier = f"pretrain-{seed}-{index}"
        rows.append(
            Conversation(
                id=hashlib.sha256(identifier.encode()).hexdigest()[:32],
                pair_id=identifier,
                triplet_id=None,
                domain="general",
                variant="pretrain",
                kind="caption+questions",
                image=image,
                image_format="png",
                messages=messages,
                tokens=0,
            )
        )
    settings = {
        "seed": seed,
        "count": count,
        "caption_share": caption_share,
        "skills": skills,
        "dialogue_share": dialogue_share,
        "world": world.model_dump(mode="json"),
    }
    if rare_skill is not None or reasoned:  # absent otherwise: earlier datasets keep their identity
        settings.update(rare_skill=rare_skill, rare_share=rare_share, reasoned=reasoned)
    return commit_rows(
        dataset_writer(uri, CONVERSATIONS, "world-pretrain", settings), CONVERSATIONS, rows
    )


def copy_drill(rng: random.Random) -> list[ChatTurn]:
    """A list of world words, then the same list again: a reply that only copying predicts."""
    listed = " ".join(rng.choice(ATTRIBUTE_WORDS) for _ in range(rng.randint(8, 24)))
    first, again = COPY_DRILL_PROMPTS
    return [
        ChatTurn(role="user", content=first),
        ChatTurn(role="assistant", content=listed),
        ChatTurn(role="user", content=again),
        ChatTurn(role="assistant", content=listed),
    ]


def write_text_corpus(uri: str, seed: int, world: WorldConfig, count: int) -> Manifest:
    """The language model's training text: `count` conversations that open with a caption
    given as the reply to a request for one (where the synthesizer and the post-trained model
    read it), then three questions about it answered briefly or at length, and `count // 2`
    copy drills (`copy_drill`). A real base LLM is instruction-tuned and reads what its
    context says; this is where ours learns to. It trains with `loss_on: after_opening`: the
    caption (or first list) is context, everything after it is trained.

    Measured (world seed 1, LLM 128x4, lr 1e-3, batch 32): without drills the LLM ignored the
    caption entirely (its answer's colour did not change with the caption's) for about 2,700
    steps, then learnt to copy; with the drills it learnt by step 400, and at 1,000 steps it
    got 389 of 467 held-out answer words right that only the caption gives (54% at 2,000
    steps without), and answered 72-73% of caption questions (53%). With a loss on the
    caption's own random words it never learnt within 2,000 steps. Scenes draw every colour
    and shape evenly (`TEXT`), as web text names words an image corpus rarely shows."""
    rows = []
    for index in range(count + count // 2):
        rng = seeded_rng(seed, "text", str(index))
        if index >= count:
            messages, task = copy_drill(rng), "copy"
        else:
            scene = sample_scene(rng, TEXT, world)
            messages, task = (
                [
                    ChatTurn(role="user", content=rng.choice(CAPTION_PROMPTS)),
                    ChatTurn(role="assistant", content=caption(scene, rng)),
                ],
                "reading",
            )
            for question in rng.sample(questions(scene, rng), 3):
                brief = rng.random() < 0.5
                asked = rng.choice(BRIEF_INSTRUCTIONS if brief else LONG_INSTRUCTIONS)
                messages += [
                    ChatTurn(role="user", content=f"{asked}\n{question.question}"),
                    ChatTurn(
                        role="assistant",
                        content=f"{question.answer}." if brief else question.informative,
                    ),
                ]
        rows.append(
            TextChat(
                id=hashlib.sha256(f"text-{seed}-{index}".encode()).hexdigest()[:32],
                task=task,
                messages=messages,
            )
        )
    settings = {"seed": seed, "count": count, "world": world.model_dump(mode="json")}
    return commit_rows(dataset_writer(uri, TEXT_CHATS, "world-text", settings), TEXT_CHATS, rows)


def _wrong_answer(question: Question, rng: random.Random) -> str:
    return rng.choice([a for a in SKILL_ANSWERS[question.skill] if a != question.answer])


def _informative_with(question: Question, answer: str) -> str:
    """The question's informative answer, reasoning to `answer` instead of the true one."""
    return question.informative.replace(f"is {question.answer}.", f"is {answer}.")


def judge_example(scene: Scene, rng: random.Random) -> tuple[str, str, str, str]:
    """(instruction, informative, precise, label) for the consistency judge, from a general scene.

    Yes: the precise answer is the informative answer's conclusion. No: either answer was
    swapped for another of the skill's answers (the informative one rewritten throughout).
    Open: a description question answered by two different captions.
    """
    draw = rng.random()
    if draw < 0.1:
        return rng.choice(OPEN_QUESTIONS), caption(scene, rng), caption(scene, rng), "Open"
    question = rng.choice(questions(scene, rng))
    if draw < 0.55:
        return question.question, question.informative, question.answer, "Yes"
    wrong = _wrong_answer(question, rng)
    if rng.random() < 0.5:
        return question.question, question.informative, wrong, "No"
    return question.question, _informative_with(question, wrong), question.answer, "No"


def write_judge(uri: str, seed: int, world: WorldConfig, count: int) -> Manifest:
    rows = []
    for index in range(count):
        rng = seeded_rng(seed, "judge", str(index))
        scene = sample_scene(rng, world.general, world)
        instruction, informative, precise, label = judge_example(scene, rng)
        prompt = judge_prompt_short(instruction, informative, precise)
        rows.append(
            Completion(
                id=hashlib.sha256(f"judge-{seed}-{index}".encode()).hexdigest()[:32],
                prompt=prompt,
                completion=f" {label}",
                task="consistency",
            )
        )
    settings = {"seed": seed, "count": count, "world": world.model_dump(mode="json")}
    return commit_rows(dataset_writer(uri, COMPLETIONS, "world-judge", settings), COMPLETIONS, rows)


def write_domain_pairs(out: Path, seed: int, world: WorldConfig, count: int) -> int:
    lines = []
    for index, scene, image, rng in world_scenes(seed, "domain", world.domain, world, count):
        path = _write_image(out, f"domain-{index:06d}.png", image)
        lines.append(
            canonical_json(
                {"image": path, "caption": caption(scene, rng), "world_scene": scene.to_json()}
            )
        )
    (out / "data.jsonl").write_text("\n".join(lines) + "\n")
    return count


# The pool's task names per skill (Vision-Flan-like: several tasks exercise one skill).
POOL_TASKS: dict[str, tuple[str, ...]] = {
    "colour": ("colour_of_shape", "name_the_colour"),
    "shape": ("shape_of_colour", "name_the_shape"),
    "count": ("count_objects", "how_many_things"),
    "row": ("row_of_object",),
    "column": ("column_of_object",),
    "size": ("size_of_object",),
    "existence": ("is_it_there",),
    "relation": ("left_neighbour_colour",),
}


def write_pool(
    out: Path,
    seed: int,
    world: WorldConfig,
    count: int,
    palette: Palette | None = None,
    stream: str = "pool",
    rare_skill: str | None = None,
    rare_share: float = 1.0,
) -> dict[str, int]:
    """A task-agnostic pool in Vision-Flan's annotation form (`annotation.json`: id, image,
    task_name, a human/gpt conversation): one question per image, its skill drawn evenly
    among those the scene allows (`rare_skill` at `rare_share` of its rate), answered with
    its short reasoning. Returns samples per skill."""
    records = []
    per_skill: dict[str, int] = {}
    for index, scene, image, rng in world_scenes(
        seed, stream, palette or world.general, world, count
    ):
        path = _write_image(out, f"{stream}-{index:06d}.png", image)
        asked = questions(scene, rng)
        if rare_skill is not None and rng.random() >= rare_share:
            asked = [q for q in asked if q.skill != rare_skill]
        question = rng.choice(asked)
        per_skill[question.skill] = per_skill.get(question.skill, 0) + 1
        task = rng.choice(POOL_TASKS[question.skill])
        records.append(
            {
                "id": f"{task}+{stream}+{index}",
                "image": path,
                "task_name": task,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question.question}"},
                    {"from": "gpt", "value": question.informative},
                ],
                "skill": question.skill,
            }
        )
    (out / "annotation.json").write_text(json.dumps(records, indent=0) + "\n")
    return per_skill


def write_benchmark(
    out: Path,
    seed: int,
    world: WorldConfig,
    count: int,
    palette: Palette | None = None,
    stream: str = "benchmark",
    skills: tuple[str, ...] | None = None,
) -> dict[str, int]:
    """Held-out images (another seed stream than any training data), every skill the scene
    allows (of `skills`, when given: a target task's)."""
    lines = []
    per_skill: dict[str, int] = {}
    for index, scene, image, rng in world_scenes(
        seed, stream, palette or world.domain, world, count
    ):
        path = _write_image(out, f"bench-{index:06d}.png", image)
        for question in questions(scene, rng):
            if skills is not None and question.skill not in skills:
                continue
            per_skill[question.skill] = per_skill.get(question.skill, 0) + 1
            lines.append(
                canonical_json(
                    {
                        "qid": f"{index}-{question.skill}",
                        "image": path,
                        "question": question.question,
                        "answer": question.answer,
                        "skill": question.skill,
                        "choices": list(SKILL_ANSWERS[question.skill]),
                    }
                )
            )
    (out / "data.jsonl").write_text("\n".join(lines) + "\n")
    return per_skill


def write_world(
    out: str | Path, seed: int, sizes: WorldSizes, world: WorldConfig | None = None
) -> dict[str, Any]:
    """Every bundle of one world seed under `out` (see the module docstring); returns counts."""
    world = world or WorldConfig()
    out = Path(out)
    for folder in ("general/seed", "general/benchmark", "domain/pairs", "domain/benchmark"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    summary = {
        "seed": write_seed(out / "general/seed", seed, world, sizes.seed_images),
        "text": write_text_corpus(str(out / "general/text"), seed, world, sizes.text_records).rows,
        "pretrain_perception": write_pretrain(
            str(out / "general/pretrain-perception"),
            seed,
            world.model_copy(update={"min_objects": 1, "max_objects": 1}),
            sizes.pretrain_images // 4,
            0.0,
            PERCEPTION_SKILLS,
        ).rows,
        "pretrain": write_pretrain(
            str(out / "general/pretrain"),
            seed,
            world,
            sizes.pretrain_images,
            dialogue_share=DIALOGUE_SHARE,
        ).rows,
        "judge": write_judge(str(out / "general/judge"), seed, world, sizes.judge_examples).rows,
        "domain_pairs": write_domain_pairs(out / "domain/pairs", seed, world, sizes.domain_pairs),
        "benchmark": write_benchmark(out / "domain/benchmark", seed, world, sizes.benchmark_images),
        "general_benchmark": write_benchmark(
            out / "general/benchmark",
            seed,
            world,
            sizes.benchmark_images,
            world.general,
            "general-benchmark",
        ),
    }
    (out / "world.json").write_text(
        json.dumps(
            {
                "code": code_version(__name__),
                "seed": seed,
                "sizes": sizes.model_dump(),
                "world": world.model_dump(mode="json"),
                "counts": summary,
            },
            indent=2,
        )
    )
    return summary
