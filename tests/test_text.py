"""Caption cleaning: control tokens never pass through raw."""

import pytest

from adamllm_core.errors import Rejected
from adamllm_core.text import CaptionPolicy, clean_caption, find_control_tokens

NEUTRALISE = CaptionPolicy()
QUARANTINE = CaptionPolicy(control_tokens="quarantine")


@pytest.mark.parametrize(
    "token",
    [
        "<|im_end|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<image>",
        "</s>",
        "<s>",
        "[INST]",
        "<|reserved_special_token_4|>",
        "<|image_pad|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<<SYS>>",
    ],
)
def test_control_tokens_are_found_and_removed(token: str) -> None:
    caption = f"Axial CT {token} of the liver"
    assert find_control_tokens(caption) == [token]
    cleaned = clean_caption(caption, NEUTRALISE)
    assert cleaned.text == "Axial CT of the liver"
    assert cleaned.removed_tokens == (token,)
    with pytest.raises(Rejected) as caught:
        clean_caption(caption, QUARANTINE)
    assert caught.value.reason == "control_tokens"


def test_ordinary_angle_brackets_are_text() -> None:
    caption = "mass < 2 cm and density > water; <b>bold</b> stays"
    assert clean_caption(caption, NEUTRALISE).text == caption


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing_caption"),
        (42, "bad_caption"),
        ("", "empty_caption"),
        ("  \n\t", "empty_caption"),
        ("<image></s>", "empty_caption"),
        ("\x00\x01", "empty_caption"),
        ("x" * 17_000, "caption_too_long"),
    ],
)
def test_unusable_captions_are_rejected(value: object, reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        clean_caption(value, NEUTRALISE)
    assert caught.value.reason == reason


def test_control_characters_and_unicode_forms_are_normalised() -> None:
    assert clean_caption("  cafe\u0301\x00 scan\x07 \n", NEUTRALISE).text == "caf\u00e9 scan"
