"""Proving ground: does a model still read its context? A world caption, then a question
about it (`adamllm_core.proving.reading`): accuracy per world and skill in each of the four
forms (plain text, a ChatML user turn, the caption as the reply to a request for one, and
that under the precise hint). Run it on each stage's model (LLM, MLLM after perception,
after pretraining, the tuned synthesizer) to see where reading is lost.

    .venv/bin/python benchmarks/prove_reading.py MODEL_DIR [MODEL_DIR ...] [--scenes 30]

Two scores per form: `chosen`, the skill's option the model gives the highest
log-probability as the whole answer (`"green."`, the engine's choice scoring: the reading
without the answer's form; the LLM's reading gate is this score in the precise form on
general scenes), and `generated`, the greedy answer (up to 48 new tokens) scored as the
benchmark scores it (`final_answer`), so answers given at length count.
"""

import argparse
from collections import Counter

from adamllm_core.engines import EngineConfig, make_engine
from adamllm_core.engines.base import ChatRequest, SamplingConfig
from adamllm_core.proving.experiment import final_answer
from adamllm_core.proving.reading import FORMS, reading_accuracy, reading_prompts
from adamllm_core.proving.world import WorldConfig


def generated_accuracy(engine, world: WorldConfig, scenes: int, part: str, form: str) -> dict:
    asked = reading_prompts(engine, world, scenes, part, form)
    sampling = SamplingConfig(max_new_tokens=48, stop=("<|im_end|>",))
    results = engine.run([ChatRequest(prompt=prompt, sampling=sampling) for prompt, _ in asked])
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for (_, question), result in zip(asked, results, strict=True):
        # One answer: its conclusion if it reasons, else its first sentence.
        answer = result.text.lower()
        answer = (answer.partition("so the answer is")[2] or answer).split(".")[0]
        totals[question.skill] += 1
        hits[question.skill] += final_answer(answer, question.skill) == question.answer
    return {
        "accuracy": round(100 * sum(hits.values()) / max(1, sum(totals.values())), 2),
        "per_skill": {s: f"{hits[s]}/{totals[s]}" for s in sorted(totals)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--scenes", type=int, default=30)
    args = parser.parse_args()
    world = WorldConfig()
    for path in args.models:
        engine = make_engine(EngineConfig(model=path, batch_size=32))
        for form in FORMS:
            for part in ("general", "domain"):
                chosen = reading_accuracy(engine, world, args.scenes, part, form)
                generated = generated_accuracy(engine, world, args.scenes, part, form)
                for label, score in (("chosen", chosen), ("generated", generated)):
                    print(
                        f"{path}\t{form}\t{part}\t{label}\t{score['accuracy']:.1f}%\t"
                        f"{score['per_skill']}",
                        flush=True,
                    )
        engine.close()


if __name__ == "__main__":
    main()
