"""load_image on the files users really have, all built in code: every mode's documented rule,
EXIF orientation, and a clear ImageLoadError naming the file for everything unreadable."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from robustness import ImageLoadError, load_image


def pattern(height: int = 24, width: int = 40) -> np.ndarray:
    """A deterministic, asymmetric RGB uint8 image (so flips and rotations are visible)."""
    rng = np.random.default_rng(height * 1000 + width)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def composite_on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The documented rule: rint((c * a + 255 * (255 - a)) / 255)."""
    c, a = colour.astype(np.float64), alpha.astype(np.float64)[..., None]
    return np.rint((c * a + 255 * (255 - a)) / 255).astype(np.uint8)


def check_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.dtype == np.uint8 and array.shape == (height, width, 3)


def test_rgb_png_round_trips_exactly(tmp_path):
    expected = pattern()
    Image.fromarray(expected).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), expected)


def test_greyscale_l_is_replicated_to_three_channels(tmp_path):
    grey = pattern()[:, :, 0]
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    out = load_image(tmp_path / "grey.png")
    check_rgb(out, *grey.shape)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_bilevel_1_becomes_black_and_white(tmp_path):
    bits = pattern()[:, :, 0] > 127
    Image.fromarray(bits).convert("1").save(tmp_path / "bits.png")
    out = load_image(tmp_path / "bits.png")
    np.testing.assert_array_equal(out[:, :, 1], np.where(bits, 255, 0))


def test_la_is_composited_on_white(tmp_path):
    grey, alpha = pattern()[:, :, 0], pattern()[:, :, 1]
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out, composite_on_white(np.dstack([grey] * 3), alpha))


def test_rgba_is_composited_on_white(tmp_path):
    colour, alpha = pattern(), pattern()[:, :, 2]
    alpha[0, 0], alpha[0, 1] = 0, 255  # fully transparent -> white, opaque -> unchanged
    Image.fromarray(np.dstack([colour, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(out, composite_on_white(colour, alpha))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == tuple(colour[0, 1])


def palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A 'P' image with a 16-colour palette: (image, index array, palette as (16, 3))."""
    palette = np.random.default_rng(7).integers(0, 256, (16, 3), dtype=np.uint8)
    index = (pattern()[:, :, 0] % 16).astype(np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.ravel().tolist())
    return image, index, palette


def test_palette_without_transparency_is_looked_up(tmp_path):
    image, index, palette = palette_image()
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), palette[index])


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_palette_with_a_transparent_index_turns_it_white(tmp_path, suffix):
    image, index, palette = palette_image()
    image.save(tmp_path / f"p.{suffix}", transparency=3)
    out = load_image(tmp_path / f"p.{suffix}")
    expected = palette[index].copy()
    expected[index == 3] = 255
    np.testing.assert_array_equal(out, expected)


def test_palette_with_per_entry_alpha_is_composited(tmp_path):
    image, index, palette = palette_image()
    alphas = np.linspace(0, 255, 16).astype(np.uint8)
    image.save(tmp_path / "pa.png", transparency=bytes(alphas))
    out = load_image(tmp_path / "pa.png")
    np.testing.assert_array_equal(out, composite_on_white(palette[index], alphas[index]))


def test_cmyk_uses_the_documented_naive_formula(tmp_path):
    cmyk = np.dstack([pattern(), pattern()[:, :, :1]])
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tiff")
    out = load_image(tmp_path / "cmyk.tiff")
    k = cmyk[:, :, 3:].astype(np.float64)
    expected = np.rint((255 - cmyk[:, :, :3].astype(np.float64)) * (255 - k) / 255)
    assert np.max(np.abs(out.astype(int) - expected)) <= 1  # Pillow's integer arithmetic


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    out = load_image(tmp_path / "cmyk.jpg")
    check_rgb(out, 10, 20)
    assert np.all(np.abs(out.astype(int) - (255, 0, 0)) <= 3)  # pure cyan-free red, JPEG noise


@pytest.mark.parametrize("suffix, mode", [("png", "I;16"), ("tiff", "I;16"), ("tiff", "I;16B")])
def test_sixteen_bit_greyscale_uses_the_full_range(tmp_path, suffix, mode):
    values = np.array([[0, 257, 32896, 65535], [128, 65534, 1000, 40000]], dtype=np.uint16)
    # Built from raw bytes: Pillow's convert("I;16B") clips to 255, which would hide the point.
    raw = values.astype(">u2" if mode.endswith("B") else "<u2").tobytes()
    Image.frombytes(mode, values.shape[::-1], raw).save(tmp_path / f"grey16.{suffix}")
    with Image.open(tmp_path / f"grey16.{suffix}") as check:
        assert check.mode.startswith("I")  # really stored as 16-bit
    out = load_image(tmp_path / f"grey16.{suffix}")
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert out[0, 3, 0] == 255  # full-scale white is white, not a clipped 127
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], expected)


def test_float_images_are_rejected_with_the_file_name(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(path)
    with pytest.raises(ImageLoadError, match="float.tiff.*'F'"):
        load_image(path)


#: EXIF orientation -> how the stored pixels must be turned to appear upright (TIFF/EXIF spec).
ORIENTATION_TRANSFORMS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),  # transpose: the main-diagonal mirror
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse: the anti-diagonal mirror
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATION_TRANSFORMS))
def test_exif_orientation_is_applied_to_jpegs(tmp_path, orientation):
    """The same JPEG bytes' pixels, with and without an EXIF Orientation tag (0x0112)."""
    stored = pattern(16, 32)
    plain, tagged = tmp_path / "plain.jpg", tmp_path / "tagged.jpg"
    Image.fromarray(stored).save(plain, quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tagged, quality=95, exif=exif)
    decoded = load_image(plain)
    np.testing.assert_array_equal(load_image(tagged), ORIENTATION_TRANSFORMS[orientation](decoded))


# ------------------------------------------------------------------------------- bad files


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pattern(128, 160)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pattern(128, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_FILES = {
    "truncated-half.JPEG": lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2],
    "truncated-header.JPEG": lambda: jpeg_bytes()[:300],
    "truncated.png": lambda: png_bytes()[: len(png_bytes()) // 2],
    "empty.JPEG": lambda: b"",
    "text.JPEG": lambda: b"this is not an image\n" * 20,
    "html.png": lambda: b"<html><body>404 Not Found</body></html>",
    "garbage-after-magic.JPEG": lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unreadable_files_raise_image_load_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name]())
    with pytest.raises(ImageLoadError) as raised:
        load_image(path)
    assert str(raised.value).startswith(str(path))
    assert isinstance(raised.value, ValueError)


def test_missing_files_and_directories_raise_image_load_error(tmp_path):
    for path in (tmp_path / "missing.JPEG", tmp_path):
        with pytest.raises(ImageLoadError, match=str(path)):
            load_image(path)


def test_decompression_bombs_raise_image_load_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(pattern(64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2 x 100: a "bomb"
    with pytest.raises(ImageLoadError, match="big.png"):
        load_image(path)


def test_truncated_jpeg_really_raises_because_pillow_is_strict(tmp_path):
    """Truncation is only detectable while Pillow's LOAD_TRUNCATED_IMAGES is off (its default).

    Checked after importing everything the package pulls in (a subprocess would cost ~10 s of
    torch import; in this process they are all imported already by the other test modules).
    """
    import torchvision  # noqa: F401

    import robustness.evaluation
    import robustness.models  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    path = tmp_path / "cut.JPEG"
    path.write_bytes(jpeg_bytes()[:-200])  # only the tail of the entropy-coded data is missing
    with pytest.raises(ImageLoadError, match="cut.JPEG.*truncated"):
        load_image(path)


def test_a_loop_over_files_can_skip_and_report_the_bad_ones(tmp_path):
    """What the evaluation does with ImageLoadError: skip the file, go on, report it."""
    good = tmp_path / "good.png"
    Image.fromarray(pattern()).save(good)
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(jpeg_bytes()[:1000])
    loaded, skipped = [], []
    for path in (bad, good):
        try:
            loaded.append(load_image(path))
        except ImageLoadError as error:
            skipped.append(str(error))
    assert len(loaded) == 1 and len(skipped) == 1 and skipped[0].startswith(str(bad))
