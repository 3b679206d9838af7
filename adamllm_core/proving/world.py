"""A generated visual world for the proving ground: scenes of coloured shapes on a grid.

Seeded and deterministic: the same `WorldConfig` and seed give byte-identical images and
text. A scene is a few objects (shape, colour, size, cell of a 3x3 grid); it is rendered
with Pillow, described by captions in several styles, and asked questions by skill with
one-word gold answers. `answer_question` answers any question of the grammar from a scene:
it is how the proving ground measures synthetic answers against the truth, never a model.

The *general* world draws its colours and shapes with a long tail (the rare ones are about
5% of objects each); the *domain* draws mostly from that tail: what a general model has
barely seen, and what the domain's captions teach.
"""

import io
import random
import re
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.prompts import SYNTH_INFORMATIVE_HINT, SYNTH_PRECISE_HINT

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
SKILLS = ("colour", "shape", "count", "row", "column", "size", "existence", "relation")
# The answers a question of each skill can have: the benchmark's options per skill.
SKILL_ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": NUMBERS[1:5],
    "row": ROWS,
    "column": COLUMNS,
    "size": SIZES,
    "existence": ("yes", "no"),
    "relation": tuple(COLOURS),
}
# Every word that names an attribute or a count (answers, and what captions state).
ATTRIBUTE_WORDS = (*COLOURS, *SHAPES, *SIZES, *ROWS, *COLUMNS, *NUMBERS)
OPEN_QUESTIONS = ("Describe the image.", "What can you tell me about this picture?")
# The language model's copy drills: a list of world words, then the same list again.
COPY_DRILL_PROMPTS = ("List some words.", "Say them again.")
# Answer-length instructions in the language model's text, as instruction-tuned LLMs follow
# them (Table 1's hints among them): one question of its text asks for the answer alone,
# another for the facts first.
BRIEF_INSTRUCTIONS = (SYNTH_PRECISE_HINT, "Answer in one word.", "Give a short answer.")
LONG_INSTRUCTIONS = (SYNTH_INFORMATIVE_HINT, "Explain your answer.", "Answer and say why.")


class Palette(BaseModel):
    """Which colours and shapes a world draws, with weights (a long tail is a small weight)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    colours: dict[str, float]
    shapes: dict[str, float]
    background: tuple[int, int, int] = (255, 255, 255)


GENERAL = Palette(
    colours={"red": 1, "green": 1, "blue": 1, "yellow": 1, "purple": 0.2, "orange": 0.2},
    shapes={"circle": 1, "square": 1, "triangle": 1, "diamond": 0.2, "cross": 0.2},
)
# Same background as the general world: a grey one (tried first) put every patch of every
# image out of the base's distribution; the base then answered nothing on the domain (7%),
# and the synthesizer, unable to read those images, ignored the captions too (7% parsed).
DOMAIN = Palette(
    colours={"purple": 1, "orange": 1, "green": 0.5, "yellow": 0.5},
    shapes={"diamond": 1, "cross": 1, "circle": 0.5},
)
# What the LLM's text describes: every colour and shape evenly, no images.
TEXT = Palette(colours=dict.fromkeys(COLOURS, 1.0), shapes=dict.fromkeys(SHAPES, 1.0))


class WorldConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # 96 px: each cell of the 3x3 grid is 32 px, one patch of the models' vision tower (the
    # models take their image and patch size from here), so every object is one image token.
    # A multiple of 3, so that the cells are whole patches.
    image_size: int = Field(default=96, ge=33, multiple_of=3)
    min_objects: int = Field(default=1, ge=1)
    max_objects: int = Field(default=4, le=4)
    general: Palette = GENERAL
    domain: Palette = DOMAIN


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    row: int
    column: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def place(self) -> str:
        return f"{ROWS[self.row]} {COLUMNS[self.column]}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: tuple[int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {"things": [asdict(t) for t in self.things], "background": list(self.background)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Scene":
        return cls(tuple(Thing(**t) for t in data["things"]), tuple(data["background"]))


@dataclass(frozen=True)
class Question:
    skill: str
    question: str
    answer: str
    informative: str  # a short reasoning that states the facts it uses, ending with the answer


def _weighted(
    rng: random.Random, weights: dict[str, float], exclude: set[str] = frozenset()
) -> str:
    names = [n for n in weights if n not in exclude]
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def sample_scene(rng: random.Random, palette: Palette, config: WorldConfig) -> Scene:
    """Objects in distinct cells, each (colour, shape) at most once, so names are unique."""
    count = rng.randint(config.min_objects, config.max_objects)
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], count)
    things: list[Thing] = []
    for row, column in cells:
        while True:
            thing = Thing(
                _weighted(rng, palette.shapes),
                _weighted(rng, palette.colours),
                rng.choice(SIZES),
                row,
                column,
            )
            if all(t.name != thing.name for t in things):
                break
        things.append(thing)
    return Scene(tuple(things), palette.background)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    w = r * 0.38  # cross: a plus of two bars
    return [
        (cx - w, cy - r),
        (cx + w, cy - r),
        (cx + w, cy - w),
        (cx + r, cy - w),
        (cx + r, cy + w),
        (cx + w, cy + w),
        (cx + w, cy + r),
        (cx - w, cy + r),
        (cx - w, cy + w),
        (cx - r, cy + w),
        (cx - r, cy - w),
        (cx - w, cy - w),
    ]


def render(scene: Scene, size: int, rng: random.Random) -> bytes:
    """PNG bytes; small jitter in place and tint, so no two renders of a scene need be equal."""
    image = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for thing in scene.things:
        r = cell * (0.24 if thing.size == "small" else 0.42)
        jitter = cell * 0.5 - r - 1
        cx = cell * (thing.column + 0.5) + rng.uniform(-jitter, jitter) * 0.5
        cy = cell * (thing.row + 0.5) + rng.uniform(-jitter, jitter) * 0.5
        fill = tuple(max(0, min(255, v + rng.randint(-12, 12))) for v in COLOURS[thing.colour])
        if thing.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif thing.shape == "square":
            s = r * 0.85
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        else:
            draw.polygon(_polygon(thing.shape, cx, cy, r), fill=fill)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _count_word(n: int) -> str:
    return NUMBERS[n]


def _plural(n: int) -> str:
    return "object" if n == 1 else "objects"


def caption(scene: Scene, rng: random.Random) -> str:
    """One of several caption styles; every style states each object's size, colour, shape and cell."""
    things = list(scene.things)
    rng.shuffle(things)
    n = len(things)
    style = rng.randrange(3)
    if style == 0:
        parts = [f"A {t.size} {t.name} is at the {t.place}." for t in things]
        return f"There {'is' if n == 1 else 'are'} {_count_word(n)} {_plural(n)}. " + " ".join(
            parts
        )
    if style == 1:
        parts = [f"a {t.name} ({t.size}, {t.place})" for t in things]
        return f"This image shows {_count_word(n)} {_plural(n)}: " + ", ".join(parts) + "."
    parts = [f"a {t.size} {t.name} at the {t.place}" for t in things]
    listed = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{_count_word(n).capitalize()} {_plural(n)}: {listed}."


def _unique(scene: Scene, **attributes: Any) -> Thing | None:
    found = [t for t in scene.things if all(getattr(t, k) == v for k, v in attributes.items())]
    return found[0] if len(found) == 1 else None


def _left_neighbour(scene: Scene, ref: Thing) -> Thing | None:
    """The object directly left of `ref`: same row, nearest smaller column, if any."""
    left = [t for t in scene.things if t.row == ref.row and t.column < ref.column]
    return max(left, key=lambda t: t.column) if left else None


def _so(answer: str) -> str:
    return f"So the answer is {answer}."


def questions(scene: Scene, rng: random.Random) -> list[Question]:
    """Every skill's question this scene can answer unambiguously (one per skill)."""
    out: list[Question] = []
    things = list(scene.things)
    rng.shuffle(things)
    by_shape = [t for t in things if _unique(scene, shape=t.shape)]
    by_colour = [t for t in things if _unique(scene, colour=t.colour)]
    if by_shape:
        t = by_shape[0]
        out.append(
            Question(
                "colour",
                f"What colour is the {t.shape}?",
                t.colour,
                f"The {t.shape} at the {t.place} is {t.colour}. {_so(t.colour)}",
            )
        )
    if by_colour:
        t = by_colour[0]
        out.append(
            Question(
                "shape",
                f"What shape is the {t.colour} object?",
                t.shape,
                f"The {t.colour} object at the {t.place} is a {t.shape}. {_so(t.shape)}",
            )
        )
    n = len(scene.things)
    listed = ", ".join(f"a {t.name}" for t in things)
    out.append(
        Question(
            "count",
            "How many objects are there?",
            _count_word(n),
            f"I can see {listed}. That makes {_count_word(n)} {_plural(n)}. {_so(_count_word(n))}",
        )
    )
    t = rng.choice(things)
    out.append(
        Question(
            "row",
            f"Which row is the {t.name} in?",
            ROWS[t.row],
            f"The {t.name} is at the {t.place}. {_so(ROWS[t.row])}",
        )
    )
    t = rng.choice(things)
    out.append(
        Question(
            "column",
            f"Which column is the {t.name} in?",
            COLUMNS[t.column],
            f"The {t.name} is at the {t.place}. {_so(COLUMNS[t.column])}",
        )
    )
    t = rng.choice(things)
    out.append(
        Question(
            "size",
            f"Is the {t.name} small or large?",
            t.size,
            f"The {t.name} at the {t.place} is {t.size}. {_so(t.size)}",
        )
    )
    if rng.random() < 0.5:
        t = rng.choice(things)
        out.append(
            Question(
                "existence",
                f"Is there a {t.name}?",
                "yes",
                f"There is a {t.name} at the {t.place}. {_so('yes')}",
            )
        )
    else:
        names = {t.name for t in scene.things}
        absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in names]
        name = rng.choice(absent)
        out.append(
            Question(
                "existence",
                f"Is there a {name}?",
                "no",
                f"The image shows {listed}. None of them is a {name}. {_so('no')}",
            )
        )
    for ref in things:
        neighbour = _left_neighbour(scene, ref)
        if neighbour is not None and _unique(scene, shape=ref.shape):
            out.append(
                Question(
                    "relation",
                    f"What colour is the object left of the {ref.shape}?",
                    neighbour.colour,
                    f"The {ref.shape} is at the {ref.place}. The object left of it is the {neighbour.name} at the "
                    f"{neighbour.place}. {_so(neighbour.colour)}",
                )
            )
            break
    return out


_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("colour", re.compile(r"^what colou?r is the (\w+)\?$")),
    ("shape", re.compile(r"^what shape is the (\w+) object\?$")),
    ("count", re.compile(r"^how many objects are there\?$")),
    ("row", re.compile(r"^which row is the (\w+) (\w+) in\?$")),
    ("column", re.compile(r"^which column is the (\w+) (\w+) in\?$")),
    ("size", re.compile(r"^is the (\w+) (\w+) small or large\?$")),
    ("existence", re.compile(r"^is there an? (\w+) (\w+)\?$")),
    ("relation", re.compile(r"^what colou?r is the object left of the (\w+)\?$")),
]


def parse_question(text: str) -> tuple[str, tuple[str, ...]] | None:
    """(skill, arguments) of a question in the world's grammar, else None."""
    normal = " ".join(text.lower().split())
    for skill, pattern in _PATTERNS:
        match = pattern.match(normal)
        if match:
            return skill, match.groups()
    return None


def answer_question(scene: Scene, text: str) -> str | None:
    """The true one-word answer to a question of the grammar about `scene`; None when the
    question is outside the grammar or has no single answer in this scene."""
    parsed = parse_question(text)
    if parsed is None:
        return None
    skill, args = parsed
    if skill == "colour":
        t = _unique(scene, shape=args[0])
        return t.colour if t else None
    if skill == "shape":
        t = _unique(scene, colour=args[0])
        return t.shape if t else None
    if skill == "count":
        return _count_word(len(scene.things))
    if skill == "existence":
        return "yes" if _unique(scene, colour=args[0], shape=args[1]) else "no"
    if skill == "relation":
        ref = _unique(scene, shape=args[0])
        neighbour = _left_neighbour(scene, ref) if ref else None
        return neighbour.colour if neighbour else None
    t = _unique(scene, colour=args[0], shape=args[1])
    if t is None:
        return None
    return {"row": ROWS[t.row], "column": COLUMNS[t.column], "size": t.size}[skill]


def vocabulary() -> list[str]:
    """Every word the world's text uses, for building a tokenizer that keeps them whole."""
    words = set(ATTRIBUTE_WORDS) | {"yes", "no"}
    text = " ".join(q.question + " " + q.informative for q in _grammar_examples())
    words |= set(re.findall(r"[A-Za-z]+", text))
    return sorted(words)


def _grammar_examples() -> list[Question]:
    rng = random.Random(0)
    config = WorldConfig()
    out: list[Question] = []
    for _ in range(50):
        out += questions(sample_scene(rng, GENERAL, config), rng)
    return out
