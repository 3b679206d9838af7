"""The twelve benchmarks of the paper's Tables 13-14: one declarative entry each.

Prompt templates are Table 14's text, byte for byte (including its "an one-sentence ...
in details"). Generation limits follow the official evaluation: 256 new tokens for Food101,
FoodSeg103, Nutrition5K and the scene classifications, 1024 for the others (PMC-VQA included).
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict

from adamllm_core.evaluation.items import EvalItem

Metric = Literal[
    "vqa",
    "choice",
    "classification",
    "multilabel_f1",
    "multilabel_recall",
    "rouge_l",
    "floodnet",
    "short_answer",
]


class BenchmarkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    domain: str
    task: str  # Table 13's description
    template: str  # Table 14's instruction
    metric: Metric
    max_new_tokens: int
    paper_test_size: int
    paper: bool = True  # one of the paper's twelve (Tables 13-14)


CLASSIFY_SCENE = (
    "What is the category of this remote sensing image? Answer the question using a single word or "
    "phrase. Reference categories include: {options}"
)
_SPECS = [
    BenchmarkSpec(
        name="slake",
        title="SLAKE",
        domain="biomed",
        task="VQA (open) / binary (closed)",
        template="{question}",
        metric="vqa",
        max_new_tokens=1024,
        paper_test_size=645 + 416,
    ),
    BenchmarkSpec(
        name="pathvqa",
        title="PathVQA",
        domain="biomed",
        task="VQA (open) / binary (closed)",
        template="{question}",
        metric="vqa",
        max_new_tokens=1024,
        paper_test_size=3357 + 3362,
    ),
    BenchmarkSpec(
        name="vqa_rad",
        title="VQA-RAD",
        domain="biomed",
        task="VQA (open) / binary (closed)",
        template="{question}",
        metric="vqa",
        max_new_tokens=1024,
        paper_test_size=179 + 272,
    ),
    BenchmarkSpec(
        name="pmc_vqa",
        title="PMC-VQA",
        domain="biomed",
        task="Multi-choice QA",
        template="Question: {question} The choices are: {options}",
        metric="choice",
        max_new_tokens=1024,
        paper_test_size=2000,
    ),
    BenchmarkSpec(
        name="recipe1m",
        title="Recipe1M",
        domain="food",
        task="Recipe generation",
        template="{question}",
        metric="rouge_l",
        max_new_tokens=1024,
        paper_test_size=1000,
    ),
    BenchmarkSpec(
        name="nutrition5k",
        title="Nutrition5K",
        domain="food",
        task="Ingredient prediction",
        template="What ingredients are used to make the dish in the image?",
        metric="multilabel_recall",
        max_new_tokens=256,
        paper_test_size=507,
    ),
    BenchmarkSpec(
        name="food101",
        title="Food101",
        domain="food",
        task="Category classification",
        template="What type of food is shown in this image? Choose one type from the following options: {options}",
        metric="classification",
        max_new_tokens=256,
        paper_test_size=25250,
    ),
    BenchmarkSpec(
        name="foodseg103",
        title="FoodSeg103",
        domain="food",
        task="Multi-label classification",
        template="Identify the food categories present in the image. The available categories are: {options} "
        "Please return a list of the selected food categories, formatted as a list of names like "
        "[candy, egg tart, french fries, chocolate].",
        metric="multilabel_f1",
        max_new_tokens=256,
        paper_test_size=2135,
    ),
    BenchmarkSpec(
        name="clrs",
        title="CLRS",
        domain="remote-sensing",
        task="Scene classification",
        template=CLASSIFY_SCENE,
        metric="classification",
        max_new_tokens=256,
        paper_test_size=15000,
    ),
    BenchmarkSpec(
        name="ucmerced",
        title="UC Merced",
        domain="remote-sensing",
        task="Land-use classification",
        template=CLASSIFY_SCENE,
        metric="classification",
        max_new_tokens=256,
        paper_test_size=21000,
    ),
    BenchmarkSpec(
        name="floodnet",
        title="FloodNet",
        domain="remote-sensing",
        task="VQA",
        template="{question}",
        metric="floodnet",
        max_new_tokens=1024,
        paper_test_size=11000,
    ),
    BenchmarkSpec(
        name="nwpu_captions",
        title="NWPU-Captions",
        domain="remote-sensing",
        task="Image captioning",
        template="Please provide an one-sentence caption for the provided remote sensing image in details.",
        metric="rouge_l",
        max_new_tokens=1024,
        paper_test_size=31500,
    ),
    # Not the paper's: the proving ground's generated domain (adamllm_core/proving), one-word
    # answers by skill; a chain-of-thought answer counts by the last option it names.
    BenchmarkSpec(
        name="proving_ground",
        title="Proving ground",
        domain="proving",
        task="Short-answer VQA by skill",
        template="{question}",
        metric="short_answer",
        max_new_tokens=64,
        paper_test_size=0,
        paper=False,
    ),
]
BENCHMARKS: dict[str, BenchmarkSpec] = {}
for _spec in _SPECS:
    if _spec.name in BENCHMARKS:
        raise ValueError(f"benchmark {_spec.name!r} declared twice")
    BENCHMARKS[_spec.name] = _spec
DOMAINS = sorted({s.domain for s in _SPECS})


def benchmark(name: str) -> BenchmarkSpec:
    key = name.strip().lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def option_letters(count: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(count)]


def item_prompt(spec: BenchmarkSpec, item: EvalItem) -> str:
    """The instruction the model sees: a release's pre-templated one as is, else Table 14's."""
    return item.prompt or render_prompt(spec, item.question, item.choices)


def render_prompt(spec: BenchmarkSpec, question: str, choices: list[str] | None) -> str:
    """Table 14's instruction for one item."""
    if "{options}" not in spec.template:
        return spec.template.replace("{question}", question)
    if not choices:
        raise ValueError(f"{spec.title}: the prompt lists options but the item has none")
    if spec.metric == "choice":  # PMC-VQA, MedVInT's option format
        options = " ".join(
            f"{letter}:{text}" for letter, text in zip(option_letters(len(choices)), choices)
        )
    else:
        options = ", ".join(choices)
    return spec.template.replace("{question}", question).replace("{options}", options)
