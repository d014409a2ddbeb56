"""Import (all four layouts, quarantine with exact reasons, the bad-share stop) and export (round trips)."""

import json
import os
import shutil
import uuid
from pathlib import Path

import pandas as pd
import pytest

import badinputs as bad
from vlselect.dataset import export_dataset, import_dataset
from vlselect.io import read_parquet_metadata, sha256_file, write_parquet

INSTRUCTION = "Describe this image in detail."


def _import(root, out, **kwargs):
    kwargs.setdefault("format", "cc_sbu_align")
    import_dataset(root=str(root), out_manifest=str(out / "manifest.parquet"),
                   out_quarantine=str(out / "quarantine.parquet"), **kwargs)
    return pd.read_parquet(out / "manifest.parquet"), pd.read_parquet(out / "quarantine.parquet")


def test_bad_corpus_gets_exact_reasons_and_good_ones_pass(tmp_path):
    root = tmp_path / "data set é"
    expected = bad.build_bad_cc_sbu_align(root, tmp_path / "outside")
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        _import(root, out)  # far more than 5% is bad: both files are written, then it stops
    message = str(err.value)
    assert "dataset.max_bad_fraction=0.05" in message and str(out / "quarantine.parquet") in message
    assert "65.52%" in message  # 19 of 29
    manifest, quarantine = _import(root, tmp_path / "out2", max_bad_fraction=1.0)
    assert quarantine[["sample_id", "reason"]].values.tolist() == [[k, v] for k, v in expected if v]
    assert manifest["sample_id"].tolist() == [k for k, v in expected if v is None]
    assert manifest["sample_id"].is_unique and (manifest["instruction"] == INSTRUCTION).all()
    assert quarantine["detail"].str.len().gt(20).all()
    for row in manifest.itertuples():
        assert os.path.isabs(row.image_path) and sha256_file(row.image_path) == row.image_sha256
        assert row.source == "cc_sbu_align:filter_cap.json"
    meta = read_parquet_metadata(tmp_path / "out2" / "manifest.parquet")
    assert meta["n_total"] == len(expected) and meta["n_kept"] == len(manifest)
    assert meta["quarantined"]["unreadable_image"] == 4


def test_toy_format_reads_cc_sbu_align_layout(tmp_path):
    expected = bad.build_broken_cc_sbu_align(tmp_path / "toy", tmp_path / "outside", n=20, n_broken=0)
    manifest, quarantine = _import(tmp_path / "toy", tmp_path / "out", format="toy")
    assert expected == {} and quarantine.empty and len(manifest) == 20 and (manifest["source"] == "toy").all()


def test_outside_root_allowed_when_configured(tmp_path):
    root = tmp_path / "root"
    bad.build_bad_cc_sbu_align(root, tmp_path / "outside")
    manifest, quarantine = _import(root, tmp_path / "out", max_bad_fraction=1.0, allow_outside_root=True)
    assert "escape" in set(manifest["sample_id"]) and "outside_root" not in set(quarantine["reason"])
    assert manifest.set_index("sample_id").loc["escape", "image_path"] == str((tmp_path / "outside" / "outside.jpg"))


def _llava_root(tmp_path):
    root = tmp_path / "llava root"
    for k in range(4):
        bad.write(root / "imgs" / f"im {k}.jpg", bad.good_jpeg(k))
    items = [
        {"id": "a", "image": "imgs/im 0.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "Shapes."},
            {"from": "human", "value": "Which colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": 7, "image": "imgs/im 1.jpg", "conversations": [
            {"from": "human", "value": "Count the shapes.\n<image>"}, {"from": "gpt", "value": "Three."}]},
        {"id": "nogpt", "image": "imgs/im 2.jpg", "conversations": [{"from": "human", "value": "<image>\nHi"}]},
        {"id": "noimage", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "escape", "image": "../elsewhere.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A."}]},
    ]
    bad.write(root / "data.json", json.dumps(items).encode())
    return root


def test_llava_first_turn(tmp_path):
    manifest, quarantine = _import(_llava_root(tmp_path), tmp_path / "out", format="llava", max_bad_fraction=1.0)
    assert manifest[["sample_id", "instruction", "answer"]].values.tolist() == [
        ["a", "What is shown?", "Shapes."], ["7", "Count the shapes.", "Three."]]
    assert dict(zip(quarantine["sample_id"], quarantine["reason"])) == {
        "nogpt": "no_answer_turn", "noimage": "missing_field", "escape": "outside_root"}
    assert (manifest["source"] == "llava:data.json").all()


def test_llava_all_turns(tmp_path):
    manifest, _ = _import(_llava_root(tmp_path), tmp_path / "out", format="llava", llava_turns="all",
                          annotation_file="data.json", max_bad_fraction=1.0)
    assert manifest[["sample_id", "instruction", "answer"]].values.tolist() == [
        ["a#0", "What is shown?", "Shapes."], ["a#1", "Which colour?", "Red."], ["7#0", "Count the shapes.", "Three."]]
    assert manifest["image_sha256"].iloc[0] == manifest["image_sha256"].iloc[1]


def test_llava_conversation_kept_whole_through_import_and_export(tmp_path):
    manifest, _ = _import(_llava_root(tmp_path), tmp_path / "out", format="llava", llava_turns="conversation",
                          annotation_file="data.json", max_bad_fraction=1.0)
    # the scorers see the first question and every answer; the conversation itself travels in `turns`
    assert manifest[["sample_id", "instruction", "answer"]].values.tolist() == [
        ["a", "What is shown?", "Shapes.\nRed."], ["7", "Count the shapes.", "Three."]]
    assert json.loads(manifest["turns"].iloc[0]) == [["What is shown?", "Shapes."], ["Which colour?", "Red."]]
    assert manifest["turns"].iloc[1] == ""
    ids = tmp_path / "ids.parquet"
    pd.DataFrame({"sample_id": ["a", "7"]}).to_parquet(ids)
    export_dataset(manifest=str(tmp_path / "out" / "manifest.parquet"), sample_ids_file=str(ids),
                   out_dir=str(tmp_path / "export"), format="llava")
    exported = json.loads((tmp_path / "export" / "llava.json").read_text())
    assert [[t["from"], t["value"]] for t in exported[0]["conversations"]] == [
        ["human", "<image>\nWhat is shown?"], ["gpt", "Shapes."], ["human", "Which colour?"], ["gpt", "Red."]]
    assert len(exported[1]["conversations"]) == 2


def test_whole_file_errors_name_file_and_position(tmp_path):
    root = tmp_path / "r"
    bad.write(root / "filter_cap.json", b'{"annotations": []}\n{"trailing": 1}')
    with pytest.raises(ValueError, match=r"filter_cap\.json is not valid JSON: Extra data at line 2 column 1"):
        _import(root, tmp_path / "out")
    bad.write(root / "filter_cap.json", '{"annotations": [{"image_id": "x", "caption": "caf\u00e9"}]}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"filter_cap\.json is not valid UTF-8 \(byte offset 50"):
        _import(root, tmp_path / "out")
    bad.write(root / "filter_cap.json", b'{"annotations": []}')
    with pytest.raises(ValueError, match="holds no examples"):
        _import(root, tmp_path / "out")
    bad.write(root / "filter_cap.json", b'{"annotations": [{"image_id": "gone", "caption": "x"}]}')
    with pytest.raises(ValueError, match="all 1 examples .* were quarantined"):
        _import(root, tmp_path / "out", max_bad_fraction=1.0)


def test_jsonl_per_line_problems(tmp_path):
    root = tmp_path / "j"
    bad.write(root / "pics" / "ü.png", bad.image_bytes(bad.random_image(1), "PNG"))
    bad.write(root / "pics" / "b.jpg", bad.good_jpeg(2))
    lines = [
        json.dumps({"key": "u1", "img": "pics/ü.png", "text": "A picture.", "q": "What?"}, ensure_ascii=False).encode(),
        json.dumps({"key": "u2", "img": "pics/b.jpg", "text": "Another.", "q": "Why?"}).encode(),
        b'{"key": "u3", "img": "pics/b.jpg", "text": "caf\xe9", "q": "x"}',  # latin-1 byte
        b'{"key": "u4", "img": "pics/b.jpg", "text": }',
        json.dumps({"key": "u5", "img": "pics/b.jpg", "q": "x"}).encode(),
        json.dumps({"key": "u6", "img": "pics/b.jpg", "text": 5, "q": "x"}).encode(),
        b"",
    ]
    bad.write(root / "train.jsonl", b"\n".join(lines))
    fields = {"sample_id": "key", "image": "img", "answer": "text", "instruction": "q"}
    manifest, quarantine = _import(root, tmp_path / "out", format="jsonl", fields=fields, max_bad_fraction=1.0)
    assert manifest[["sample_id", "instruction", "answer"]].values.tolist() == [
        ["u1", "What?", "A picture."], ["u2", "Why?", "Another."]]
    assert dict(zip(quarantine["sample_id"], quarantine["reason"])) == {
        "train.jsonl:3": "invalid_utf8", "train.jsonl:4": "invalid_json", "u5": "missing_field", "u6": "invalid_field"}
    no_instruction = {k: v for k, v in fields.items() if k != "instruction"}
    manifest, _ = _import(root, tmp_path / "out2", format="jsonl", fields=no_instruction, max_bad_fraction=1.0,
                          instruction="Say what you see.")
    assert (manifest["instruction"] == "Say what you see.").all()


def test_parquet_with_field_mapping(tmp_path):
    root = tmp_path / "p"
    for k in range(3):
        bad.write(root / f"{k}.jpg", bad.good_jpeg(k))
    df = pd.DataFrame({"uid": [1, 2, 3, 4], "path": ["0.jpg", "1.jpg", None, "2.jpg"],
                       "caption": ["one", "two", "three", "two"]})
    write_parquet(df, root / "d.parquet")
    fields = {"sample_id": "uid", "image": "path", "answer": "caption"}
    manifest, quarantine = _import(root, tmp_path / "out", format="parquet", fields=fields, max_bad_fraction=0.3)
    assert manifest[["sample_id", "answer", "instruction"]].values.tolist() == [
        ["1", "one", INSTRUCTION], ["2", "two", INSTRUCTION], ["4", "two", INSTRUCTION]]
    assert quarantine[["sample_id", "reason"]].values.tolist() == [["3", "missing_field"]]
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer'\]"):
        _import(root, tmp_path / "out", format="parquet", fields={**fields, "answer": "answer"})


def _roundtrip_source(tmp_path):
    """A manifest with awkward ids (unsafe characters, case clash, non-ASCII) and mixed image formats."""
    root = tmp_path / "src"
    rows = []
    specs = [("a/b#1", ".jpg", bad.good_jpeg(1)), ("A", ".png", bad.png16(2)), ("a", ".gif", bad.animated_gif(3)),
             ("..hidden", ".jpg", bad.exif_rotated_jpeg(4)), ("日本 語", ".jpg", bad.cmyk_jpeg(5)),
             ("plain", ".jpg", bad.good_jpeg(6))]
    for k, (sid, ext, data) in enumerate(specs):
        path = bad.write(root / f"f{k}{ext}", data)
        rows.append({"key": sid, "img": path.name, "text": f"Answer {k}.\nSecond line.", "q": f"Question {k}?"})
    bad.write(root / "d.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    out = tmp_path / "imported"
    manifest, quarantine = _import(root, out, format="jsonl", max_bad_fraction=0.0,
                                   fields={"sample_id": "key", "image": "img", "answer": "text", "instruction": "q"})
    assert quarantine.empty and len(manifest) == len(specs)
    ids = [s for s in manifest["sample_id"].iloc[::-1] if s != "plain"]  # a subset, in a different order
    write_parquet(pd.DataFrame({"sample_id": ids}), out / "ids.parquet")
    return manifest.set_index("sample_id"), list(ids), out


@pytest.mark.parametrize("format", ["cc_sbu_align", "llava"])
def test_export_roundtrip(tmp_path, format):
    manifest, ids, out = _roundtrip_source(tmp_path)
    export = tmp_path / "export"
    n = export_dataset(manifest=str(out / "manifest.parquet"), sample_ids_file=str(out / "ids.parquet"),
                       out_dir=str(export), format=format)
    assert n == len(ids)
    back, quarantine = _import(export, tmp_path / "back", format=format, max_bad_fraction=0.0)
    assert quarantine.empty
    if format == "cc_sbu_align":
        names = json.loads((export / "sample_ids.json").read_text())  # image_id -> sample_id
        back_ids = [names[s] for s in back["sample_id"]]
    else:
        back_ids = list(back["sample_id"])
    assert back_ids == ids  # order kept
    expected_instruction = manifest.loc[ids, "instruction"] if format == "llava" else [INSTRUCTION] * len(ids)
    assert back["answer"].tolist() == manifest.loc[ids, "answer"].tolist()
    assert back["instruction"].tolist() == list(expected_instruction)
    assert back["image_sha256"].tolist() == manifest.loc[ids, "image_sha256"].tolist()
    for path, sid in zip(back["image_path"], back_ids):  # hard links, not copies
        assert os.path.samefile(path, manifest.loc[sid, "image_path"])
        assert os.path.basename(path).split(".")[0] and not os.path.basename(path).startswith(".")


def test_export_copy_and_errors(tmp_path):
    manifest, ids, out = _roundtrip_source(tmp_path)
    export = tmp_path / "export"
    export_dataset(manifest=str(out / "manifest.parquet"), sample_ids_file=str(out / "ids.parquet"),
                   out_dir=str(export), link="copy")
    for path in (export / "image").iterdir():
        assert path.stat().st_nlink == 1
    write_parquet(pd.DataFrame({"sample_id": ids + ["nope"]}), out / "bad_ids.parquet")
    with pytest.raises(ValueError, match="not in"):
        export_dataset(manifest=str(out / "manifest.parquet"), sample_ids_file=str(out / "bad_ids.parquet"),
                       out_dir=str(export))
    assert len(list((export / "image").iterdir())) == len(ids)  # the failed export left the old one intact


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="needs a writable /dev/shm")
def test_export_copies_across_filesystems(tmp_path):
    manifest, ids, out = _roundtrip_source(tmp_path)
    export = Path("/dev/shm") / f"vlselect-test-{uuid.uuid4().hex}"
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test folder")
    try:
        export_dataset(manifest=str(out / "manifest.parquet"), sample_ids_file=str(out / "ids.parquet"),
                       out_dir=str(export), format="llava")  # hard links are impossible here: copies instead
        back, _ = _import(export, tmp_path / "back", format="llava", max_bad_fraction=0.0)
        assert back["image_sha256"].tolist() == manifest.loc[ids, "image_sha256"].tolist()
        assert all(os.stat(p).st_dev != os.stat(tmp_path).st_dev for p in back["image_path"])
    finally:
        shutil.rmtree(export, ignore_errors=True)


def test_small_broken_dataset_quarantines_exactly_the_broken(tmp_path):
    n, n_broken = 300, 15
    expected = bad.build_broken_cc_sbu_align(tmp_path / "root", tmp_path / "outside", n=n, n_broken=n_broken, seed=1)
    assert len(expected) == n_broken and set(expected.values()) == set(bad.BREAKS)
    manifest, quarantine = _import(tmp_path / "root", tmp_path / "out", max_bad_fraction=0.06)
    assert dict(zip(quarantine["sample_id"], quarantine["reason"])) == expected
    assert len(manifest) == n - n_broken and manifest["sample_id"].is_unique
    with pytest.raises(ValueError, match="max_bad_fraction=0.04"):
        _import(tmp_path / "root", tmp_path / "out2", max_bad_fraction=0.04)
    assert (tmp_path / "out2" / "quarantine.parquet").exists() and (tmp_path / "out2" / "manifest.parquet").exists()


def test_tripped_import_keeps_the_quarantine_outside_its_outputs(tmp_path):
    expected = bad.build_broken_cc_sbu_align(tmp_path / "root", tmp_path / "outside", n=30, n_broken=6)
    out, copy = tmp_path / "out", tmp_path / "logs" / "quarantine_rejected.parquet"
    with pytest.raises(ValueError) as err:
        _import(tmp_path / "root", out, max_bad_fraction=0.05, quarantine_copy=str(copy))
    assert f"Inspect {copy} " in str(err.value)
    shutil.rmtree(out)  # what a workflow does with a failed job's outputs
    rejected = pd.read_parquet(copy)
    assert dict(zip(rejected["sample_id"], rejected["reason"])) == expected
    # a later import that passes removes the copy, so one on disk always describes the last, failed import
    _import(tmp_path / "root", out, max_bad_fraction=0.5, quarantine_copy=str(copy))
    assert not copy.exists()


def test_tripped_import_through_snakemake_leaves_the_quarantine_in_logs(tmp_path):
    """Snakemake deletes the failed import's outputs; the rule's quarantine copy under logs/ survives them."""
    from workflow_helpers import snakemake, tiny_config, write_config

    expected = bad.build_broken_cc_sbu_align(tmp_path / "data", tmp_path / "outside", n=30, n_broken=6)
    models = tmp_path / "models"  # named only: importing needs none of them
    config = tiny_config(**{"results": str(tmp_path / "results"), "dataset.format": "cc_sbu_align",
                            "dataset.root": str(tmp_path / "data"), "models.clip.pretrained": str(models / "clip"),
                            "models.reward.path": str(models / "reward"), "models.vlm.path": str(models / "vlm"),
                            "evaluate.suite_root": str(tmp_path / "suites"), "judge.backend": "none"})
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "--cores", "1", str(tmp_path / "results" / "manifest.parquet"), check=False)
    assert result.returncode != 0
    results = tmp_path / "results"
    assert not (results / "quarantine.parquet").exists() and not (results / "manifest.parquet").exists()
    copy = results / "logs" / "quarantine_rejected.parquet"
    assert f"Inspect {copy} " in (results / "logs" / "import_dataset.log").read_text()
    rejected = pd.read_parquet(copy)
    assert dict(zip(rejected["sample_id"], rejected["reason"])) == expected
