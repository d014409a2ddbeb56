"""Image and text checks: each bad input gets its exact reason; convertible images decode to sensible RGB."""

import os

import numpy as np
import pytest
from PIL import Image

import badinputs as bad
from vlselect.validate import Rejected, check_image, check_text, load_rgb, resolve_image


def _reason(fn, **kwargs):
    try:
        fn(**kwargs)
    except Rejected as rej:
        return rej.reason
    return None


@pytest.mark.parametrize("name,data,reason", [
    ("good.jpg", bad.good_jpeg(1), None),
    ("truncated.jpg", bad.truncated_jpeg(2), "unreadable_image"),
    ("bad_crc.png", bad.bad_crc_png(3), "unreadable_image"),
    ("corrupt_idat.png", bad.corrupt_idat_png(4), "unreadable_image"),
    ("text.jpg", b"just some text, not an image\n", "unreadable_image"),
    ("zero.jpg", b"", "empty_file"),
    ("one.png", bad.image_bytes(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
    ("bomb.png", bad.header_only_png(20000, 20000), "too_large"),   # PIL's own bomb error, caught
    ("big.png", bad.header_only_png(7000, 7000), "too_large"),      # under PIL's limit, over max_pixels
    ("warn.png", bad.header_only_png(10000, 10000), "too_large"),   # PIL's bomb *warning* range, made an error
    ("cmyk.jpg", bad.cmyk_jpeg(5), None),
    ("png16.png", bad.png16(6), None),
    ("palette.png", bad.palette_png_transparent(), None),
    ("rgba.png", bad.rgba_png(7), None),
    ("anim.gif", bad.animated_gif(8), None),
    ("exif.jpg", bad.exif_rotated_jpeg(9), None),
])
def test_check_image_reasons(tmp_path, name, data, reason):
    path = bad.write(tmp_path / name, data)
    assert path.stat().st_size < 20_000  # the bombs are cheap on disk
    max_pixels = 40_000_000 if name != "warn.png" else 150_000_000
    assert _reason(check_image, path=path, min_pixels=64, max_pixels=max_pixels) == reason


def test_missing_image(tmp_path):
    assert _reason(check_image, path=tmp_path / "nope.jpg", min_pixels=64, max_pixels=10**7) == "missing_image"


def test_load_rgb_converts_awkward_images(tmp_path):
    def load(name, data):
        img = load_rgb(str(bad.write(tmp_path / name, data)))
        assert img.mode == "RGB"
        return img

    assert load("exif.jpg", bad.exif_rotated_jpeg(1)).size == (20, 40)  # stored 40x20, orientation 6
    grey = np.asarray(load("png16.png", bad.png16(2)))[..., 0]
    assert grey.min() < 30 and grey.max() > 225 and 80 < grey.mean() < 175  # scaled, not clipped to white
    pal = np.asarray(load("palette.png", bad.palette_png_transparent()))
    assert (pal[:, :16] == 255).all()  # transparent black composited onto white
    assert (pal[:, 16:] == [255, 0, 0]).all()
    first = bad.random_image(3).convert("P").convert("RGB")
    anim = load("anim.gif", bad.animated_gif(3))
    assert np.array_equal(np.asarray(anim), np.asarray(first))  # the first frame
    cmyk = load("cmyk.jpg", bad.cmyk_jpeg(4))
    assert cmyk.size == (bad.RNG_SIZE, bad.RNG_SIZE)
    with pytest.raises(Image.DecompressionBombError):
        load_rgb(str(bad.write(tmp_path / "bomb.png", bad.header_only_png(20000, 20000))))


@pytest.mark.parametrize("answer,instruction,reason", [
    ("A red circle.", "Describe.", None),
    ("Line one.\n\tLine two.\r\n", "Describe.", None),
    ("", "Describe.", "empty_answer"),
    (" \n\t", "Describe.", "empty_answer"),
    ("ok", "  ", "empty_instruction"),
    ("a\x00b", "Describe.", "control_characters"),
    ("a\x1bb", "Describe.", "control_characters"),
    ("fine", "Describe\x00.", "control_characters"),
    ("x" * 100_000, "Describe.", "answer_too_long"),
    ("x" * 20_000, "Describe.", None),
])
def test_check_text(answer, instruction, reason):
    assert _reason(check_text, answer=answer, instruction=instruction, max_answer_chars=20_000) == reason


def test_resolve_image_follows_symlinks_and_dotdot(tmp_path):
    root, outside = tmp_path / "root dir é", tmp_path / "outside"
    target = bad.write(outside / "x.jpg", bad.good_jpeg(1))
    bad.write(root / "in.jpg", bad.good_jpeg(2))
    os.symlink(target, root / "link.jpg")
    os.symlink(root / "in.jpg", root / "inner_link.jpg")
    assert resolve_image("in.jpg", root=str(root), allow_outside_root=False) == (root / "in.jpg").resolve()
    assert resolve_image("inner_link.jpg", root=str(root), allow_outside_root=False) == (root / "in.jpg").resolve()
    for image in ("link.jpg", "../outside/x.jpg", str(target)):
        assert _reason(resolve_image, image=image, root=str(root), allow_outside_root=False) == "outside_root"
        assert resolve_image(image, root=str(root), allow_outside_root=True) == target.resolve()
