"""Proving ground: does a model still read its context? A world caption, then a question
about it; accuracy per world and skill, as plain text, as a ChatML user turn (`chat`), with
the caption as the reply to "Describe the image." (`reply`, where the synthesizer reads it)
and in that reply form under Table 1's precise hint (`precise`: the one-word answer the
synthesizer's precise turn writes). Run it on each stage's model (LLM, MLLM after
perception, after pretraining, the tuned synthesizer) to see where reading is lost.

    .venv/bin/python benchmarks/prove_reading.py MODEL_DIR [MODEL_DIR ...] [--texts 100]

Two scores per form: `generated`, the greedy answer (up to 48 new tokens, cut at the end of
its turn) scored as the benchmark scores it (`final_answer`: the last of the skill's options
it names in the answer's conclusion, else in its first sentence), so answers given at
length count; and `chosen`, the skill's option the model gives the highest log-probability
as the whole answer (`"green."`), which measures the reading without the answer's form.
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

from adamllm_core.prompts import SYNTH_CAPTION_PROMPT, SYNTH_PRECISE_HINT
from adamllm_core.proving.experiment import final_answer
from adamllm_core.proving.world import (
    SKILL_ANSWERS,
    WorldConfig,
    caption,
    questions,
    sample_scene,
)
from adamllm_core.synthesis import special_token_pattern

FORMS = ("plain", "chat", "reply", "precise")


def load(path: str):
    kind = AutoConfig.from_pretrained(path).model_type
    loader = AutoModelForImageTextToText if kind == "llava" else AutoModelForCausalLM
    return AutoTokenizer.from_pretrained(path), loader.from_pretrained(path).eval()


def prompt(tokenizer, form: str, described: str, question: str) -> str:
    if form == "plain":
        return f"{described} {question}"
    if form == "chat":
        turns = [{"role": "user", "content": f"{described} {question}"}]
    else:  # the caption as the reply to a request, as synthesis shows it
        asked = f"{SYNTH_PRECISE_HINT}\n{question}" if form == "precise" else question
        turns = [
            {"role": "user", "content": SYNTH_CAPTION_PROMPT},
            {"role": "assistant", "content": described},
            {"role": "user", "content": asked},
        ]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def log_prob(model, prefix: list[int], continuation: list[int]) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prefix + continuation])).logits[0]
    scores = logits.log_softmax(-1)
    return sum(scores[len(prefix) - 1 + i, t].item() for i, t in enumerate(continuation))


def reading(path: str, texts: int) -> None:
    tokenizer, model = load(path)
    specials = special_token_pattern(
        list(tokenizer.all_special_tokens) + list(tokenizer.get_added_vocab())
    )
    world = WorldConfig()
    for form in FORMS:
        for name in ("general", "domain"):
            generated: Counter[str] = Counter()
            chosen: Counter[str] = Counter()
            asked: Counter[str] = Counter()
            for index in range(texts):
                rng = random.Random(50_000 + index)  # held out: the world's seeds draw elsewhere
                scene = sample_scene(rng, getattr(world, name), world)
                question = rng.choice(questions(scene, rng))
                text = prompt(tokenizer, form, caption(scene, rng), question.question)
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    output = model.generate(
                        input_ids=torch.tensor([ids]), max_new_tokens=48, do_sample=False
                    )
                answer = tokenizer.decode(output[0, len(ids) :], skip_special_tokens=False)
                # Its own turn only (a model goes on to write the next turns), and one answer:
                # its conclusion if it reasons, else its first sentence.
                answer = specials.split(answer)[0].lower()
                answer = (answer.partition("so the answer is")[2] or answer).split(".")[0]
                options = SKILL_ANSWERS[question.skill]
                scores = [
                    log_prob(model, ids, tokenizer(f"{o}.", add_special_tokens=False)["input_ids"])
                    for o in options
                ]
                best = options[max(range(len(options)), key=scores.__getitem__)]
                asked[question.skill] += 1
                generated[question.skill] += final_answer(answer, question.skill) == question.answer
                chosen[question.skill] += best == question.answer
            for label, hits in (("generated", generated), ("chosen", chosen)):
                per_skill = {k: f"{hits[k]}/{asked[k]}" for k in sorted(asked)}
                accuracy = 100 * sum(hits.values()) / texts
                print(f"{path}\t{form}\t{name}\t{label}\t{accuracy:.1f}%\t{per_skill}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--texts", type=int, default=100)
    args = parser.parse_args()
    for path in args.models:
        reading(path, args.texts)


if __name__ == "__main__":
    main()
