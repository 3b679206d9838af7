"""Scoring rules of the domain benchmarks: expected values are worked out by hand from the
rule descriptions (LLaVA-Med normalisation and OPEN/CLOSED scores, the MMMU-style option
parser, longest-first label matching, per-sample recall/F1, Rouge-L)."""

import random

import pytest

from adamllm_core.evaluation.metrics import (
    closed_hit_corrected,
    closed_hit_paper,
    normalize_answer,
    open_recall,
    parse_choice,
    parse_labels,
    rouge_l,
    set_f1,
    set_recall,
)

# ---------------------------------------------------------------------------------------------
# normalize_answer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", "yes"),  # lowercased, final period removed
        ("x-ray", "x ray"),  # '-' touches no space: replaced by a space
        ("Chest X-Ray", "chest x ray"),
        ("CT/MRI", "ct mri"),
        ("The left lung, and the right-lung.", "left lung and right lung"),  # ", " deletes ','
        ("No, it is not.", "no it is not"),
        ("3.5 cm.", "3.5 cm"),  # a period before a digit is kept
        ("1,000 cells", "1000 cells"),  # digit,digit: punctuation deleted, not spaced
        ("1,000 x-ray", "1000 xray"),  # ... every listed character, '-' included
        ("a - b c-d", "b cd"),  # " -" occurs, so every '-' is deleted; "a" is an article
        ("Answer: yes", "answer: yes"),  # ':' is not in the list
        ("it's normal", "it's normal"),  # "'" is not in the list
        ("Two", "2"),
        ("none", "0"),
        ("zero lesions", "0 lesions"),
        ("ten", "10"),
        ("eleven", "eleven"),  # the table stops at ten
        ("An apple and the pear", "apple and pear"),
        ("A", ""),
        ("It isnt", "it isn't"),
        ("Whats that?", "what's that"),
        ("I dont know", "i don't know"),
        ("Im fine", "im fine"),  # the table's "Im" key has a capital: never fires
        ("  multiple   spaces\there ", "multiple spaces here"),
        ("", ""),
        (" \t\n", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_removes_at_most_32_periods():
    # "a." * 40: the first 32 periods go, gluing 32 "a"s to the 33rd; 8 periods remain.
    assert normalize_answer("a." * 40) == "a" * 33 + ".a" * 7 + "."


# ---------------------------------------------------------------------------------------------
# open_recall
# ---------------------------------------------------------------------------------------------


def test_open_recall_full_when_every_gold_word_is_predicted():
    assert open_recall("The lesion is in the left temporal lobe.", "left temporal lobe") == 1.0


def test_open_recall_partial():
    # gold {right, parietal, lobe}; only "parietal" shared: tp=1, fn=2 -> 1/3
    assert open_recall("left parietal", "right parietal lobe") == pytest.approx(1 / 3)


def test_open_recall_counts_true_positives_with_the_prediction_counts():
    # tp = prediction's count of "left" = 2, fn = count of "lobe" = 1 -> 2/3 (min counts: 1/2)
    assert open_recall("left left", "left lobe") == pytest.approx(2 / 3)


def test_open_recall_number_words():
    assert open_recall("two", "2") == 1.0
    assert open_recall("There are 2 nodules", "two") == 1.0


def test_open_recall_articles_are_not_words():
    # "an" and "the" vanish: gold {liver}, prediction {liver} -> 1.0
    assert open_recall("the liver", "an liver") == 1.0
    # both sides empty after normalisation -> 0
    assert open_recall("the", "a") == 0.0


def test_open_recall_empty_or_disjoint():
    assert open_recall("", "liver") == 0.0
    assert open_recall("liver", "") == 0.0
    assert open_recall("spleen", "liver") == 0.0


def test_open_recall_normalises_twice_like_the_reference():
    # Pass 1 on "a." * 40 leaves "a" * 33 + ".a" * 7 + "."; pass 2 removes the 8 periods left,
    # giving the single word "a" * 40, which is the gold.
    assert open_recall("a." * 40, "a" * 40) == 1.0


def test_open_recall_punctuation():
    # "x-ray" -> "x ray" on both sides; "Chest X-ray." -> {chest, x, ray}
    assert open_recall("X-ray.", "Chest X-ray") == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# CLOSED rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "answer", "paper", "corrected"),
    [
        ("Yes, the trachea is midline.", "yes", 1.0, 1.0),
        ("Yes.", "Yes", 1.0, 1.0),
        ("No.", "yes", 0.0, 0.0),
        # 'no' is a substring of "normal": a hit under the paper rule, not a yes/no word
        ("normal", "no", 1.0, 0.0),
        ("It looks normal", "yes", 0.0, 0.0),
        # "eyes" contains "yes"
        ("The eyes", "yes", 1.0, 0.0),
        # both labels are substrings; the first yes/no word is "yes"
        ("yes, no", "no", 1.0, 0.0),
        ("yes, no", "yes", 1.0, 1.0),
        ("No, it is normal", "no", 1.0, 1.0),
        # non-yes/no gold: the paper rule needs a "yes"/"no" substring as well
        ("MRI", "MRI", 0.0, 1.0),
        ("This is an MRI scan.", "mri", 0.0, 1.0),
        ("mri, no doubt", "mri", 1.0, 1.0),
        ("MRIs", "mri", 0.0, 0.0),  # whole word only under the corrected rule
        ("Left side", "Left side", 0.0, 1.0),
        ("left", "left side", 0.0, 0.0),
        ("", "yes", 0.0, 0.0),
        ("", "mri", 0.0, 0.0),
    ],
)
def test_closed_rules(prediction, answer, paper, corrected):
    assert closed_hit_paper(prediction, answer) == paper
    assert closed_hit_corrected(prediction, answer) == corrected


@pytest.mark.parametrize("gold", ["yes", "No", "MRI", "Left side", "Axial", "T2-weighted", "two"])
def test_closed_corrected_scores_the_gold_itself(gold):
    assert closed_hit_corrected(gold, gold) == 1.0


def test_closed_corrected_empty_gold_scores_zero():
    assert closed_hit_corrected("the", "the") == 0.0


def test_closed_corrected_first_yes_no_word_decides():
    assert closed_hit_corrected("No, yes", "yes") == 0.0
    assert closed_hit_corrected("No, yes", "no") == 1.0


# ---------------------------------------------------------------------------------------------
# parse_choice
# ---------------------------------------------------------------------------------------------

PMC = {"A": "CT scan", "B": "MRI", "C": "X-ray", "D": "Ultrasound"}


def test_parse_choice_bracketed_option():
    assert parse_choice("(B)", PMC, seed=0) == ("B", False)
    assert parse_choice("I pick (D).", PMC, seed=0) == ("D", False)


def test_parse_choice_spaced_letter_after_stripping_edges():
    assert parse_choice("The answer is C.", PMC, seed=0) == ("C", False)
    assert parse_choice("B.,", PMC, seed=0) == ("B", False)


def test_parse_choice_brackets_beat_spaced_letters():
    # " A " also occurs, but a bracketed key makes only bracketed keys candidates
    assert parse_choice("A good guess is (C)", PMC, seed=0) == ("C", False)


def test_parse_choice_last_mention_wins():
    assert parse_choice("(A) is wrong, the answer is (C)", PMC, seed=0) == ("C", False)
    assert parse_choice("C or A", PMC, seed=0) == ("A", False)
    assert parse_choice("A or C", PMC, seed=0) == ("C", False)
    # the last occurrence of each key counts, not its first
    assert parse_choice("(C) no, (A), final answer (C)", PMC, seed=0) == ("C", False)


def test_parse_choice_sentence_initial_article_reads_as_option_a():
    # Faithful quirk: " A " matches the article, so the option text ("CT" is B here) is
    # never consulted.
    choices = {"A": "Ultrasound", "B": "CT", "C": "MRI", "D": "PET"}
    assert parse_choice("A CT scan shows a mass", choices, seed=0) == ("A", False)


def test_parse_choice_option_text():
    assert parse_choice("I think it is an ultrasound image", PMC, seed=0) == ("D", False)
    # two texts: "mri" starts at 5, "ct scan" at 13 in " not mri but ct scan " -> A
    assert parse_choice("Not MRI but CT scan", PMC, seed=0) == ("A", False)


def test_parse_choice_equal_positions_keep_the_earlier_key():
    # "apple pie" and "apple" both start at index 7 of " I see apple pie here "
    assert parse_choice("I see apple pie here", {"0": "apple pie", "1": "apple"}, 1) == ("0", False)
    assert parse_choice("I see apple pie here", {"1": "apple", "0": "apple pie"}, 1) == ("1", False)


def test_parse_choice_numbers_as_keys():
    food = {"0": "apple pie", "1": "baby back ribs", "2": "baklava"}
    # Faithful quirk: the standalone "2" is read as option 2 before any option text
    assert parse_choice("2 slices of apple pie", food, seed=3) == ("2", False)
    assert parse_choice("Baklava!", food, seed=3) == ("2", False)


def test_parse_choice_random_fallback_is_seeded_and_flagged():
    keys = ["A", "B", "C", "D"]
    for seed in (0, 1, 7, 1234, "row-17"):
        expected = random.Random(seed).choice(keys)
        assert parse_choice("I cannot tell from this image", PMC, seed) == (expected, True)
        assert parse_choice("I cannot tell from this image", PMC, seed) == (expected, True)
    picks = {parse_choice("", PMC, seed)[0] for seed in range(50)}
    assert picks == set(keys)  # the seed really drives the draw


def test_parse_choice_fallback_draws_from_keys_in_given_order():
    # Food101-style keys: the given order 0, 1, 2, ..., 10 is not the sorted order
    choices = {str(i): f"class {i}" for i in range(11)}
    keys = [str(i) for i in range(11)]
    drawn = [parse_choice("???", choices, seed) for seed in range(20)]
    assert drawn == [(random.Random(seed).choice(keys), True) for seed in range(20)]


def test_parse_choice_short_response_skips_option_text():
    # " MRI " is 5 characters, not more than 5: option text is not tried, so it falls back
    key, fallback = parse_choice("MRI", PMC, seed=5)
    assert fallback is True
    assert key == random.Random(5).choice(["A", "B", "C", "D"])
    assert parse_choice("MRI!", PMC, seed=5)[1] is True  # "!" is stripped first
    # Edge characters are stripped one kind at a time in the order , . ! ? ; : '
    # "MRI.!" loses "!" only after the "." pass, leaving " MRI. " (6 characters)
    assert parse_choice("MRI.!", PMC, seed=5) == ("B", False)
    assert parse_choice("an MRI", PMC, seed=5) == ("B", False)


def test_parse_choice_needs_options():
    with pytest.raises(ValueError, match="parse_choice needs at least one option"):
        parse_choice("(A)", {}, seed=0)


# ---------------------------------------------------------------------------------------------
# parse_labels
# ---------------------------------------------------------------------------------------------


def test_parse_labels_longest_first_consumes_matches():
    # "egg tart" and "eggplant" are both 8 characters: list order decides; "egg" is gone
    names = ["egg", "egg tart", "eggplant"]
    assert parse_labels("egg tart and eggplant", names) == ["egg tart", "eggplant"]
    assert parse_labels("egg tart and eggplant", ["eggplant", "egg", "egg tart"]) == [
        "eggplant",
        "egg tart",
    ]


def test_parse_labels_case_insensitive_keeps_given_names():
    assert parse_labels("Some FRENCH BEANS, and beans", ["beans", "French beans"]) == [
        "French beans",
        "beans",
    ]
    assert parse_labels("Some FRENCH BEANS", ["beans", "French beans"]) == ["French beans"]


def test_parse_labels_substring_quirk():
    assert parse_labels("The price is high", ["rice", "tea"]) == ["rice"]


def test_parse_labels_removal_mode():
    assert parse_labels("pimangoe", ["mango", "pie"]) == ["mango"]
    assert parse_labels("pimangoe", ["mango", "pie"], removal="") == ["mango", "pie"]


def test_parse_labels_order_and_empty():
    assert parse_labels("tea and pie", ["pie", "tea"]) == ["pie", "tea"]
    assert parse_labels("tea and pie", ["tea", "pie"]) == ["tea", "pie"]
    assert parse_labels("", ["tea", "pie"]) == []
    assert parse_labels("tea", []) == []
    with pytest.raises(ValueError, match="parse_labels: names must be non-empty strings"):
        parse_labels("tea", ["tea", ""])


# ---------------------------------------------------------------------------------------------
# set_recall / set_f1
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold", "recall", "f1"),
    [
        (set(), set(), 1.0, 1.0),  # zero_division=1
        ({1}, set(), 1.0, 0.0),  # no positives: recall 1, f1 0
        (set(), {1}, 0.0, 0.0),
        ({1, 2, 3}, {2, 3, 4, 5}, 2 / 4, 2 * 2 / (3 + 4)),
        ({"egg", "rice"}, {"egg", "rice"}, 1.0, 1.0),
        ({"egg"}, {"rice"}, 0.0, 0.0),
        (["egg", "egg"], ["egg", "rice"], 1 / 2, 2 * 1 / (1 + 2)),  # duplicates collapse
    ],
)
def test_set_scores(pred, gold, recall, f1):
    assert set_recall(pred, gold) == pytest.approx(recall)
    assert set_f1(pred, gold) == pytest.approx(f1)


# ---------------------------------------------------------------------------------------------
# rouge_l
# ---------------------------------------------------------------------------------------------


def test_rouge_l_bounds():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("dog barks loudly", "the cat sat") == 0.0


def test_rouge_l_empty_prediction():
    assert rouge_l("", "the cat sat") == 0.0
    assert rouge_l("   ", "the cat sat") == 0.0
    assert rouge_l("?!", "the cat sat") == 0.0  # no alphanumeric token


def test_rouge_l_partial():
    # pred [the cat sat on the mat], ref [the cat was on a mat]: LCS = the cat on mat = 4
    # P = 4/6, R = 4/6, F = 2/3
    assert rouge_l("the cat sat on the mat", "the cat was on a mat") == pytest.approx(2 / 3)
    # pred [the cat] (2), ref [the black cat sat down] (5): LCS = 2
    # P = 2/2, R = 2/5, F = 2 * 1 * 0.4 / 1.4 = 4/7
    assert rouge_l("the cat", "the black cat sat down") == pytest.approx(4 / 7)


def test_rouge_l_lowercases_and_drops_punctuation():
    # rouge-score tokenises on [a-z0-9] after lowercasing (pltrdy `rouge` would differ)
    assert rouge_l("The Cat!", "the cat") == pytest.approx(1.0)
