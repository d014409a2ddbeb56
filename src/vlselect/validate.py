"""Checks that decide whether one example can enter the manifest, and the shared image loader.

Every check raises :class:`Rejected` with a short reason slug (the ``reason`` column of
quarantine.parquet) and one sentence of detail. Images that only need converting (CMYK,
16-bit, palette with transparency, RGBA, EXIF-rotated, animated) are not rejected: they
pass when :func:`load_rgb` can turn them into RGB, and the scorers call the same
:func:`load_rgb`, so what validation accepted is exactly what scoring can read.

Reason slugs:

- missing_field, invalid_field, invalid_json, invalid_utf8, no_answer_turn: the record itself is malformed
- duplicate_id (the first occurrence is kept), duplicate_example (same image bytes and same answer as a kept one)
- empty_answer, empty_instruction, control_characters, answer_too_long: text problems
- outside_root, missing_image, empty_file, too_small, too_large, unreadable_image: image problems

Control characters: a NUL or any other C0 control character except tab, newline and
carriage return quarantines the example rather than being stripped, because such bytes
usually mean the text was cut from a binary or mis-decoded file, and the rest of the text
is then suspect too.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Every reason a record can be quarantined for (see the module docstring).
REASONS = (
    "missing_field", "invalid_field", "invalid_json", "invalid_utf8", "no_answer_turn",
    "duplicate_id", "duplicate_example",
    "empty_answer", "empty_instruction", "control_characters", "answer_too_long",
    "outside_root", "missing_image", "empty_file", "too_small", "too_large", "unreadable_image",
)

# C0 controls other than \t \n \r.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


class Rejected(Exception):
    """An example that must go to quarantine: ``reason`` is the slug, ``detail`` one sentence."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def load_rgb(path: str) -> Image.Image:
    """Decode an image as a camera shows it, as 8-bit RGB; shared by validation and every scorer.

    EXIF orientation is applied; an animated image gives its first frame; transparency is
    composited onto white (dropping alpha would show whatever colour hides under it, often
    black); 16-bit and 32-bit grey are scaled down to 8 bits (Pillow's plain convert clips
    them to white). PIL's decompression-bomb warning is raised as an error, so an oversized
    image never decodes silently.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.seek(0)
            img = ImageOps.exif_transpose(img)  # returns a loaded copy of frame 0
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        scale = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        img = Image.fromarray((np.clip(arr, 0, scale) * 255 // scale).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = arr.max(initial=0) or 1.0
        img = Image.fromarray((np.clip(arr / top, 0, 1) * 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def check_text(*, answer: str, instruction: str, max_answer_chars: int) -> None:
    """Reject empty or whitespace-only text, control characters and answers over ``max_answer_chars``."""
    if not answer.strip():
        raise Rejected("empty_answer", "The answer is empty or only whitespace.")
    if not instruction.strip():
        raise Rejected("empty_instruction", "The instruction is empty or only whitespace.")
    for name, text in (("answer", answer), ("instruction", instruction)):
        bad = _CONTROL.search(text)
        if bad:
            raise Rejected("control_characters",
                           f"The {name} contains control character U+{ord(bad.group()):04X} at position {bad.start()}.")
    if len(answer) > max_answer_chars:
        raise Rejected("answer_too_long",
                       f"The answer has {len(answer)} characters, more than max_answer_chars={max_answer_chars}.")


def resolve_image(image: str, *, root: str, allow_outside_root: bool) -> Path:
    """Return the absolute path of ``image`` (relative paths resolve against ``root``, symlinks followed).

    A path that ends up outside ``root`` is rejected unless ``allow_outside_root``: a
    ``../`` in an annotation or a symlink out of the dataset folder usually means the data
    points somewhere it should not, and exports would then copy files from anywhere.
    """
    root_path = Path(root).resolve()
    path = (root_path / image).resolve()  # an absolute ``image`` replaces root here
    if not allow_outside_root and not path.is_relative_to(root_path):
        raise Rejected("outside_root", f"The image {image!r} resolves to {path}, outside the dataset root {root_path} "
                                       f"(set dataset.allow_outside_root: true if that is intended).")
    return path


def check_image(path: Path, *, min_pixels: int, max_pixels: int) -> None:
    """Reject a missing, empty, undecodable, too small or too large image.

    The size comes from the header before anything is decoded, so a decompression bomb
    (a small file claiming a huge canvas) is refused without allocating its pixels.
    """
    if not path.is_file():
        raise Rejected("missing_image", f"The image file {path} does not exist (or is not a file).")
    if path.stat().st_size == 0:
        raise Rejected("empty_file", f"The image file {path} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("too_large", f"The image {path} claims too many pixels for PIL to decode safely ({exc}).")
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile input; all mean "cannot read"
        raise Rejected("unreadable_image", f"The image {path} cannot be opened ({type(exc).__name__}: {exc}).")
    pixels = width * height
    if pixels > max_pixels:
        raise Rejected("too_large", f"The image {path} is {width}x{height} = {pixels} pixels, more than max_pixels={max_pixels}.")
    if pixels < min_pixels:
        raise Rejected("too_small", f"The image {path} is {width}x{height} = {pixels} pixels, fewer than min_pixels={min_pixels}.")
    try:
        load_rgb(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - see above
        raise Rejected("unreadable_image", f"The image {path} does not decode to RGB ({type(exc).__name__}: {exc}).")
