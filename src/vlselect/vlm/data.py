"""Training sets for the fine-tunes, read from either export format of :func:`vlselect.dataset.export_dataset`.

* cc_sbu_align (MiniGPT-4's stage-2 layout): ``filter_cap.json`` + ``image/``; one turn per example, whose
  instruction the export does not carry (it comes from the config).
* llava: ``llava.json``, a list of ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}``
  with the image path relative to the export folder; every turn is kept.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlselect.dataset import LLAVA_EXPORT_FILE
from vlselect.io import read_json
from vlselect.vlm.base import Conversation

CC_SBU_ALIGN_FILE = "filter_cap.json"
# LLaVA marks the image's place in the first human turn; the adapters place the image themselves
_IMAGE_PLACEHOLDER = re.compile(r"\n?<image>\n?")


@dataclass(frozen=True)
class TrainingExample:
    """One example: its image file and its (user, assistant) turns."""

    image_path: Path
    turns: list[tuple[str, str]]

    def conversation(self) -> Conversation:
        return Conversation(image=open_rgb(self.image_path), turns=list(self.turns))


def open_rgb(path):
    """The image at ``path`` as a PIL RGB image, read fully so the file is closed."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def training_set_file(train_dir: str | os.PathLike) -> Path:
    """The annotation file of an export (``filter_cap.json`` or ``llava.json``): what the fine-tune fingerprints."""
    train_dir = Path(train_dir)
    for name in (CC_SBU_ALIGN_FILE, LLAVA_EXPORT_FILE):
        if (train_dir / name).exists():
            return train_dir / name
    raise FileNotFoundError(f"{train_dir} holds neither {CC_SBU_ALIGN_FILE} (a cc_sbu_align export: filter_cap.json + "
                            f"image/) nor {LLAVA_EXPORT_FILE} (a llava export); point train_dir at an export")


def load_training_set(train_dir: str | os.PathLike, instruction: str) -> list[TrainingExample]:
    """Read an export; ``instruction`` is the user turn of every cc_sbu_align example (llava carries its own)."""
    path = training_set_file(train_dir)
    rows = _read_cc_sbu_align(path, instruction) if path.name == CC_SBU_ALIGN_FILE else _read_llava(path)
    if not rows:
        raise ValueError(f"{path} holds no examples; an empty training set cannot be fine-tuned")
    return rows


def _read_cc_sbu_align(path: Path, instruction: str) -> list[TrainingExample]:
    rows = []
    for ann in read_json(path)["annotations"]:
        hits = sorted((path.parent / "image").glob(f"{ann['image_id']}.*"))
        if not hits:
            raise FileNotFoundError(f"no image for image_id {ann['image_id']!r} under {path.parent / 'image'}")
        rows.append(TrainingExample(hits[0], [(instruction, ann["caption"])]))
    return rows


def _read_llava(path: Path) -> list[TrainingExample]:
    rows = []
    for entry in read_json(path):
        name = entry.get("id", "?")
        if not entry.get("image"):
            raise ValueError(f"{path}: example {name!r} has no image; the fine-tune trains on image conversations only")
        msgs = entry["conversations"]
        speakers = [m["from"] for m in msgs]
        if not msgs or speakers != ["human", "gpt"] * (len(msgs) // 2):
            raise ValueError(f"{path}: example {name!r} must alternate human and gpt turns, starting with human; "
                             f"got {speakers}")
        turns = [(msgs[i]["value"], msgs[i + 1]["value"]) for i in range(0, len(msgs), 2)]
        turns[0] = (_IMAGE_PLACEHOLDER.sub("", turns[0][0], count=1), turns[0][1])
        image = path.parent / entry["image"]
        if not image.exists():
            raise FileNotFoundError(f"{path}: the image {entry['image']!r} of example {name!r} is not at {image}")
        rows.append(TrainingExample(image, turns))
    return rows
