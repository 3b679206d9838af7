"""The proving ground's generated world: deterministic per seed, gold answers true of the
pixels, captions that state only true facts, bundles the real importers read."""

import io
import json
import random
import re

import pytest
from PIL import Image

from adamllm_core.proving.bundles import WorldSizes, judge_example, write_world
from adamllm_core.proving.world import (
    COLOURS,
    COLUMNS,
    DOMAIN,
    GENERAL,
    NUMBERS,
    ROWS,
    SHAPES,
    WorldConfig,
    answer_question,
    caption,
    parse_question,
    questions,
    render,
    sample_scene,
)

WORLD = WorldConfig()


def scenes(count: int, palette=GENERAL, seed: int = 3):
    rng = random.Random(seed)
    for _ in range(count):
        scene = sample_scene(rng, palette, WORLD)
        yield scene, render(scene, WORLD.image_size, rng), rng


def _nearest_colour(pixel: tuple[int, int, int]) -> str:
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], pixel)))


def _object_mask(image: Image.Image, background: tuple[int, int, int]) -> list[list[bool]]:
    size = image.size[0]
    pixels = image.load()
    return [
        [sum(abs(a - b) for a, b in zip(pixels[x, y], background)) > 60 for x in range(size)]
        for y in range(size)
    ]


def _components(mask: list[list[bool]]) -> int:
    size, seen, count = len(mask), set(), 0
    for y in range(size):
        for x in range(size):
            if mask[y][x] and (x, y) not in seen:
                count += 1
                stack = [(x, y)]
                seen.add((x, y))
                while stack:
                    cx, cy = stack.pop()
                    for nx, ny in ((cx + 1, cy), (cx - 1, cy), (cx, cy + 1), (cx, cy - 1)):
                        if (
                            0 <= nx < size
                            and 0 <= ny < size
                            and mask[ny][nx]
                            and (nx, ny) not in seen
                        ):
                            seen.add((nx, ny))
                            stack.append((nx, ny))
    return count


def _cell_colour(image: Image.Image, row: int, column: int, background) -> str:
    """The palette colour most of the cell's object pixels are nearest to."""
    cell = image.size[0] / 3
    pixels = image.load()
    votes: dict[str, int] = {}
    for y in range(int(row * cell), int((row + 1) * cell)):
        for x in range(int(column * cell), int((column + 1) * cell)):
            if sum(abs(a - b) for a, b in zip(pixels[x, y], background)) > 60:
                name = _nearest_colour(pixels[x, y])
                votes[name] = votes.get(name, 0) + 1
    return max(votes, key=votes.get)


def test_same_seed_same_world_other_seed_other_world(tmp_path) -> None:
    sizes = WorldSizes(
        seed_images=6,
        pretrain_images=8,
        text_records=8,
        judge_examples=8,
        domain_pairs=6,
        benchmark_images=4,
    )
    write_world(tmp_path / "a", 7, sizes)
    write_world(tmp_path / "b", 7, sizes)
    write_world(tmp_path / "c", 8, sizes)
    # Every file is equal but the datasets' manifests, which name their place and time.
    files = sorted(
        p.relative_to(tmp_path / "a")
        for p in (tmp_path / "a").rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )
    assert files and all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )
    assert (tmp_path / "a/domain/pairs/data.jsonl").read_bytes() != (
        tmp_path / "c/domain/pairs/data.jsonl"
    ).read_bytes()
    for name in (
        "text",
        "pretrain-perception",
        "pretrain",
        "judge",
    ):  # datasets: equal content, equal fingerprint
        a = json.loads((tmp_path / f"a/general/{name}/manifest.json").read_text())
        b = json.loads((tmp_path / f"b/general/{name}/manifest.json").read_text())
        assert a["fingerprint"] == b["fingerprint"] and [s["sha256"] for s in a["shards"]] == [
            s["sha256"] for s in b["shards"]
        ]


@pytest.mark.parametrize("palette", [GENERAL, DOMAIN], ids=["general", "domain"])
def test_gold_colour_and_count_are_true_of_the_pixels(palette) -> None:
    checked = {"colour": 0, "count": 0, "relation": 0}
    for scene, png, rng in scenes(60, palette):
        image = Image.open(io.BytesIO(png)).convert("RGB")
        assert _components(_object_mask(image, scene.background)) == len(scene.things)
        for question in questions(scene, rng):
            assert answer_question(scene, question.question) == question.answer
            if question.skill == "count":
                assert NUMBERS.index(question.answer) == _components(
                    _object_mask(image, scene.background)
                )
                checked["count"] += 1
            if question.skill in ("colour", "relation"):
                shape = parse_question(question.question)[1][0]
                target = next(t for t in scene.things if t.shape == shape)
                if question.skill == "relation":  # the nearest object left of the target, same row
                    target = max(
                        (
                            t
                            for t in scene.things
                            if t.row == target.row and t.column < target.column
                        ),
                        key=lambda t: t.column,
                    )
                assert (
                    _cell_colour(image, target.row, target.column, scene.background)
                    == question.answer
                )
                checked[question.skill] += 1
    assert checked["colour"] > 30 and checked["count"] == 60 and checked["relation"] > 5


_FACT = re.compile(
    r"(?:(small|large) )?(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")"
    r"(?: \((small|large), )?(?:(?: is)? at the )?("
    + "|".join(ROWS)
    + ") ("
    + "|".join(COLUMNS)
    + ")"
)


def test_captions_state_only_true_facts() -> None:
    styles = set()
    for scene, _, rng in scenes(200, DOMAIN):
        text = caption(scene, rng)
        facts = {(m[0] or m[3], m[1], m[2], m[4], m[5]) for m in _FACT.findall(text)}
        truth = {(t.size, t.colour, t.shape, ROWS[t.row], COLUMNS[t.column]) for t in scene.things}
        assert facts == truth, text
        # the count opens the caption, in the words of its style
        n, count = len(scene.things), NUMBERS[len(scene.things)]
        style = (
            "there"
            if text.startswith("There")
            else "shows"
            if text.startswith("This image")
            else "list"
        )
        opening = {
            "there": f"There {'is' if n == 1 else 'are'} {count} ",
            "shows": f"This image shows {count} ",
            "list": f"{count.capitalize()} ",
        }[style]
        assert text.startswith(opening), text
        styles.add(style)
    assert len(styles) == 3  # three caption styles


def test_answer_question_rejects_questions_outside_the_grammar() -> None:
    scene = next(scenes(1))[0]
    assert answer_question(scene, "What is the meaning of this image?") is None
    assert (
        answer_question(scene, "What colour is the hexagon?") is None
    )  # no such object: no single answer
    assert parse_question("  WHAT COLOR is the circle? ") == ("colour", ("circle",))


def test_judge_examples_cover_every_label_and_no_contradicts_yes() -> None:
    labels: dict[str, int] = {}
    for scene, _, rng in scenes(300):
        _instruction, informative, precise, label = judge_example(scene, rng)
        labels[label] = labels.get(label, 0) + 1
        if label == "Yes":
            assert informative.endswith(f"So the answer is {precise}.")
        if label == "No":
            assert not informative.endswith(f"So the answer is {precise}.")
    assert set(labels) == {"Yes", "No", "Open"} and labels["Open"] < labels["Yes"]


def test_bundles_are_read_by_the_real_importers(tmp_path) -> None:
    from adamllm_core.evaluation.adapters import read_items
    from adamllm_core.importers import open_source
    from adamllm_core.ingest import IngestConfig
    from adamllm_core.training.seed import SeedConfig, build_seed

    sizes = WorldSizes(
        seed_images=20,
        pretrain_images=8,
        text_records=8,
        judge_examples=8,
        domain_pairs=12,
        benchmark_images=10,
    )
    counts = write_world(tmp_path, 1, sizes)
    items = list(read_items("proving_ground", str(tmp_path / "domain/benchmark")))
    assert len(items) == sum(counts["benchmark"].values())
    assert all(
        item.choices and item.answer in item.choices and item.metadata["skill"] for item in items
    )
    seed = build_seed(
        *(
            str(tmp_path / f"general/seed/{n}.json")
            for n in ("vision_flan", "allava_caption", "allava_instruct")
        ),
        str(tmp_path / "general/seed"),
        str(tmp_path / "seed-ds"),
        SeedConfig(),
    )
    assert seed.rows == 40 and not seed.quarantine
    source = open_source(str(tmp_path / "domain/pairs"), IngestConfig(domain="proving").source)
    assert source is not None


def test_seed_annotators_disagree_at_times_independently(tmp_path) -> None:
    """The seed's precise and informative answers come from two annotators, each wrong at
    times (bundles.PRECISE_NOISE, INFORMATIVE_NOISE): their conclusions disagree about as
    often as that predicts, and the informative one reasons to an answer of the skill."""
    from adamllm_core.proving.bundles import INFORMATIVE_NOISE, PRECISE_NOISE, write_seed
    from adamllm_core.proving.world import SKILL_ANSWERS, WorldConfig

    write_seed(tmp_path, 3, WorldConfig(), 1000)
    flan = json.loads((tmp_path / "vision_flan.json").read_text())
    instruct = {r["id"]: r for r in json.loads((tmp_path / "allava_instruct.json").read_text())}
    disagree = 0
    for record in flan:
        precise = record["conversations"][1]["value"]
        informative = instruct[record["id"]]["conversations"][1]["value"]
        concluded = informative.rsplit("So the answer is ", 1)[1].rstrip(".")
        assert precise in SKILL_ANSWERS[record["task_name"]]
        assert concluded in SKILL_ANSWERS[record["task_name"]]
        disagree += precise != concluded
    expected = PRECISE_NOISE + INFORMATIVE_NOISE - PRECISE_NOISE * INFORMATIVE_NOISE
    assert abs(disagree / len(flan) - expected) < 0.04, disagree / len(flan)


def test_every_world_word_is_one_token_alone_and_in_running_text() -> None:
    """A reply starts without a space ("bottom."): spelled in pieces, the models could not
    copy a word they read with one into the answer they write."""
    from adamllm_core.models.tiny import build_tokenizer
    from adamllm_core.proving.models import ModelSizes, _tokenizer_text
    from adamllm_core.proving.world import vocabulary

    world = WorldConfig()
    tokenizer = build_tokenizer(_tokenizer_text(world), vocab_size=ModelSizes().vocab_size)
    split = [
        form
        for word in vocabulary()
        for form in (word, f" {word}", word.capitalize())
        if len(tokenizer.tokenize(form)) != 1
    ]
    assert split == [" How"]  # a question word, never after a space
    rng = random.Random(3)
    scene = sample_scene(rng, world.domain, world)
    for question in questions(scene, rng):
        assert tokenizer.tokenize(f"{question.answer}.") == [question.answer, "."]


def test_synthesis_measures_against_hand_counted_truth() -> None:
    """Table 7's measures on four hand-made triplets about one scene (a red circle, top left,
    and a blue square, middle center): every figure below is counted by hand."""
    from adamllm_core.proving.experiment import synthesis_measures
    from adamllm_core.proving.world import Scene, Thing

    scene = Scene(
        (Thing("circle", "red", "small", 0, 0), Thing("square", "blue", "large", 1, 1)),
        (255, 255, 255),
    )
    why = "The circle at the top left is"
    triplets = [
        # both answers right, consistent
        {"id": "a", "pair_id": "p", "instruction": "What colour is the circle?",
         "precise": "red", "informative": f"{why} red. So the answer is red."},
        # precise wrong, informative right: inconsistent
        {"id": "b", "pair_id": "p", "instruction": "What colour is the circle?",
         "precise": "green", "informative": f"{why} red. So the answer is red."},
        # both wrong the same way: consistent, and wrong
        {"id": "c", "pair_id": "p", "instruction": "How many objects are there?",
         "precise": "three", "informative": "I can see three. So the answer is three."},
        # outside the world's grammar: no true answer, so wrong whatever it says
        {"id": "d", "pair_id": "p", "instruction": "What is the weather?",
         "precise": "sunny", "informative": "It is sunny."},
    ]  # fmt: skip
    judged = [
        {"triplet_id": "a", "label": "Yes", "precise": "red"},
        {"triplet_id": "b", "label": "No", "precise": "green"},
        {"triplet_id": "c", "label": "Yes", "precise": "three"},
        {"triplet_id": "d", "label": "Open", "precise": "sunny"},
    ]
    kept = [
        {"triplet_id": "a", "response": f"{why} red. So the answer is red."},
        {"triplet_id": "c", "response": "I can see three. So the answer is three."},
    ]
    measures = synthesis_measures({"p": scene}, triplets, judged, kept)
    assert measures["pairs"] == 1 and measures["parsed"] == 4 and measures["kept"] == 2
    assert measures["off_grammar"] == 1
    assert measures["answer_accuracy_before_filter"] == 25.0  # a
    assert measures["informative_accuracy_before_filter"] == 50.0  # a, b
    assert measures["response_accuracy_before_filter"] == 50.0  # a, b: what no-filter trains on
    assert measures["consistency_before_filter"] == 50.0  # a, c
    assert measures["answer_accuracy_after_filter"] == 50.0  # a of a, c
    # the judge keeps exactly the right precise answers for a, b, d; not for c
    assert measures["filter_agreement_with_truth"] == 75.0
    assert measures["labels"] == {"Yes": 2, "No": 1, "Open": 1}
    assert measures["precise_accuracy_by_skill"] == {
        "colour": 50.0,
        "count": 0.0,
        "off_grammar": 0.0,
    }


def _report(seed: int, accuracy: dict, synthesis: dict | None = None, mutations=None) -> dict:
    report = {
        "seed": seed,
        "adamllm": {
            "accuracy": accuracy,
            "synthesis": synthesis
            or {
                "pairs": 100,
                "parsed": 80,
                "parse_rate": 80.0,
                "answer_accuracy_before_filter": 60.0,
                "response_accuracy_before_filter": 65.0,
                "answer_accuracy_after_filter": 70.0,
            },
        },
    }
    if mutations is not None:
        report["adamllm"]["mutations"] = {"accuracy": mutations}
    return report


HOLDS = {
    "base": 47.0,
    "caption_only": 51.0,
    "single_stage": 60.0,
    "synthetic_only": 58.0,
    "two_stage": 59.0,
    "no_filter": 58.0,
}


def test_required_results_hold_fail_at_the_threshold_and_when_not_measured() -> None:
    from adamllm_core.proving.experiment import required_results

    def failed(report: dict) -> list[str]:
        return [c["check"] for c in required_results(report) if not c["passed"]]

    assert failed(_report(1, HOLDS, mutations={"inverted_filter": 48.0})) == []
    # 2.9 over caption-only is short of 3; the no-filter variant level with single-stage fails
    short = failed(_report(1, {**HOLDS, "caption_only": 57.1, "no_filter": 60.0}))
    assert len(short) == 2 and "caption-only" in short[0] and "no-filter" in short[1]
    # exactly 3 and 5 points hold
    assert failed(_report(1, {**HOLDS, "caption_only": 57.0, "base": 55.0})) == []
    synthesis = {"pairs": 100, "parsed": 40, "parse_rate": 40.0}  # no accuracy measured
    assert len(failed(_report(1, HOLDS, synthesis))) == 2
    # the filter must beat the responses it chose from, not only the precise answers
    filtered = {"parse_rate": 80.0, "answer_accuracy_before_filter": 50.0}
    filtered |= {"response_accuracy_before_filter": 66.0, "answer_accuracy_after_filter": 65.0}
    assert [c[:40] for c in failed(_report(1, HOLDS, filtered))] == [
        "synthetic answers are more accurate afte"
    ]
    # a mutation that keeps the gain means the proving ground missed a broken method
    missed = failed(_report(1, HOLDS, mutations={"masked_synthetic": 55.0, "inverted": None}))
    assert len(missed) == 2 and all("mutation" in check for check in missed)
    assert failed(_report(1, {**HOLDS, "single_stage": None}))[:2] == [
        "single-stage beats caption-only by at least 3 points",
        "single-stage beats base by at least 5 points",
    ]


def test_seed_spread_compares_each_gain_with_its_spread_between_seeds() -> None:
    from adamllm_core.proving.experiment import seed_spread

    other = {**HOLDS, "single_stage": 55.0, "caption_only": 50.0, "base": 45.0}
    spread = seed_spread([_report(1, HOLDS), _report(2, other)])
    assert spread["by_seed"]["single_stage - caption_only"] == {1: 9.0, 2: 5.0}
    assert spread["spread"]["single_stage - caption_only"] == 4.0
    assert spread["spread"]["single_stage"] == 5.0
    # caption: gains 9 and 5, spread 4 (5 > 4); base: gains 13 and 10, spread 3
    assert spread["gains_above_spread"] == {
        "single_stage - caption_only": True,
        "single_stage - base": True,
    }
    noisy = {**HOLDS, "single_stage": 54.5, "caption_only": 51.0}  # gain 3.5, spread 5.5
    assert (
        seed_spread([_report(1, HOLDS), _report(3, noisy)])["gains_above_spread"][
            "single_stage - caption_only"
        ]
        is False
    )


def test_reading_prompts_put_the_caption_where_each_form_says(tiny_models: dict) -> None:
    from adamllm_core.engines import EngineConfig, make_engine
    from adamllm_core.prompts import SYNTH_CAPTION_PROMPT, SYNTH_PRECISE_HINT
    from adamllm_core.proving.reading import reading_accuracy, reading_prompts

    engine = make_engine(EngineConfig(model="tiny:lm"))
    world = WorldConfig()
    forms = {form: reading_prompts(engine, world, 3, form=form) for form in ("plain", "precise")}
    plain, precise = forms["plain"], forms["precise"]
    assert [q for _, q in plain] == [q for _, q in precise]  # the same held-out questions
    for (plain_prompt, question), (chat_prompt, _) in zip(plain, precise, strict=True):
        assert "<|im_start|>" not in plain_prompt and plain_prompt.endswith(question.question)
        described = plain_prompt.removesuffix(question.question).strip()
        # The caption is the assistant's reply to the caption request, then the hinted question.
        assert chat_prompt.index(SYNTH_CAPTION_PROMPT) < chat_prompt.index(described)
        assert f"{SYNTH_PRECISE_HINT}\n{question.question}" in chat_prompt
        assert chat_prompt.rstrip().endswith("assistant")
    with pytest.raises(ValueError, match="form"):
        reading_prompts(engine, world, 1, form="spoken")
    measured = reading_accuracy(engine, world, 3)
    assert sum(measured["asked"].values()) == len(precise)
    assert set(measured["per_skill"]) == {q.skill for _, q in precise}
