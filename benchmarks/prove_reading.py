"""Proving ground: does a model still read its context? A world caption, then a question
about it, answered greedily; accuracy per world and skill, as plain text, as a ChatML
user turn (`chat`) and with the caption as the reply to "Describe the image." (`reply`, where
the synthesizer reads it). Run it on each stage's model (LLM, MLLM after perception, after pretraining, the
tuned synthesizer) to see where reading is lost.

    .venv/bin/python benchmarks/prove_reading.py MODEL_DIR [MODEL_DIR ...] [--texts 100]

An answer is scored as the benchmark scores it (`final_answer`: the last of the skill's
options it names in the answer's conclusion, else in its first sentence), so answers given
at length ("The cross is purple. So the answer is purple.") count; up to 48 new tokens.
"""

import argparse
import random
from collections import Counter

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
)

from adamllm_core.prompts import SYNTH_CAPTION_PROMPT
from adamllm_core.proving.experiment import final_answer
from adamllm_core.proving.world import WorldConfig, caption, questions, sample_scene


def load(path: str):
    kind = AutoConfig.from_pretrained(path).model_type
    loader = AutoModelForImageTextToText if kind == "llava" else AutoModelForCausalLM
    return AutoTokenizer.from_pretrained(path), loader.from_pretrained(path).eval()


def reading(path: str, texts: int) -> None:
    tokenizer, model = load(path)
    world = WorldConfig()
    for form in ("plain", "chat", "reply"):
        for name in ("general", "domain"):
            hits: Counter[str] = Counter()
            asked: Counter[str] = Counter()
            for index in range(texts):
                rng = random.Random(50_000 + index)  # held out: the world's seeds draw elsewhere
                scene = sample_scene(rng, getattr(world, name), world)
                question = rng.choice(questions(scene, rng))
                described = caption(scene, rng)
                text = f"{described} {question.question}"
                if form == "chat":
                    turns = [{"role": "user", "content": text}]
                elif form == "reply":  # the caption as the reply to a request (synthesis)
                    turns = [
                        {"role": "user", "content": SYNTH_CAPTION_PROMPT},
                        {"role": "assistant", "content": described},
                        {"role": "user", "content": question.question},
                    ]
                if form != "plain":
                    text = tokenizer.apply_chat_template(
                        turns, tokenize=False, add_generation_prompt=True
                    )
                inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
                with torch.no_grad():
                    output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
                answer = tokenizer.decode(
                    output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )
                # One answer: its conclusion if it reasons, else its first sentence (a
                # plain-text model goes on to ask the next question).
                answer = answer.lower().partition("so the answer is")[2] or answer.lower()
                answer = answer.split(".")[0]
                asked[question.skill] += 1
                hits[question.skill] += final_answer(answer, question.skill) == question.answer
            per_skill = {k: f"{hits[k]}/{asked[k]}" for k in sorted(asked)}
            accuracy = 100 * sum(hits.values()) / texts
            print(f"{path}\t{form}\t{name}\t{accuracy:.1f}%\t{per_skill}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--texts", type=int, default=100)
    args = parser.parse_args()
    for path in args.models:
        reading(path, args.texts)


if __name__ == "__main__":
    main()
