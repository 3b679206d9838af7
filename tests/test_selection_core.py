"""Error-driven selection, pure parts (no Prefect, no model): the student's step parser,
answer-switch on hand-made probability traces, skill normalisation and merging, the budget
split, and BM25 retrieval on known skill strings."""

import pytest

from adamllm_core.errors import Rejected
from adamllm_core.selection.retrieval import (
    TextIndex,
    select_all,
    select_by_queries,
    select_random,
    skill_quotas,
    split_budget,
)
from adamllm_core.selection.skills import count_skills, merge_skills, normalise_skill, split_skills
from adamllm_core.selection.steps import parse_reasoning, step_prompt
from adamllm_core.selection.switch import SwitchConfig, choice_probabilities, find_switch

# --- steps ---------------------------------------------------------------------------------


def test_numbered_steps_and_the_answer_line_are_read() -> None:
    text = "Step 1: The circle is at the top left.\nStep 2: It is red.\nAnswer: red."
    parsed = parse_reasoning(text)
    assert parsed.steps == ("The circle is at the top left.", "It is red.")
    assert parsed.answer == "red"


def test_other_numberings_continuations_and_an_answer_inside_the_last_step() -> None:
    text = "1. There are two objects:\na red circle and a blue square.\n2) So the answer is two."
    parsed = parse_reasoning(text)
    assert parsed.steps == (
        "There are two objects: a red circle and a blue square.",
        "So the answer is two.",
    )
    assert parsed.answer == "two"


def test_unnumbered_lines_are_steps_when_none_is_numbered() -> None:
    parsed = parse_reasoning("The square is blue.\nIt is large.\nFinal answer: large")
    assert parsed.steps == ("The square is blue.", "It is large.")
    assert parsed.answer == "large"


def test_one_unnumbered_line_is_cut_into_sentences() -> None:
    parsed = parse_reasoning("The circle at the top left is red. So the answer is red.")
    assert parsed.steps == ("The circle at the top left is red.", "So the answer is red.")
    assert parsed.answer == "red"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty_output"),
        ("   \n ", "empty_output"),
        ("Step 1: The circle is red.\nStep 2: It is small.", "no_answer"),
        ("Answer: red", "no_steps"),
        ("Answers vary with the light.", "no_answer"),
    ],
)
def test_unreadable_outputs_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(Rejected) as refused:
        parse_reasoning(text)
    assert refused.value.reason == reason


def test_the_prompt_lists_options_and_asks_for_the_format() -> None:
    prompt = step_prompt("What colour is the circle?", ["red", "blue"])
    assert prompt.startswith("What colour is the circle?\nOptions: red, blue.\n")
    assert '"Step 1: ..."' in prompt and '"Answer: <your answer>"' in prompt
    assert "Options" not in step_prompt("Describe it.", None)


# --- answer-switch -------------------------------------------------------------------------


def _trace(*golds: float, wrong: str = "blue") -> list[dict[str, float]]:
    """Two options: the gold 'red' at each probability given, `wrong` the rest."""
    return [{"red": p, wrong: round(1 - p, 10)} for p in golds]


def test_the_switch_is_the_first_step_where_a_wrong_option_leads_by_the_margin_and_stays() -> None:
    # prior favours red; step 2 wobbles (lead 0.04 < margin), step 3 switches and stays
    trace = _trace(0.9, 0.8, 0.52, 0.3, 0.2, 0.1)
    result = find_switch(trace, "red", SwitchConfig(margin=0.1, persistence=2))
    assert (result.status, result.step, result.wrong_option) == ("switch", 3, "blue")
    assert result.lead == pytest.approx(0.4)


def test_the_margin_is_respected() -> None:
    trace = _trace(0.9, 0.46, 0.46, 0.46)  # blue leads by 0.08 at every step
    assert find_switch(trace, "red", SwitchConfig(margin=0.1)).status == "no_switch"
    found = find_switch(trace, "red", SwitchConfig(margin=0.05))
    assert (found.status, found.step) == ("switch", 1)


def test_persistence_skips_a_lead_that_does_not_last() -> None:
    # blue leads at step 1 but red is back ahead at step 2; blue leads again from step 3
    trace = _trace(0.9, 0.3, 0.7, 0.3, 0.2, 0.2)
    assert find_switch(trace, "red", SwitchConfig(persistence=1)).step == 3
    assert find_switch(trace, "red", SwitchConfig(persistence=0)).step == 1


def test_a_lead_needs_lambda_steps_only_where_the_reasoning_has_them() -> None:
    trace = _trace(0.9, 0.8, 0.3, 0.2)  # switch at 2, one step left, lambda 3
    assert find_switch(trace, "red", SwitchConfig(persistence=3)).step == 2


def test_a_switch_at_the_last_step_alone_is_recorded_as_final_step() -> None:
    result = find_switch(_trace(0.9, 0.8, 0.7, 0.2), "red", SwitchConfig())
    assert (result.status, result.step) == ("final_step", 3)


def test_no_switch_and_ties_are_recorded_not_dropped() -> None:
    assert find_switch(_trace(0.9, 0.8, 0.7), "red", SwitchConfig()).status == "no_switch"
    tie = find_switch(_trace(0.9, 0.7, 0.5), "red", SwitchConfig())
    assert (tie.status, tie.step, tie.wrong_option) == ("tie", None, None)


def test_the_strongest_wrong_option_is_named_among_several() -> None:
    trace = [
        {"red": 0.8, "blue": 0.1, "green": 0.1},
        {"red": 0.2, "blue": 0.3, "green": 0.5},
        {"red": 0.1, "blue": 0.2, "green": 0.7},
    ]
    result = find_switch(trace, "red", SwitchConfig())
    assert (result.status, result.step, result.wrong_option) == ("switch", 1, "green")


def test_choice_scores_become_probabilities() -> None:
    probabilities = choice_probabilities({"red": -1.0, "blue": -1.0 - 0.6931471805599453})
    assert probabilities["red"] == pytest.approx(2 / 3)
    assert sum(probabilities.values()) == pytest.approx(1.0)


def test_a_malformed_trace_is_an_error() -> None:
    with pytest.raises(ValueError, match="prior and at least one step"):
        find_switch(_trace(0.9), "red", SwitchConfig())
    with pytest.raises(ValueError, match="gold"):
        find_switch([{"red": 0.9, "blue": 0.1}, {"blue": 1.0}], "red", SwitchConfig())


# --- skills --------------------------------------------------------------------------------


def test_skills_are_normalised() -> None:
    assert normalise_skill("  Skill:  Colour   Recognition. ") == "colour recognition"
    assert normalise_skill("- Counting objects") == "counting objects"
    assert normalise_skill("2) “Spatial” reasoning!") == "“spatial” reasoning"
    assert normalise_skill("ＣＯＵＮＴＩＮＧ") == "counting"  # full-width letters (NFKC)
    assert split_skills("Colour recognition, counting;\n colour recognition\n\n") == [
        "colour recognition",
        "counting",
    ]


def test_near_duplicates_merge_into_the_most_frequent_name_and_distinct_skills_stay() -> None:
    counts, mapping = count_skills(
        ["Colour recognition"] * 3
        + ["color recognition", "Counting objects", "object counting", "shape recognition"]
    )
    assert counts == {"colour recognition": 4, "counting objects": 2, "shape recognition": 1}
    assert mapping["color recognition"] == "colour recognition"
    assert mapping["object counting"] == "counting objects"


def test_merging_is_deterministic_whatever_the_order() -> None:
    from collections import Counter

    a = merge_skills(Counter({"object counting": 1, "counting objects": 1}))
    b = merge_skills(Counter({"counting objects": 1, "object counting": 1}))
    assert a == b == {"counting objects": "counting objects", "object counting": "counting objects"}


# --- budget and retrieval ------------------------------------------------------------------


def test_the_budget_split_sums_exactly() -> None:
    assert split_budget({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert split_budget({"a": 5, "b": 3, "c": 2}, 7) == {"a": 4, "b": 2, "c": 1}
    assert split_budget({"a": 2, "b": 0}, 5) == {"a": 5, "b": 0}
    assert split_budget({}, 5) == {}
    for budget in (0, 1, 7, 99, 10_000):
        assert sum(split_budget({"x": 7, "y": 2, "z": 1, "w": 13}, budget).values()) == budget


def test_quotas_are_proportional_to_skill_counts_or_equal() -> None:
    counts = {"counting": 6, "colour": 3, "shape": 1}
    assert skill_quotas(counts, 100, "proportional") == {"counting": 60, "colour": 30, "shape": 10}
    assert skill_quotas(counts, 100, "equal") == {"counting": 34, "colour": 33, "shape": 33}


@pytest.fixture(scope="module")
def index() -> TextIndex:
    labels = [
        ("c1", "count_objects", "counting objects"),
        ("c2", "count_objects", "counting objects, colour recognition"),
        ("c3", "count_shapes", "counting"),
        ("k1", "name_colour", "colour recognition"),
        ("k2", "name_colour", "colour recognition"),
        ("s1", "name_shape", "shape recognition"),
        ("p1", "locate", "spatial position"),
    ]
    return TextIndex.build(labels)


def test_a_skill_retrieves_exactly_its_top_k(index: TextIndex) -> None:
    selection = select_by_queries(index, {"counting objects": 2})
    assert [s.id for s in selection.samples] == ["c1", "c2"]
    assert [s.rank for s in selection.samples] == [0, 1]
    assert selection.shortfall == {}


def test_selection_deduplicates_across_skills(index: TextIndex) -> None:
    selection = select_by_queries(index, {"counting objects": 3, "colour recognition": 2})
    ids = [s.id for s in selection.samples]
    assert len(ids) == len(set(ids)) == 5
    assert ids[:3] == ["c1", "c2", "c3"]
    assert set(ids[3:]) == {"k1", "k2"}  # c2 matched colour too but was taken already


def test_a_per_task_cap_and_a_short_ranking_hand_the_rest_to_other_skills(
    index: TextIndex,
) -> None:
    selection = select_by_queries(index, {"counting": 3, "shape": 2}, per_task_cap=1)
    tasks = [s.task for s in selection.samples]
    assert tasks.count("count_objects") == 1
    assert selection.shortfall == {"counting": 1, "shape": 1}
    assert {s.id for s in selection.samples} == {"c1", "c3", "s1"}


def test_nothing_outside_the_matches_is_taken(index: TextIndex) -> None:
    selection = select_by_queries(index, {"unheard of": 4})
    assert selection.samples == [] and selection.shortfall == {"unheard of": 4}


def test_random_and_full_baselines(index: TextIndex) -> None:
    drawn = select_random(index, 3, seed=1)
    assert len({s.id for s in drawn}) == 3
    assert drawn == select_random(index, 3, seed=1)
    assert [s.id for s in select_random(index, 99, seed=1)] == [s.id for s in select_all(index)]


def test_the_index_is_saved_and_loaded(index: TextIndex, tmp_path) -> None:
    uri = str(tmp_path / "index")
    assert TextIndex.load(uri) is None
    index.save(uri, {"labels": "abc"})
    loaded = TextIndex.load(uri)
    assert loaded is not None and TextIndex.meta(uri) == {"labels": "abc", "rows": 7}
    assert loaded.ranked("colour recognition") == index.ranked("colour recognition")
    assert loaded.ids.to_pylist() == index.ids.to_pylist()


def test_an_index_refuses_repeated_ids() -> None:
    with pytest.raises(ValueError, match="'a' appears more than once"):
        TextIndex.build([("a", "t", "x"), ("a", "t", "y")])


# --- config --------------------------------------------------------------------------------


def test_the_shipped_selection_config_is_valid() -> None:
    from adamllm_core.selection.config import load_select_config

    config = load_select_config("deployments/select-vqa-rad.yaml")
    assert config.budget_sizes() == [10_000, 30_000, 100_000]
    assert config.training is not None and config.training.deployment == "train/llava-1.5-7b"
    assert config.teacher.kind == "openai" and config.student.kind == "vllm"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"methods": ["error_driven", "nearest"]}, "methods.1"),
        ({"validation.benchmark": "no_such_bench"}, "no_such_bench"),
        ({"switch.margin": 2}, "switch.margin"),
        ({"training.train.learning_rate": -1}, "learning_rate"),
        ({"budgets": ["5k"]}, "budgets.0"),
    ],
)
def test_a_bad_selection_config_names_the_key(override: dict, named: str) -> None:
    from adamllm_core.errors import ConfigError
    from adamllm_core.selection.config import load_select_config

    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_select_config("deployments/select-vqa-rad.yaml", override)


def test_adamllm_select_refuses_what_cannot_run_here_before_any_work(tmp_path) -> None:
    from typer.testing import CliRunner

    from adamllm_cli.main import app

    result = CliRunner().invoke(
        app, ["select", "--config", "deployments/select-vqa-rad.yaml", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2  # the CLI's exit code for a refused input
    assert "engine kind 'vllm' needs the vllm package" in result.output
    assert list(tmp_path.iterdir()) == []


# --- the proving ground's teacher text -------------------------------------------------------


def test_the_answer_a_prefix_implies_is_the_last_option_it_names() -> None:
    from adamllm_core.proving.selection import implied_answer

    options = ("red", "green", "blue")
    steps = ["The circle at the top left is blue.", "So the answer is green."]
    assert implied_answer([], options, "red") == "red"  # the prior's
    assert implied_answer(steps[:1], options, "red") == "blue"
    assert implied_answer(steps, options, "red") == "green"
    assert implied_answer(["The bluebird sings."], options, "red") == "red"  # whole words


def test_teacher_text_teaches_its_three_jobs(tiny_models) -> None:
    from adamllm_core.engines.hf import HFRenderer
    from adamllm_core.proving.selection import SKILL_NAMES, teacher_examples
    from adamllm_core.proving.world import WorldConfig
    from adamllm_core.selection.teacher import TeacherPrompts

    rows = teacher_examples(3, WorldConfig(), 4, HFRenderer(tiny_models["lm"]), TeacherPrompts())
    tasks = [row.task for row in rows]
    assert tasks.count("label") == tasks.count("skill") == tasks.count("switch") > 0
    named = [r.completion for r in rows if r.task != "switch"]
    assert all(c.endswith("\n") for c in named)  # the teacher learns to stop: requests stop there
    assert {c.rstrip("\n") for c in named} <= set(SKILL_NAMES.values())
    for row in rows:
        if row.task == "switch":
            assert row.prompt.endswith("the answer is:") and row.completion.startswith(" ")
        else:  # chat prompts, rendered with the teacher's own template
            assert "Reply with" in row.prompt and not row.prompt.endswith("the answer is:")


def test_without_any_pool_label_the_skill_methods_select_nothing_and_say_so(
    index: TextIndex,
) -> None:
    from adamllm_core.selection.choose import SkillTable, choose

    table = SkillTable(counts={"counting": 3, "colour": 1}, mapping={})
    common = {
        "skills": table,
        "skill_labels": None,
        "instructions": index,
        "wrong_questions": ["How many?"],
        "validation_questions": ["How many?"],
        "split": "proportional",
        "per_task_cap": None,
        "seed": 0,
    }
    chosen = choose("error_driven", 8, **common)
    assert chosen.samples == [] and chosen.shortfall == {"counting": 6, "colour": 2}
    assert choose("no_skill_analysis", 8, **common).shortfall == {"How many?": 8}
    assert len(choose("random", 3, **common).samples) == 3  # the pool itself is still there
