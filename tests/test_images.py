"""Image checks and normalisation, one generated file per case."""

import io

import pytest
from corpus import IMAGE_CASES, encode, gradient
from PIL import Image

from adamllm_core.errors import Rejected
from adamllm_core.images import ImagePolicy, normalise_image


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_every_case_gets_its_outcome(name: str) -> None:
    data, reason, mode = IMAGE_CASES[name]
    if reason is not None:
        with pytest.raises(Rejected) as caught:
            normalise_image(data, ImagePolicy())
        assert caught.value.reason == reason
        assert caught.value.detail
        return
    result = normalise_image(data, ImagePolicy())
    stored = Image.open(io.BytesIO(result.data))
    assert stored.mode == mode
    assert stored.format.lower() == result.format
    assert result.format in ("jpeg", "png", "webp")
    assert (stored.width, stored.height) == (result.width, result.height)
    assert getattr(stored, "n_frames", 1) == 1


def test_kept_files_are_stored_byte_for_byte() -> None:
    data = IMAGE_CASES["ok_rgb.jpg"][0]
    result = normalise_image(data, ImagePolicy())
    assert result.data == data and result.changes == []


def test_exif_rotation_is_applied() -> None:
    result = normalise_image(IMAGE_CASES["rotated.jpg"][0], ImagePolicy())
    assert (result.width, result.height) == (32, 64)  # 64x32 stored, displayed rotated
    assert "exif_orientation_6" in result.changes


def test_sixteen_bit_range_is_stretched_not_truncated() -> None:
    result = normalise_image(IMAGE_CASES["sixteen_bit.png"][0], ImagePolicy())
    pixels = Image.open(io.BytesIO(result.data)).getextrema()
    assert pixels == (0, 255)  # a 12-bit scan cut to its high byte would top out near 15


def test_alpha_is_composited_on_white() -> None:
    half = Image.new("RGBA", (16, 16), (255, 0, 0, 255))
    half.paste((0, 0, 255, 0), (0, 0, 8, 16))  # left half fully transparent blue
    result = normalise_image(encode(half, "PNG"), ImagePolicy())
    stored = Image.open(io.BytesIO(result.data))
    assert stored.mode == "RGB"
    assert stored.getpixel((0, 0)) == (255, 255, 255) and stored.getpixel((12, 0)) == (255, 0, 0)


def test_gray_pixels_in_rgb_are_stored_as_gray() -> None:
    result = normalise_image(encode(gradient("L").convert("RGBA"), "PNG"), ImagePolicy())
    assert Image.open(io.BytesIO(result.data)).mode == "L" and result.changes == ["mode_RGBA_to_L"]


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(Rejected) as caught:
        normalise_image(encode(gradient(), "PNG"), ImagePolicy(max_pixels=1000))
    assert caught.value.reason == "too_many_pixels"
    assert "3072" in caught.value.detail


def test_multi_frame_can_be_rejected() -> None:
    with pytest.raises(Rejected) as caught:
        normalise_image(IMAGE_CASES["animated.gif"][0], ImagePolicy(multi_frame="reject"))
    assert caught.value.reason == "multi_frame"


def test_policy_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="multi_frame"):
        ImagePolicy(multi_frame="all")


def test_a_webp_stays_lossy_only_when_its_own_coding_is():
    """A WebP that must be re-encoded (alpha) becomes JPEG when its bitstream is lossy (VP8)
    and PNG when it is lossless (VP8L): the WebP format alone says neither."""
    rgba = Image.new("RGBA", (40, 30), (200, 30, 30, 128))
    for lossless, target in ((False, "jpeg"), (True, "png")):
        out = io.BytesIO()
        rgba.save(out, format="WEBP", lossless=lossless, quality=60)
        normalised = normalise_image(out.getvalue(), ImagePolicy())
        assert (normalised.format, normalised.source_format) == (target, "webp"), lossless
        assert Image.open(io.BytesIO(normalised.data)).mode == "RGB"
