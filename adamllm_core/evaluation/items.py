"""One benchmark question, whatever file format it came from."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BenchmarkFormatError(ValueError):
    """A benchmark file that cannot be read: names the file, the line (or row) and the field."""

    def __init__(
        self, file: str, line: int | None, field: str | None, message: str, unit: str = "line"
    ):
        where = (
            file
            + (f", {unit} {line}" if line is not None else "")
            + (f", field {field!r}" if field else "")
        )
        super().__init__(f"{where}: {message}")
        self.file, self.line, self.field = file, line, field


class EvalItem(BaseModel):
    """A question with its gold answer. `answer` is a string, or a list of names for
    multi-label tasks (FoodSeg103 categories, Nutrition5K ingredients)."""

    model_config = ConfigDict(extra="forbid")

    qid: str
    image: bytes = Field(repr=False)
    question: str = ""  # the question as released; the benchmark's template makes the prompt
    prompt: str | None = (
        None  # an instruction released already templated (AdaptLLM's `input`): sent as is
    )
    answer: str | list[str]
    answer_type: str | None = None  # OPEN / CLOSED for the VQA benchmarks
    choices: list[str] | None = None  # option texts in order (PMC-VQA A-D, class names)
    source: str = ""  # file and line (or row) it was read from
    metadata: dict[str, Any] = Field(default_factory=dict)
