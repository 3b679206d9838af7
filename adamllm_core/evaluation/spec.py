"""What a benchmark is to the evaluation: its Table 13-14 entry (`BenchmarkSpec`) and how an
item becomes the instruction the model sees. Each benchmark's own entry lives on its
release class (`adapters.py`, one registered class per benchmark)."""

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
    # How a classification answer is read: "indexed" takes option numbers, then names, the
    # last mention winning (Food101's official parser); "names" matches class names only.
    class_parser: Literal["names", "indexed"] = "names"


CLASSIFY_SCENE = (
    "What is the category of this remote sensing image? Answer the question using a single word or "
    "phrase. Reference categories include: {options}"
)


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
