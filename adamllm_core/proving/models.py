"""The proving ground's models, built here from random weights (no download).

- a tokenizer trained with `tokenizers` on the method's prompts and the world's text, so
  every world word is one token;
- `vlm-init/`: a LLaVA-architecture model (CLIP vision tower, Llama text model) sized to
  learn 96x96 scenes on CPU; pretrained on the general world it becomes the *base* MLLM;
- `lm-init/`: a Llama text model; tuned on general-world triplets it becomes the judge.

Pretraining and judge tuning go through the platform's own trainer (`train_to`), and their
outputs are cached by the hash of what makes them, so each is built once per machine.
"""

import os
import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.hashing import canonical_json, sha256_hex
from adamllm_core.models.tiny import build_tiny_lm, build_tiny_vlm, build_tokenizer
from adamllm_core.proving.world import (
    BRIEF_INSTRUCTIONS,
    COPY_DRILL_PROMPTS,
    DOMAIN,
    GENERAL,
    LONG_INSTRUCTIONS,
    WorldConfig,
    caption,
    questions,
    sample_scene,
    vocabulary,
)


class ModelSizes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vision_hidden: int = 48
    vision_layers: int = 2
    text_hidden: int = 96
    text_layers: int = 2
    heads: int = 4
    # The synthesizer's LLM: with 96x2 it answered questions about a caption it had just read
    # 60% right (domain scenes, greedy); with 128x4, 72%, most misses being answers given at
    # length (measured on 300 questions each, 2,000 steps).
    llm_hidden: int = 128
    llm_layers: int = 4
    vocab_size: int = Field(default=700, description="BPE vocabulary: every world word stays whole")


def proving_cache() -> Path:
    return Path(os.environ.get("ADAMLLM_PROVING_CACHE", "~/.cache/adamllm/proving")).expanduser()


def _tokenizer_text(world: WorldConfig) -> list[str]:
    """World text from both palettes: the tokenizer must know every word, not the scenes.
    Every word also stands alone, as at the start of a reply ("bottom.", "The ..."): the
    byte-level BPE keeps " bottom" and "bottom" apart, and from running text alone it learned
    only the first, so a reply's first word was spelled in pieces ('b','ot','t','om')."""
    rng = random.Random(0)
    words = vocabulary()
    capitals = [w.capitalize() for w in words]
    text = [
        " ".join(words),
        " ".join(capitals),
        *words,
        *capitals,
        *COPY_DRILL_PROMPTS,
        *BRIEF_INSTRUCTIONS,
        *LONG_INSTRUCTIONS,
    ] * 20
    for palette in (GENERAL, DOMAIN, world.general, world.domain):
        for _ in range(200):
            scene = sample_scene(rng, palette, world)
            text.append(caption(scene, rng))
            for q in questions(scene, rng):
                text += [q.question, f"{q.answer}.", q.informative]
    return text


# The random-weight models `build_initial_models` writes, by directory name.
INITIAL_MODELS = ("vlm-init", "lm-init", "vlm-llm-init", "llm-init")


def build_initial_models(
    out: Path, sizes: ModelSizes, world: WorldConfig, seed: int = 0
) -> dict[str, Path]:
    """Random-weight models sharing one tokenizer: `vlm-init/` (the base) and `lm-init/` (the
    judge) at the text sizes, `llm-init/` and `vlm-llm-init/` (the synthesizer's LLM and the
    MLLM it is put into) at the LLM sizes; returns their paths."""
    tokenizer = build_tokenizer(_tokenizer_text(world), vocab_size=sizes.vocab_size)

    # White maps to zero: empty background patches embed to nothing but their position, so the
    # few object pixels carry the image tokens (with CLIP's mean/std, image tokens barely differed
    # between images). Measured on colour questions alone, 300 steps: 53% against 44% with
    # CLIP's normalisation and 37% without the CLS token (chance 25%).
    def vlm(name: str, hidden: int, layers: int) -> Path:
        return build_tiny_vlm(
            out / name,
            tokenizer,
            seed,
            image_size=world.image_size,
            # One patch per grid cell: every object is one image token and a 96 px image is
            # 10 tokens, not 65 (64 px, 8 px patches), so every stage runs faster. It did not
            # by itself make the base read colour or shape (chance at either size, count
            # 100%): the rate and the single-object phase did (experiment.py; seed 1).
            patch_size=world.image_size // 3,
            vision_hidden=sizes.vision_hidden,
            vision_layers=sizes.vision_layers,
            text_hidden=hidden,
            text_layers=layers,
            heads=sizes.heads,
            image_mean=(1.0, 1.0, 1.0),
            image_std=(0.5, 0.5, 0.5),
            feature_strategy="full",
        )

    def lm(name: str, hidden: int, layers: int) -> Path:
        return build_tiny_lm(
            out / name, tokenizer, seed, hidden=hidden, layers=layers, heads=sizes.heads
        )

    return {
        "vlm": vlm("vlm-init", sizes.text_hidden, sizes.text_layers),
        "lm": lm("lm-init", sizes.text_hidden, sizes.text_layers),
        "vlm_llm": vlm("vlm-llm-init", sizes.llm_hidden, sizes.llm_layers),
        "llm": lm("llm-init", sizes.llm_hidden, sizes.llm_layers),
    }


def with_language_model(vlm: str | Path, llm: str | Path, out: Path) -> Path:
    """`vlm` with its language model replaced by the pretrained `llm` (LLaVA's recipe: a
    vision tower and projector put in front of a pretrained LLM); written atomically."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(vlm)
    language = AutoModelForCausalLM.from_pretrained(llm)
    model.model.language_model.load_state_dict(language.model.state_dict())
    model.lm_head.load_state_dict(language.lm_head.state_dict())
    staging = Path(tempfile.mkdtemp(prefix=".vlm-", dir=out.parent))
    model.save_pretrained(staging)
    AutoProcessor.from_pretrained(vlm).save_pretrained(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def cache_key(*parts: object) -> str:
    return sha256_hex(
        canonical_json(
            [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
        )
    )[:16]
