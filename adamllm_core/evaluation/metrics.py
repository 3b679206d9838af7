"""Scoring rules of the domain benchmarks (paper Appendix H), as pure functions.

Written from the published rule descriptions (LLaVA-Med's VQA scoring, the MMMU-style option
parser AdaMLLM uses, per-sample binary recall / F1, Rouge-L); no code is taken from LLaVA-Med
or QA-Synthesizer. Every function returns a score in [0, 1]; reports multiply by 100.

Faithful quirks are kept on purpose so that numbers stay comparable with the paper, and each
one is named where it happens:

* `normalize_answer` removes at most 32 periods (the reference passes `re.UNICODE` == 32 as
  the `count` of `re.sub`), and deletes *all* listed punctuation once the text holds a
  digit,digit comma anywhere.
* `closed_hit_paper` uses plain substring tests ("normal" contains "no", "eyes" contains
  "yes", and a non-yes/no gold such as "mri" never scores); `closed_hit_corrected` is the
  strict alternative. Never mix the two in one report.
* `parse_choice` reads a sentence-initial article "A" as option A.
* `parse_labels` matches names as substrings with no word boundaries ("rice" in "price").

Deviations from the reference are listed in the docstrings of `parse_labels` (removal with a
space, selectable) and `rouge_l` (Google's `rouge-score` instead of pltrdy `rouge`).
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "closed_hit_corrected",
    "closed_hit_paper",
    "normalize_answer",
    "open_recall",
    "parse_choice",
    "parse_class",
    "parse_labels",
    "rouge_l",
    "set_f1",
    "set_recall",
]

# ---------------------------------------------------------------------------------------------
# Answer normalisation (LLaVA-Med `normalize_word` behaviour, on lowercased text)
# ---------------------------------------------------------------------------------------------

# Each character is deleted or spaced by tests on the text as given, so the order is immaterial.
_PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip
# Not in the list, so kept: ':', "'", '*', '#', '%', '&', '.', (periods are handled below).

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period not followed by a digit ("3.5" keeps its period, "yes." loses it).
_PERIOD = re.compile(r"\.(?!\d)")
# Quirk of the reference: it passes re.UNICODE (== 32) as the positional `count` argument of
# `sub`, so only the first 32 such periods are removed.
_PERIOD_LIMIT = 32

_NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# The standard VQA-evaluation contractions table: words written without their apostrophe map
# to the apostrophised form. Kept as published, including its oddities: entries with capitals
# ("Im", "Ive", "Id've") never fire on lowercased text, "somebody'd" maps *to* "somebodyd",
# and "let's"/"she's" map to themselves.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def normalize_answer(text: str) -> str:
    """Normalise a VQA answer or prediction the way LLaVA-Med's scorer does.

    Steps, applied to the lowercased text:

    1. Punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: a character is deleted
       when it appears next to a space anywhere in the text ("a - b" -> "a  b"), or when the
       text contains a digit,digit comma anywhere ("1,000 cells" -> "1000 cells", and then
       every listed character is deleted); otherwise it becomes a space ("x-ray" -> "x ray").
       The adjacency test looks at the text as given, not as already rewritten.
    2. Periods not followed by a digit are removed ("yes." -> "yes", "3.5" kept). Faithful
       quirk: at most the first 32 such periods are removed.
    3. Whitespace tokenisation; number words none/zero..ten become digits ("none" -> "0");
       the articles a/an/the are dropped; the VQA contractions table restores apostrophes
       ("dont" -> "don't").
    4. Tokens are joined with single spaces and any comma left is removed.

    Characters outside the list (':', "'", '%', ...) are kept: "answer: yes" stays as is.
    """
    original = text.lower()
    delete_all = _DIGIT_COMMA_DIGIT.search(original) is not None
    out = original
    for p in _PUNCTUATION:
        if delete_all or (p + " ") in original or (" " + p) in original:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out, count=_PERIOD_LIMIT)

    words: list[str] = []
    for word in out.split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words).replace(",", "")


# ---------------------------------------------------------------------------------------------
# SLAKE / PathVQA / VQA-RAD
# ---------------------------------------------------------------------------------------------


def open_recall(prediction: str, answer: str) -> float:
    """Token recall of the gold answer in the prediction (LLaVA-Med OPEN score), in [0, 1].

    Both sides are normalised with `normalize_answer` (twice, as the reference does: once by
    the evaluator and again inside its recall function; the second pass only matters past the
    32-period limit) and split into unigram counts. For each word in both, the *prediction's*
    count is added to tp; for each gold-only word its gold count is added to fn; recall is
    tp / (tp + fn). Scores 0 when either side has no words or nothing is shared. A long
    prediction holding every gold word scores 1: this is recall, not VQA accuracy.
    """
    pred_counts = Counter(normalize_answer(normalize_answer(prediction)).split())
    gold_counts = Counter(normalize_answer(normalize_answer(answer)).split())
    if not pred_counts or not gold_counts:
        return 0.0
    tp = sum(count for word, count in pred_counts.items() if word in gold_counts)
    fn = sum(count for word, count in gold_counts.items() if word not in pred_counts)
    if tp == 0:
        return 0.0
    return tp / (tp + fn)


def closed_hit_paper(prediction: str, answer: str) -> float:
    """AdaMLLM's copy of LLaVA-Med's CLOSED rule, with misses counted (1.0 or 0.0).

    After normalisation, a hit needs ('yes' in prediction or 'no' in prediction) and
    (answer in prediction), all plain substring tests. Faithful quirks: "normal", "not",
    "nodule" contain "no" and "eyes" contains "yes"; "yes, no" is a hit for either gold;
    a gold that is not yes/no ("mri", "left") scores 0 even when predicted exactly, unless
    the prediction happens to contain "yes" or "no". (The original LLaVA-Med script dropped
    such misses from the denominator; AdaMLLM, and this function, count them as 0.)
    """
    pred = normalize_answer(prediction)
    gold = normalize_answer(answer)
    return 1.0 if ("yes" in pred or "no" in pred) and gold in pred else 0.0


_YES_NO_WORD = re.compile(r"\b(yes|no)\b")


def closed_hit_corrected(prediction: str, answer: str) -> float:
    """A strict CLOSED rule (1.0 or 0.0); not the paper's, so report it under its own name.

    Both sides are normalised. For a yes/no gold the first whole word "yes" or "no" in the
    prediction must equal the gold ("normal" and "eyes" are not answers, and "no, yes"
    answers "no"). For any other gold ("mri", "left side", "axial") the gold must occur in
    the prediction as a whole-word phrase. The gold answer itself always scores 1, except a
    gold that normalises to nothing (e.g. "the"), which scores 0.
    """
    pred = normalize_answer(prediction)
    gold = normalize_answer(answer)
    if gold in ("yes", "no"):
        first = _YES_NO_WORD.search(pred)
        return 1.0 if first is not None and first.group(1) == gold else 0.0
    if not gold:
        return 0.0
    phrase = re.compile(r"(?<!\w)" + re.escape(gold) + r"(?!\w)")
    return 1.0 if phrase.search(pred) else 0.0


# ---------------------------------------------------------------------------------------------
# Multiple choice (PMC-VQA, Food101) and multi-label (FoodSeg103, Nutrition5K)
# ---------------------------------------------------------------------------------------------

_EDGE_CHARS: tuple[str, ...] = (",", ".", "!", "?", ";", ":", "'")


def parse_choice(response: str, choices: Mapping[str, str], seed: int | str) -> tuple[str, bool]:
    """Pick the option a free-text response names (the MMMU-style parser AdaMLLM uses).

    `choices` maps each option key to its text, in the benchmark's order ({"A": "...", ...}
    for PMC-VQA, {"0": "apple pie", ..., "100": "waffles"} for Food101). Returns
    (key, fallback); fallback is True when nothing matched and the key was drawn at random.

    1. The characters , . ! ? ; : ' are stripped from both ends, one character kind after the
       other in that order (so "B.," -> "B" but "B,." -> "B,"), and the result is padded with
       one space on each side.
    2. Candidates are the keys written as "(K)"; if none, the keys written as " K " (so a
       sentence-initial article, "A CT scan shows ...", reads as option A: faithful quirk;
       for Food101 any standalone number is an option); if none and the padded response is
       longer than 5 characters, the keys whose option text occurs in it (case-insensitive
       substring).
    3. No candidate: `random.Random(seed).choice(keys in the given order)`, flagged. The
       official code seeds with the record's index in the test split.
    4. Several: the one whose matched form ("(K)", " K " or the option text) occurs last
       (rightmost start); on a tie the earlier key in `choices` order wins.
    """
    keys = list(choices)
    if not keys:
        raise ValueError("parse_choice needs at least one option")
    for char in _EDGE_CHARS:
        response = response.strip(char)
    padded = f" {response} "

    forms = {key: f"({key})" for key in keys if f"({key})" in padded}
    if not forms:
        forms = {key: f" {key} " for key in keys if f" {key} " in padded}
    haystack = padded
    if not forms and len(padded) > 5:
        haystack = padded.lower()
        forms = {key: text.lower() for key, text in choices.items() if text.lower() in haystack}

    if not forms:
        return random.Random(seed).choice(keys), True
    # max() keeps the first of equal positions, i.e. the earlier key in `choices` order.
    best = max(forms, key=lambda key: haystack.rfind(forms[key]))
    return best, False


def parse_labels(response: str, names: Iterable[str], *, removal: str = " ") -> list[str]:
    """Names (class or ingredient names) mentioned in a response, longest name first.

    Matching is a case-insensitive substring test with no word boundaries (faithful: "rice"
    is found in "price"). Names are tried from longest to shortest (equal lengths keep their
    order in `names`), and each match is cut out of the response before shorter names are
    tried, so "egg tart and eggplant" yields "eggplant" and "egg tart" but not "egg".
    Returns the matched names, as given in `names`, in the order they were found.

    Deviation: the official code cuts matches out with '', which can join the text on either
    side into a name that was never written ("pimangoe" minus "mango" leaves "pie"); we cut
    with a space by default. Pass ``removal=""`` for the official behaviour.
    """
    ordered = sorted(names, key=len, reverse=True)  # stable: equal lengths keep list order
    if any(not name for name in ordered):
        raise ValueError("parse_labels: names must be non-empty strings")
    text = response.lower()
    found: list[str] = []
    for name in ordered:
        needle = name.lower()
        if needle in text:
            found.append(name)
            text = text.replace(needle, removal)
    return found


def set_recall(pred: Collection[Any], gold: Collection[Any]) -> float:
    """Per-sample binary recall |pred & gold| / |gold|, as sklearn's `recall_score` with
    zero_division=1: an empty gold set scores 1.0 whatever was predicted."""
    gold_set, pred_set = set(gold), set(pred)
    if not gold_set:
        return 1.0
    return len(pred_set & gold_set) / len(gold_set)


def set_f1(pred: Collection[Any], gold: Collection[Any]) -> float:
    """Per-sample binary F1 2|pred & gold| / (|pred| + |gold|), as sklearn's `f1_score` with
    zero_division=1: both sets empty score 1.0; exactly one empty scores 0.0."""
    gold_set, pred_set = set(gold), set(pred)
    if not gold_set and not pred_set:
        return 1.0
    return 2 * len(pred_set & gold_set) / (len(pred_set) + len(gold_set))


# ---------------------------------------------------------------------------------------------
# Recipe1M / NWPU-Captions
# ---------------------------------------------------------------------------------------------


@functools.cache
def _rouge_l_scorer() -> Any:
    from rouge_score import rouge_scorer  # imports nltk; kept out of module import time

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure in [0, 1] (Google's `rouge-score`, `rougeL`, no stemming).

    An empty prediction, or one with no alphanumeric token, scores 0.0 (the official wrapper
    also scores 0 when pltrdy `rouge` raises on an empty hypothesis).

    Deviation: the official code used pltrdy `rouge`, which is case-sensitive, splits
    sentences on "." and computes a summary-level union LCS over distinct words. `rouge-score`
    lowercases, replaces every character outside [a-z0-9] with a space (so punctuation and
    non-ASCII letters such as "é" split or vanish), and takes one LCS over the whole token
    sequences. Scores are therefore close to but not identical with the paper's.
    """
    if not prediction.strip() or not reference.strip():
        return 0.0
    score = _rouge_l_scorer().score(reference, prediction)["rougeL"]
    return float(score.fmeasure)


def _words(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split()) + " "


def parse_class(response: str, names: Sequence[str], *, joined: bool = True) -> str | None:
    """The class a free-text answer names, for scene classification (CLRS, UC Merced), where
    no official parser exists: whole-word matches, longest name first (so "airport" is not
    "port", "parking lot" not "park"), and when several classes are named the one mentioned
    last; failing that, a name written together ("storagetanks"), longest first. None when
    no class is named. `joined=False` skips the written-together pass (whole words only)."""
    text = _words(response)
    phrases = [(name, _words(name)) for name in sorted(names, key=len, reverse=True)]
    found: list[tuple[int, str]] = []  # (last position, name)
    for name, phrase in phrases:
        if phrase.strip() and phrase in text:
            found.append((text.rfind(phrase), name))
            text = text.replace(
                phrase, " " * len(phrase)
            )  # consumed: shorter names cannot reuse it
    if found:
        return max(found)[1]
    if not joined:
        return None
    squashed = text.replace(" ", "")
    return next(
        (
            name
            for name, phrase in phrases
            if phrase.strip() and phrase.replace(" ", "") in squashed
        ),
        None,
    )
