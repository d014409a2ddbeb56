"""A corpus of bad (and awkward but good) dataset inputs, built programmatically and kept small on disk.

Used by tests/test_validate.py, tests/test_dataset.py and bench/import_broken.py. Every
builder writes real files; the expected outcome of each example (a quarantine reason, or
None for "kept") is returned beside it so tests compare against what was built.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RNG_SIZE = 32  # side of the small random images


def random_image(seed: int, size: tuple[int, int] = (RNG_SIZE, RNG_SIZE), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def image_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def good_jpeg(seed: int, size: tuple[int, int] = (RNG_SIZE, RNG_SIZE)) -> bytes:
    return image_bytes(random_image(seed, size), "JPEG", quality=90)


def truncated_jpeg(seed: int) -> bytes:
    data = good_jpeg(seed, (64, 64))
    return data[: len(data) // 2]


def bad_crc_png(seed: int) -> bytes:
    """A PNG whose IHDR checksum is wrong (bytes 29..32 hold the IHDR CRC)."""
    data = bytearray(image_bytes(random_image(seed), "PNG"))
    data[29:33] = bytes(b ^ 0xFF for b in data[29:33])
    return bytes(data)


def corrupt_idat_png(seed: int) -> bytes:
    """A PNG whose compressed pixel data is garbage (headers intact): the header reads, decoding fails."""
    data = bytearray(image_bytes(random_image(seed), "PNG", compress_level=0))
    start = data.index(b"IDAT") + 4
    data[start: start + 40] = b"\xff" * 40
    return bytes(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels with no pixel data: a cheap decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def cmyk_jpeg(seed: int) -> bytes:
    return image_bytes(random_image(seed, mode="CMYK"), "JPEG")


def png16(seed: int) -> bytes:
    """16-bit greyscale PNG with values spread over 0..65535."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 65536, size=(RNG_SIZE, RNG_SIZE), dtype=np.uint16)
    return image_bytes(Image.fromarray(arr), "PNG")


def palette_png_transparent() -> bytes:
    """Palette PNG whose index 0 (black) is transparent: left half transparent, right half red."""
    img = Image.new("P", (RNG_SIZE, RNG_SIZE), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (RNG_SIZE // 2, 0, RNG_SIZE, RNG_SIZE))
    return image_bytes(img, "PNG", transparency=0)


def rgba_png(seed: int) -> bytes:
    img = random_image(seed, mode="RGBA")
    img.putalpha(128)
    return image_bytes(img, "PNG")


def animated_gif(seed: int) -> bytes:
    frames = [random_image(seed + k).convert("P") for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg(seed: int) -> bytes:
    """A 40x20 JPEG with EXIF orientation 6 (rotate 90 degrees): shown as 20x40."""
    img = random_image(seed, (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(img, "JPEG", exif=exif.tobytes())


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def caption(seed: int) -> str:
    rng = random.Random(seed)
    words = ["red", "blue", "circle", "square", "small", "large", "left", "right", "top", "bottom"]
    return "The image shows " + " ".join(rng.choice(words) for _ in range(12)) + f" (example {seed})."


def build_bad_cc_sbu_align(root: Path, outside: Path) -> list[tuple[str, str | None]]:
    """A cc_sbu_align dataset at ``root`` holding one example per problem; returns (sample_id, expected reason) in order.

    ``outside`` is a folder outside ``root`` (for the symlink escape). None means the
    example must be kept (the convertible images, odd but valid names, clean text).
    """
    image = root / "image"
    anns: list[dict] = []
    expected: list[tuple[str, str | None]] = []

    def add(sid: str, data: bytes | None, reason: str | None, text: str | None = None, ext: str = ".jpg", **extra):
        if data is not None:
            write(image / f"{sid}{ext}", data)
        anns.append({"image_id": sid, "caption": caption(len(anns)) if text is None else text, **extra})
        expected.append((sid, reason))

    add("good_1", good_jpeg(1), None)
    add("good 2 with spaces", good_jpeg(2), None)
    add("café_ü_日本", good_jpeg(3), None)
    add("cmyk", cmyk_jpeg(4), None)
    add("png16", png16(5), None, ext=".png")
    add("palette_transparent", palette_png_transparent(), None, ext=".png")
    add("rgba", rgba_png(6), None, ext=".png")
    add("animated", animated_gif(7), None, ext=".gif")
    add("exif_rotated", exif_rotated_jpeg(8), None)
    add("tab_newline_ok", good_jpeg(9), None, text="Line one.\n\tLine two.")
    add("missing", None, "missing_image")
    add("truncated", truncated_jpeg(10), "unreadable_image")
    add("bad_crc", bad_crc_png(11), "unreadable_image", ext=".png")
    add("corrupt_idat", corrupt_idat_png(12), "unreadable_image", ext=".png")
    add("text_as_jpg", b"this is not an image, just text\n", "unreadable_image")
    add("zero_bytes", b"", "empty_file")
    add("one_pixel", image_bytes(Image.new("RGB", (1, 1)), "PNG"), "too_small", ext=".png")
    add("bomb_20000", header_only_png(20000, 20000), "too_large", ext=".png")
    add("over_max_7000", header_only_png(7000, 7000), "too_large", ext=".png")
    add("empty_answer", good_jpeg(13), "empty_answer", text="")
    add("whitespace_answer", good_jpeg(14), "empty_answer", text="  \n\t ")
    add("long_answer", good_jpeg(15), "answer_too_long", text="word " * 20_000)  # 100 KB
    add("nul_answer", good_jpeg(16), "control_characters", text="A cat\x00 on a mat.")
    add("bell_answer", good_jpeg(17), "control_characters", text="A dog\x07 barking.")
    add("good_1", None, "duplicate_id")  # same id again: the first is kept
    write(image / "dup_example.jpg", good_jpeg(1))  # same bytes and caption as good_1
    anns.append({"image_id": "dup_example", "caption": anns[0]["caption"]})
    expected.append(("dup_example", "duplicate_example"))
    write(outside / "outside.jpg", good_jpeg(18))
    image.mkdir(parents=True, exist_ok=True)
    os.symlink(outside / "outside.jpg", image / "escape.jpg")
    anns.append({"image_id": "escape", "caption": caption(99)})
    expected.append(("escape", "outside_root"))
    anns.append({"image_id": "no_caption"})
    write(image / "no_caption.jpg", good_jpeg(19))
    expected.append(("no_caption", "missing_field"))
    anns.append({"caption": "an annotation without image_id"})
    expected.append((f"annotation#{len(anns) - 1}", "missing_field"))
    write(root / "filter_cap.json", json.dumps({"annotations": anns}, ensure_ascii=False).encode())
    return expected


# How bench/import_broken.py and its small test break examples; each keeps the sample_id predictable.
BREAKS = ("missing_image", "unreadable_image", "empty_file", "too_small", "too_large", "empty_answer",
          "control_characters", "answer_too_long", "duplicate_id", "duplicate_example", "outside_root", "missing_field")


def build_broken_cc_sbu_align(root: Path, outside: Path, n: int, n_broken: int, seed: int = 0) -> dict[str, str]:
    """``n`` cc_sbu_align examples of which exactly ``n_broken`` are broken in assorted ways.

    Returns the expected quarantine as sample_id -> reason. The broken examples are chosen
    at random among those after the first (duplicates need an earlier good example) and
    cycle through BREAKS.
    """
    rng = random.Random(seed)
    image = root / "image"
    image.mkdir(parents=True, exist_ok=True)
    broken = sorted(rng.sample(range(1, n), n_broken))
    kind_of = {i: BREAKS[k % len(BREAKS)] for k, i in enumerate(broken)}
    anns, expected = [], {}
    for i in range(n):
        sid, text, kind = f"ex_{i:05d}", caption(seed * 1_000_003 + i), kind_of.get(i)
        data = good_jpeg(seed * 1_000_003 + i)
        good_before = next(j for j in range(i - 1, -1, -1) if j not in kind_of) if kind else None
        if kind == "missing_image":
            data = None
        elif kind == "unreadable_image":
            data = truncated_jpeg(i)
        elif kind == "empty_file":
            data = b""
        elif kind == "too_small":
            data = image_bytes(Image.new("RGB", (4, 4)), "JPEG")
        elif kind == "too_large":
            data = header_only_png(20000, 20000)
        elif kind == "empty_answer":
            text = " "
        elif kind == "control_characters":
            text = text + "\x00"
        elif kind == "answer_too_long":
            text = "x" * 100_000
        elif kind == "duplicate_id":
            sid, data = anns[good_before]["image_id"], None
        elif kind == "duplicate_example":
            data = (image / f"{anns[good_before]['image_id']}.jpg").read_bytes()
            text = anns[good_before]["caption"]
        elif kind == "outside_root":
            target = write(outside / f"{sid}.jpg", data)
            os.symlink(target, image / f"{sid}.jpg")
            data = None
        if data is not None:
            write(image / f"{sid}.jpg", data)
        anns.append({"image_id": sid} if kind == "missing_field" else {"image_id": sid, "caption": text})
        if kind:
            assert sid not in expected, "two breaks share a sample_id; use another seed"
            expected[sid] = kind
    write(root / "filter_cap.json", json.dumps({"annotations": anns}).encode())
    return expected
