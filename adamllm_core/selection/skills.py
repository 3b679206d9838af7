"""The skills a teacher names, made comparable: normalised (case, width, whitespace, list
markers and end punctuation) and near-duplicates merged with RapidFuzz ("color recognition"
and "colour recognition", "counting objects" and "object counting"), then counted."""

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

from rapidfuzz import fuzz, process

_MARKER = re.compile(r"^\s*(?:[-*\u2022]+|\d{1,3}[.)])\s*")
_LABEL = re.compile(r"^\s*(?:missing\s+)?skills?\s*:\s*", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_EDGES = "\"'`.,;:!?()[]{} "
# token_sort_ratio: at 90, spelling and word-order variants merge; "shape recognition" and
# "colour recognition" (63) stay apart.
DEFAULT_MERGE_THRESHOLD = 90.0


def normalise_skill(text: str) -> str:
    """Lower case, one space between words, no list marker, label or end punctuation."""
    text = unicodedata.normalize("NFKC", text)
    text = _LABEL.sub("", _MARKER.sub("", text))
    return _SPACES.sub(" ", text).strip(_EDGES).lower().strip(_EDGES)


def split_skills(text: str) -> list[str]:
    """A labelling answer ("a, b; c" or one per line) as normalised skills, in order, once each."""
    parts = (normalise_skill(part) for part in re.split(r"[,;\n]", text))
    return list(dict.fromkeys(part for part in parts if part))


def merge_skills(
    counts: Counter[str], threshold: float = DEFAULT_MERGE_THRESHOLD
) -> dict[str, str]:
    """Each normalised skill mapped to its group's name: groups are formed greedily, the most
    frequent skill first (then alphabetical), each joining the group whose name it matches
    best if that scores at least `threshold` (token_sort_ratio, 0-100), else naming a new
    group."""
    order = sorted(counts, key=lambda skill: (-counts[skill], skill))
    names: list[str] = []
    mapping: dict[str, str] = {}
    for skill in order:
        match = (
            process.extractOne(skill, names, scorer=fuzz.token_sort_ratio, score_cutoff=threshold)
            if names
            else None
        )
        if match is None:
            names.append(skill)
            mapping[skill] = skill
        else:
            mapping[skill] = match[0]
    return mapping


def count_skills(
    named: Iterable[str], threshold: float = DEFAULT_MERGE_THRESHOLD
) -> tuple[Counter[str], dict[str, str]]:
    """Counts per merged skill of the raw names given, and each normalised name's group."""
    raw = Counter(s for s in (normalise_skill(name) for name in named) if s)
    mapping = merge_skills(raw, threshold)
    merged: Counter[str] = Counter()
    for skill, count in raw.items():
        merged[mapping[skill]] += count
    return merged, mapping
