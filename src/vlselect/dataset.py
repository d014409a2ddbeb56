"""Import an instruction dataset into one manifest (quarantining bad examples), and export a selection.

Import reads one of four layouts into records (sample_id, image, instruction, answer),
validates each (vlselect.validate), and writes manifest.parquet with the good ones and
quarantine.parquet with the rest, one reason each. A problem with the whole annotation
file (not UTF-8, not valid JSON) is an error, not a quarantine, because no single example
is to blame and the user must fix the file.

Layouts:

- cc_sbu_align (MiniGPT-4 stage 2): ``root/filter_cap.json`` = {"annotations": [{"image_id", "caption"}]}
  and ``root/image/<image_id>.jpg`` (another image extension is accepted when no .jpg exists,
  which is how exports keep PNGs byte-identical). The instruction is the configured one.
- llava: a JSON list of {"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}.
- toy: the toy world's dataset/ folder (cc_sbu_align layout); source is "toy".
- jsonl / parquet: one record per line / row; ``fields`` maps sample_id, image, answer and
  optionally instruction to column names (default: id, image, answer; no instruction column
  means the configured instruction).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from vlselect.io import atomic_dir, sha256_file, write_parquet
from vlselect.validate import Rejected, check_image, check_text, resolve_image

log = logging.getLogger(__name__)

FORMATS = ("cc_sbu_align", "llava", "jsonl", "parquet", "toy")  # toy: the toy world's cc_sbu_align folder
# Tried in this order for cc_sbu_align when image/<id>.jpg is absent.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
DEFAULT_FIELDS = {"sample_id": "id", "image": "image", "answer": "answer"}
# turns: the whole conversation as JSON [[user, assistant], ...] for llava_turns "conversation", else ""; the
# scorers read instruction (the first user turn) and answer (every assistant turn, one per line)
MANIFEST_COLUMNS = ["sample_id", "image_path", "image_sha256", "instruction", "answer", "source", "turns"]
QUARANTINE_COLUMNS = ["sample_id", "reason", "detail"]
LLAVA_EXPORT_FILE = "llava.json"
ID_MAP_FILE = "sample_ids.json"


@dataclasses.dataclass
class _Record:
    sample_id: str
    image: str | None = None
    instruction: str | None = None
    answer: str | None = None
    turns: list[tuple[str, str]] | None = None  # a multi-turn conversation kept whole
    problem: Rejected | None = None  # set when the record is already known to be bad while parsing


def import_dataset(*, format: str, root: str, out_manifest: str, out_quarantine: str,
                   instruction: str = "Describe this image in detail.", llava_turns: str = "first",
                   fields: dict | None = None, annotation_file: str | None = None, min_pixels: int = 64,
                   max_pixels: int = 40_000_000, max_answer_chars: int = 20_000, max_bad_fraction: float = 0.05,
                   allow_outside_root: bool = False, quarantine_copy: str | None = None) -> dict:
    """Read a dataset, validate every example, write manifest.parquet and quarantine.parquet.

    Both files are written before the bad share is checked, so when more than
    ``max_bad_fraction`` of the examples are quarantined the run stops with an error that
    points at the quarantine for inspection. A workflow deletes a failed job's outputs, so
    ``quarantine_copy`` (a path outside them) then receives the quarantine too, and the error
    names it; a successful import removes a copy left by an earlier failure, so a copy on disk
    always belongs to the last import, which failed. Returns the counts by reason (and "kept").
    """
    if format not in FORMATS:
        raise ValueError(f"dataset.format {format!r} is not importable; use one of {', '.join(FORMATS)}")
    if llava_turns not in ("first", "all", "conversation"):
        raise ValueError(f"dataset.llava_turns must be 'first', 'all' or 'conversation', got {llava_turns!r}")
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder; set dataset.root to the dataset's folder")
    # The toy world is written in cc_sbu_align layout; its manifest says "toy" (file contract), never a hidden source.
    layout = "cc_sbu_align" if format == "toy" else format
    annotations = _annotation_path(layout, root_path, annotation_file)
    source = "toy" if format == "toy" else f"{format}:{annotations.name}"
    records = _read_records(layout, annotations, instruction=instruction, llava_turns=llava_turns, fields=fields)

    kept: list[dict] = []
    quarantined: list[dict] = []
    seen_ids: set[str] = set()
    seen_examples: dict[tuple[str, str], str] = {}
    for rec in tqdm(records, desc="validate", unit="ex", file=sys.stderr, mininterval=2):
        first_time = rec.sample_id not in seen_ids
        seen_ids.add(rec.sample_id)
        try:
            if rec.problem:
                raise rec.problem
            if not first_time:
                raise Rejected("duplicate_id", f"The sample_id {rec.sample_id!r} already appeared earlier; the first one is kept.")
            check_text(answer=rec.answer, instruction=rec.instruction, max_answer_chars=max_answer_chars)
            path = resolve_image(rec.image, root=str(root_path), allow_outside_root=allow_outside_root)
            check_image(path, min_pixels=min_pixels, max_pixels=max_pixels)
            digest = sha256_file(path)
            earlier = seen_examples.get((digest, rec.answer))
            if earlier is not None:
                raise Rejected("duplicate_example", f"Same image bytes and same answer as the earlier example {earlier!r}.")
        except Rejected as rej:
            quarantined.append({"sample_id": rec.sample_id, "reason": rej.reason, "detail": rej.detail})
            continue
        seen_examples[(digest, rec.answer)] = rec.sample_id
        kept.append({"sample_id": rec.sample_id, "image_path": str(path), "image_sha256": digest,
                     "instruction": rec.instruction, "answer": rec.answer, "source": source,
                     "turns": json.dumps(rec.turns, ensure_ascii=False) if rec.turns else ""})

    counts = collections.Counter(q["reason"] for q in quarantined)
    total = len(kept) + len(quarantined)
    meta = {"format": format, "root": str(root_path), "annotation_file": str(annotations), "n_total": total,
            "n_kept": len(kept), "quarantined": dict(sorted(counts.items())), "instruction": instruction,
            "llava_turns": llava_turns, "fields": fields, "min_pixels": min_pixels, "max_pixels": max_pixels,
            "max_answer_chars": max_answer_chars, "allow_outside_root": allow_outside_root}
    # astype(str): every column is text, and an empty quarantine must still have string (not null-typed) columns
    write_parquet(pd.DataFrame(kept, columns=MANIFEST_COLUMNS).astype(str), out_manifest, metadata=meta)
    rejected = pd.DataFrame(quarantined, columns=QUARANTINE_COLUMNS).astype(str)
    write_parquet(rejected, out_quarantine, metadata=meta)
    log.info("imported %s: %d examples, %d kept, %d quarantined", annotations, total, len(kept), len(quarantined))
    for reason, n in counts.most_common():
        log.info("  quarantined %-20s %d", reason, n)

    if total == 0:
        raise ValueError(f"{annotations} holds no examples; check dataset.format and dataset.annotation_file")
    fraction = len(quarantined) / total
    if not kept or fraction > max_bad_fraction:
        where = out_quarantine
        if quarantine_copy:
            write_parquet(rejected, quarantine_copy, metadata=meta)
            where = quarantine_copy
        if not kept:
            raise ValueError(f"all {total} examples of {annotations} were quarantined; inspect {where}")
        summary = ", ".join(f"{r}={n}" for r, n in counts.most_common())
        raise ValueError(
            f"{len(quarantined)} of {total} examples ({fraction:.2%}) were quarantined, more than "
            f"dataset.max_bad_fraction={max_bad_fraction} ({summary}). Inspect {where} (sample_id, reason, "
            f"detail), fix the data or the format settings, or raise dataset.max_bad_fraction if these losses are acceptable.")
    if quarantine_copy:
        Path(quarantine_copy).unlink(missing_ok=True)
    return {"kept": len(kept), **counts}


def _annotation_path(format: str, root: Path, annotation_file: str | None) -> Path:
    """The annotation file: filter_cap.json for cc_sbu_align, else dataset.annotation_file (or the only candidate)."""
    if format == "cc_sbu_align":
        path = root / (annotation_file or "filter_cap.json")
    elif annotation_file:
        path = root / annotation_file
    else:
        suffix = {"llava": ".json", "jsonl": ".jsonl", "parquet": ".parquet"}[format]
        candidates = sorted(p for p in root.iterdir() if p.suffix == suffix and p.is_file())
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"found {len(candidates)} *{suffix} files in {root} ({', '.join(p.name for p in candidates) or 'none'}); "
                f"set dataset.annotation_file to the one to import")
        path = candidates[0]
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found; check dataset.root and dataset.annotation_file")
    return path


def _read_records(format: str, path: Path, *, instruction: str, llava_turns: str, fields: dict | None) -> list[_Record]:
    if format == "cc_sbu_align":
        return list(_cc_sbu_align_records(path, instruction))
    if format == "llava":
        return list(_llava_records(path, llava_turns))
    mapping = dict(fields or DEFAULT_FIELDS)
    missing = {"sample_id", "image", "answer"} - set(mapping)
    if missing:
        raise ValueError(f"dataset.fields must name the column for {', '.join(sorted(missing))}; got {mapping}")
    if format == "jsonl":
        return list(_jsonl_records(path, mapping, instruction))
    return list(_parquet_records(path, mapping, instruction))


def _load_json(path: Path) -> Any:
    """Parse a whole JSON file, turning encoding and syntax errors into messages that name the file and position."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not valid UTF-8 (byte offset {exc.start}: {exc.reason}); "
                         f"re-encode the file as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
                         f"(character {exc.pos}); fix the file (e.g. remove trailing content after the top-level value)") from None


def _cc_sbu_align_records(path: Path, instruction: str) -> Iterator[_Record]:
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path} must be a JSON object with an 'annotations' list (cc_sbu_align layout)")
    image_dir = path.parent / "image"
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            yield _Record(f"annotation#{i}", problem=Rejected("invalid_field", f"Annotation {i} is not a JSON object."))
            continue
        sid = ann.get("image_id")
        if sid is None:
            yield _Record(f"annotation#{i}", problem=Rejected("missing_field", f"Annotation {i} has no 'image_id'."))
            continue
        sid = str(sid)
        rec = _Record(sid, image=_cc_image(image_dir, sid), instruction=instruction, answer=ann.get("caption"))
        if rec.answer is None:
            rec.problem = Rejected("missing_field", f"Annotation {i} ({sid!r}) has no 'caption'.")
        elif not isinstance(rec.answer, str):
            rec.problem = Rejected("invalid_field", f"Annotation {i} ({sid!r}) has a caption that is not a string.")
        yield rec


def _cc_image(image_dir: Path, image_id: str) -> str:
    """image/<id>.jpg, or the first other known extension present (exports keep each image's own format)."""
    for ext in IMAGE_EXTS:
        candidate = image_dir / f"{image_id}{ext}"
        if os.path.lexists(candidate):
            return str(candidate)
    return str(image_dir / f"{image_id}.jpg")  # absent: validation reports missing_image with this path


_IMAGE_TAG = re.compile(r"\n*<image>\n*")


def _llava_records(path: Path, llava_turns: str) -> Iterator[_Record]:
    data = _load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path} must be a JSON list of conversations (llava layout)")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            yield _Record(f"item#{i}", problem=Rejected("invalid_field", f"Item {i} is not a JSON object."))
            continue
        if item.get("id") is None:
            yield _Record(f"item#{i}", problem=Rejected("missing_field", f"Item {i} has no 'id'."))
            continue
        sid = str(item["id"])
        image, conv = item.get("image"), item.get("conversations")
        for key, value in (("image", image), ("conversations", conv)):
            if value is None:
                yield _Record(sid, problem=Rejected("missing_field", f"Item {i} ({sid!r}) has no {key!r}."))
                break
        else:
            if not isinstance(image, str) or not isinstance(conv, list) or not all(
                    isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
                yield _Record(sid, problem=Rejected(
                    "invalid_field", f"Item {i} ({sid!r}) needs a string 'image' and 'conversations' of {{from, value}}."))
                continue
            pairs = [(conv[k]["value"], conv[k + 1]["value"]) for k in range(len(conv) - 1)
                     if conv[k].get("from") == "human" and conv[k + 1].get("from") == "gpt"]
            if not pairs:
                yield _Record(sid, problem=Rejected("no_answer_turn", f"Item {i} ({sid!r}) has no human turn answered by a gpt turn."))
                continue
            pairs = [(_IMAGE_TAG.sub("\n", question).strip("\n"), answer) for question, answer in pairs]
            if llava_turns == "conversation":
                yield _Record(sid, image=image, instruction=pairs[0][0], answer="\n".join(a for _, a in pairs),
                              turns=pairs if len(pairs) > 1 else None)
                continue
            if llava_turns == "first":
                pairs = pairs[:1]
            for turn, (question, answer) in enumerate(pairs):
                yield _Record(sid if llava_turns == "first" else f"{sid}#{turn}", image=image,
                              instruction=question, answer=answer)


def _mapped_record(row: dict, mapping: dict, instruction: str, where: str) -> _Record:
    """Build a record from a jsonl/parquet row through dataset.fields."""
    sid = row.get(mapping["sample_id"])
    if sid is None:
        return _Record(where, problem=Rejected("missing_field", f"{where} has no {mapping['sample_id']!r} (sample_id)."))
    sid = str(sid)
    values = {}
    for key in ("image", "answer", "instruction"):
        if key == "instruction" and "instruction" not in mapping:
            values[key] = instruction
            continue
        value = row.get(mapping[key])
        if value is None:
            return _Record(sid, problem=Rejected("missing_field", f"{where} ({sid!r}) has no {mapping[key]!r} ({key})."))
        if not isinstance(value, str):
            return _Record(sid, problem=Rejected(
                "invalid_field", f"{where} ({sid!r}) has a {type(value).__name__} in {mapping[key]!r} ({key}), not a string."))
        values[key] = value
    return _Record(sid, **values)


def _jsonl_records(path: Path, mapping: dict, instruction: str) -> Iterator[_Record]:
    # Bytes, line by line: one badly encoded or malformed line costs one example, not the file.
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path.name}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _Record(where, problem=Rejected("invalid_utf8", f"Line {lineno} is not valid UTF-8 (byte {exc.start}: {exc.reason})."))
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield _Record(where, problem=Rejected("invalid_json", f"Line {lineno} is not valid JSON ({exc.msg} at column {exc.colno})."))
                continue
            if not isinstance(row, dict):
                yield _Record(where, problem=Rejected("invalid_json", f"Line {lineno} is not a JSON object."))
                continue
            yield _mapped_record(row, mapping, instruction, where)


def _parquet_records(path: Path, mapping: dict, instruction: str) -> Iterator[_Record]:
    columns = pq.read_schema(path).names
    absent = [col for col in mapping.values() if col not in columns]
    if absent:
        raise ValueError(f"{path} has no column(s) {absent} named in dataset.fields; its columns are {columns}")
    # pyarrow rows keep nulls as None and integer ids as int (pandas would turn an int column with nulls into floats)
    rows = pq.read_table(path, columns=sorted(set(mapping.values()))).to_pylist()
    for i, row in enumerate(rows):
        yield _mapped_record(row, mapping, instruction, f"{path.name}:row{i}")


def export_dataset(*, manifest: str, sample_ids_file: str, out_dir: str, format: str = "cc_sbu_align",
                   link: str = "hardlink", subset: int | None = None) -> int:
    """Write the listed examples (in the order of ``sample_ids_file``) as a training set in ``out_dir``.

    With ``subset``, ``sample_ids_file`` is labels/subsets.parquet and only that subset's rows are written.

    cc_sbu_align: filter_cap.json + image/<name><ext>; llava: llava.json (human turn
    "<image>\\n" + instruction) + images/. Sample ids become file names only after
    sanitising (a safe name, with a short hash when anything changed); for cc_sbu_align,
    whose image_id is that name, sample_ids.json maps each name back to its sample_id. Images are hard-linked (``link="hardlink"``, with a
    copy when the link fails, e.g. across filesystems) or copied (``link="copy"``), so bytes
    never change and re-importing the export gives the same image_sha256. The folder appears
    atomically. Returns the number of examples written.
    """
    if format not in ("cc_sbu_align", "llava"):
        raise ValueError(f"export format must be 'cc_sbu_align' or 'llava', got {format!r}")
    if link not in ("hardlink", "copy"):
        raise ValueError(f"link must be 'hardlink' or 'copy', got {link!r}")
    table = pd.read_parquet(manifest).set_index("sample_id", drop=False)
    listed = pd.read_parquet(sample_ids_file)
    if subset is not None:
        listed = listed[listed["subset"] == int(subset)]
        if listed.empty:
            raise ValueError(f"subset {subset} has no examples in {sample_ids_file}; check labels.n_subsets")
    ids = [str(s) for s in listed["sample_id"]]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].tolist()[:5]
        raise ValueError(f"{sample_ids_file} lists some sample_ids more than once (e.g. {dup}); each must appear once")
    unknown = [s for s in ids if s not in table.index]
    if unknown:
        raise ValueError(f"{len(unknown)} sample_ids in {sample_ids_file} are not in {manifest} (e.g. {unknown[:5]}); "
                         f"was the selection made from another manifest?")
    rows = table.loc[ids]
    if format == "cc_sbu_align" and rows["instruction"].nunique() > 1:
        log.warning("cc_sbu_align carries no instruction: %d distinct instructions are dropped from the export; "
                    "use format llava to keep them", rows["instruction"].nunique())

    names = _safe_names(ids)
    image_dir_name = "image" if format == "cc_sbu_align" else "images"
    with atomic_dir(out_dir) as tmp:
        (tmp / image_dir_name).mkdir()
        entries = []
        for sid, row in tqdm(rows.iterrows(), total=len(rows), desc="export", unit="ex", file=sys.stderr, mininterval=2):
            rel = f"{image_dir_name}/{names[sid]}{_image_ext(row['image_path'])}"
            _place(row["image_path"], tmp / rel, link)
            if format == "cc_sbu_align":
                entries.append({"image_id": names[sid], "caption": row["answer"]})
            else:
                turns = json.loads(row["turns"]) if row.get("turns") else [(row["instruction"], row["answer"])]
                conversation = []
                for k, (question, answer) in enumerate(turns):
                    conversation += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + question},
                                     {"from": "gpt", "value": answer}]
                entries.append({"id": sid, "image": rel, "conversations": conversation})
        document = {"annotations": entries} if format == "cc_sbu_align" else entries
        target = "filter_cap.json" if format == "cc_sbu_align" else LLAVA_EXPORT_FILE
        (tmp / target).write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8")
        if format == "cc_sbu_align":  # llava keeps the sample_id in "id"; cc_sbu_align only has the file name
            (tmp / ID_MAP_FILE).write_text(json.dumps({names[s]: s for s in ids}, ensure_ascii=False, indent=1),
                                           encoding="utf-8")
    log.info("exported %d examples to %s (%s, %s)", len(ids), out_dir, format, link)
    return len(ids)


def export_subsets(*, manifest: str, subsets: str, out_dirs: list[str], format: str = "cc_sbu_align",
                   link: str = "hardlink") -> int:
    """Write subset ``k`` of ``subsets`` (labels/subsets.parquet) as a training set into ``out_dirs[k]``, for every k.

    One job writes every subset so that the subset fine-tunes all become ready at the same moment, which is what a
    cluster scheduler needs to send them out as one job array. Each folder appears atomically. Returns the number
    of examples written.
    """
    n = pd.read_parquet(subsets, columns=["subset"])["subset"].nunique()
    if n != len(out_dirs):
        raise ValueError(f"{subsets} holds {n} subsets but {len(out_dirs)} output folders were given; "
                         "rerun make_subsets after changing labels.n_subsets")
    return sum(export_dataset(manifest=manifest, sample_ids_file=subsets, out_dir=out_dir, format=format, link=link,
                              subset=k) for k, out_dir in enumerate(out_dirs))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe_names(ids: list[str]) -> dict[str, str]:
    """File-name-safe, unique (also case-insensitively) names; unchanged when a sample_id is already safe."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for sid in ids:
        name = _UNSAFE.sub("_", sid).lstrip(".")[:100]
        if name != sid or not name or name.lower() in taken:
            name = f"{name}_{hashlib.sha1(sid.encode()).hexdigest()[:10]}"
        if name.lower() in taken:
            raise ValueError(f"cannot give sample_id {sid!r} a unique file name ({name!r} is taken)")
        taken.add(name.lower())
        names[sid] = name
    return names


def _image_ext(path: str) -> str:
    """The image's extension as the cc_sbu_align importer looks for it; from the content when the name has none."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTS:
        return ext
    with Image.open(path) as img:
        fmt = (img.format or "").lower()
    ext = {"jpeg": ".jpg", "mpo": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}")
    if ext not in IMAGE_EXTS:
        raise ValueError(f"cannot export {path}: format {fmt!r} has no extension the importer reads ({IMAGE_EXTS})")
    return ext


def _place(src: str, dst: Path, link: str) -> None:
    if link == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError as exc:  # EXDEV across filesystems, EPERM/EMLINK on some; a copy is equivalent for training
            log.debug("hard link %s -> %s failed (%s); copying", src, dst, exc)
    shutil.copyfile(src, dst)
