"""Tiny local models for tests and the demo, built without any download.

`build_tiny_models(out)` writes two Hugging Face checkpoints that every engine loads by
path, through the same code as a real model id:

- `out/vlm`: a LLaVA-architecture vision-language model (CLIP vision tower, Llama text
  model, about 0.1M parameters) with an `AutoProcessor`;
- `out/lm`: a Llama-architecture text model for the consistency filter.

Both share a byte-level BPE tokenizer trained here with `tokenizers` on the method's own
prompt text, and a ChatML chat template. Weights are random (seeded): the models run
every code path; what they write is noise until they are tuned.
"""

import json
from pathlib import Path

from adamllm_core.prompts import (
    CONSISTENCY_FEW_SHOT,
    SYNTH_CAPTION_PROMPT,
    SYNTH_INFORMATIVE_HINT,
    SYNTH_PRECISE_HINT,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_SIZE = 16
PATCH_SIZE = 8


def _tokenizer_corpus(extra_text: list[str]) -> list[str]:
    corpus = [
        SYNTH_CAPTION_PROMPT,
        SYNTH_PRECISE_HINT,
        SYNTH_INFORMATIVE_HINT,
        CONSISTENCY_FEW_SHOT,
    ]
    corpus += [" Yes", " No", " Open"] * 50  # label words must be single tokens
    return corpus + extra_text


def build_tokenizer(
    extra_text: list[str] | None = None,
    vocab_size: int = 1024,
    *,
    special_tokens: list[str] = SPECIAL_TOKENS,
    pad_token: str = "<pad>",
    chat_template: str = CHAT_TEMPLATE,
    named_tokens: dict[str, str] | None = None,
):
    """A byte-level BPE tokenizer trained on the method's prompts (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(extra_text or []), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token=pad_token,
        chat_template=chat_template,
        extra_special_tokens=named_tokens or {"image_token": "<image>"},
        padding_side="left",
    )


def _text_config(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_vlm(
    out: Path,
    tokenizer,
    seed: int = 0,
    *,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    vision_hidden: int = 16,
    vision_layers: int = 1,
    text_hidden: int = 64,
    text_layers: int = 2,
    heads: int = 2,
    image_mean: tuple[float, float, float] | None = None,
    image_std: tuple[float, float, float] | None = None,
    feature_strategy: str = "full",
) -> Path:
    """A LLaVA-architecture model with random weights (sizes default to the tiny demo model)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer, text_hidden, text_layers, heads),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy=feature_strategy,
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    normalisation = (
        {"image_mean": list(image_mean), "image_std": list(image_std)}
        if image_mean and image_std
        else {}
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            **normalisation,
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=feature_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_lm(
    out: Path, tokenizer, seed: int = 0, *, hidden: int = 64, layers: int = 2, heads: int = 2
) -> Path:
    """A Llama-architecture text model with random weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_text_config(tokenizer, hidden, layers, heads))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_models(
    out: str | Path, seed: int = 0, extra_text: list[str] | None = None
) -> dict[str, Path]:
    """Write `out/vlm` and `out/lm`; returns their paths."""
    out = Path(out)
    tokenizer = build_tokenizer(extra_text)
    paths = {
        "vlm": build_tiny_vlm(out / "vlm", tokenizer, seed),
        "lm": build_tiny_lm(out / "lm", tokenizer, seed),
    }
    (out / "README.md").write_text(
        "Tiny random models built by `adamllm models tiny` for tests and the demo (no download).\n"
        "vlm/: LLaVA architecture; lm/: Llama architecture; shared BPE tokenizer and ChatML template.\n"
    )
    (out / "tiny.json").write_text(
        json.dumps({"seed": seed, "models": {k: v.name for k, v in paths.items()}})
    )
    return paths


# Qwen2-VL's own chat template (system turn first, the image as vision_start/image_pad/
# vision_end), less the video and tool branches a tiny check does not use.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def build_tiny_qwen2_vl(out: str | Path, seed: int = 0, *, max_pixels: int = 28 * 28 * 16) -> Path:
    """A Qwen2-VL-architecture model with random weights (about 0.2M parameters).

    Its processor needs torchvision (the video processor), so it builds where torchvision
    loads (a GPU machine), not with the CPU torch wheel. `max_pixels` caps image tokens.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    out = Path(out)
    tokenizer = build_tokenizer(
        special_tokens=QWEN2_VL_TOKENS,
        pad_token="<|endoftext|>",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        named_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_TOKENS}
    text = {
        **_text_config(tokenizer).to_dict(),
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        # head_dim 32: the three M-RoPE sections (time, height, width) sum to 16.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 6, 6],
        },
    }
    config = Qwen2VLConfig(
        text_config=text,
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": text["hidden_size"],
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=max_pixels),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
