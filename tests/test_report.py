"""Tests for vlselect.report: the final table and every report figure, on synthetic files in the contract formats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlselect import report
from vlselect.cli import main as cli_main
from vlselect.io import write_json, write_npy, write_parquet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUITES = ["toy-vqa", "toy-count", "toy-mc"]
N = 120
N_SUBSETS = 8


def assert_png(path, min_w=500, min_h=300):
    """A real, non-blank PNG of a readable size, and no temporary file left beside it."""
    assert path.exists(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert w >= min_w and h >= min_h, f"{path.name} is only {w}x{h}"
    assert w <= 4000 and h <= 4000, f"{path.name} is {w}x{h}, too big for a report"
    assert pixels.std() > 5, f"{path.name} looks blank"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------------------------------
# synthetic inputs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    ids = [f"toy_{i:05d}" for i in range(N)]

    img_dir = root / "images"
    img_dir.mkdir()
    paths = []
    for i, sid in enumerate(ids):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        im = Image.new("RGB", (64, 64), "white")
        im.paste(colour, (8 + i % 20, 8, 40 + i % 20, 40))
        p = img_dir / f"{sid}.png"
        im.save(p)
        paths.append(str(p))
    answers = [("A red square sits left of a blue circle. " * (1 + i % 6)).strip() for i in range(N)]
    write_parquet(pd.DataFrame({"sample_id": ids, "image_path": paths, "image_sha256": ["x"] * N,
                                "instruction": ["Describe this image in detail."] * N, "answer": answers,
                                "source": ["toy"] * N}), root / "manifest.parquet")

    quality = rng.normal(size=N)
    scores = []
    for name, noise in (("clip", 0.5), ("reward", 1.0), ("length", 2.0)):
        score = quality + noise * rng.normal(size=N)
        status = np.array(["ok"] * N, dtype=object)
        score[:3] = np.nan  # a few failed rows, as a real scorer would report
        status[:3] = "failed"
        path = root / "scores" / f"{name}.parquet"
        write_parquet(pd.DataFrame({"sample_id": ids, "score": score, "status": status}), path,
                      metadata={"indicator": name, "model": "toy"})
        scores.append(str(path))
    gpt = root / "scores" / "gpt.parquet"
    write_parquet(pd.DataFrame({"sample_id": ids, "score": np.full(N, np.nan), "status": ["skipped"] * N}), gpt,
                  metadata={"indicator": "gpt", "model": "gpt-4o-mini"})
    scores.append(str(gpt))

    n_clusters = 5
    cluster = np.arange(N) % n_clusters
    centres = rng.normal(scale=5, size=(n_clusters, 16))
    feats = (centres[cluster] + rng.normal(size=(N, 16))).astype(np.float32)
    write_npy(feats, root / "features" / "image.npy")
    write_parquet(pd.DataFrame({"sample_id": ids}), root / "features" / "ids.parquet")
    write_parquet(pd.DataFrame({"sample_id": ids, "cluster": cluster}), root / "clusters.parquet")

    order = np.argsort(-quality)
    sel_idx, rej_idx = order[:20], order[20:]
    common = {"why": "clip,reward"}
    write_parquet(pd.DataFrame({"sample_id": [ids[i] for i in sel_idx], "rank": np.arange(20),
                                "score": quality[sel_idx], "cluster": cluster[sel_idx], **common}),
                  root / "selected.parquet")
    write_parquet(pd.DataFrame({"sample_id": [ids[i] for i in rej_idx], "score": quality[rej_idx],
                                "cluster": cluster[rej_idx], **common}), root / "rejected.parquet")

    subset = np.arange(N) % N_SUBSETS
    write_parquet(pd.DataFrame({"sample_id": ids, "subset": subset}), root / "subsets.parquet")
    subset_quality = pd.Series(quality).groupby(subset).mean()
    label = 0.5 + 0.1 * subset_quality.to_numpy() + 0.01 * rng.normal(size=N_SUBSETS)
    write_parquet(pd.DataFrame({"subset": np.arange(N_SUBSETS), "label": label}), root / "labels.parquet")
    write_parquet(pd.DataFrame({"sample_id": ids, "quality": quality + 0.3 * rng.normal(size=N)}),
                  root / "predictions.parquet")

    write_json({"comparisons": [
        {"a": "selector_seed0", "b": "full_seed0", "counts": {"win": 18, "tie": 9, "loss": 13}},
        {"a": "selector_seed0", "b": "random_seed0", "counts": {"win": 21, "tie": 5, "loss": 14}},
        {"a": "selector_seed0", "b": "base", "counts": {"win": 30, "tie": 0, "loss": 10}},
    ]}, root / "judge.json")
    write_json({"a": "selector_seed0", "b": "full_seed0", "counts": {"win": 18, "tie": 9, "loss": 13}},
               root / "judge_single.json")

    acc = {}
    eval_paths = []
    models = ["base"] + [f"{m}_seed{s}" for m in ("selector", "random") for s in range(3)] + ["full_seed0"]
    for model in models:
        acc[model] = {s: float(rng.uniform(0.2, 0.8)) for s in SUITES}
        path = root / "eval" / f"{model}.json"
        suites = {s: {"accuracy": a, "n": 100, "items": []} for s, a in acc[model].items()}
        write_json({"suites": suites, "mean": float(np.mean(list(acc[model].values())))}, path)
        eval_paths.append(str(path))
    return {"root": root, "scores": scores, "acc": acc, "evals": eval_paths}


# ---------------------------------------------------------------------------------------------------------------------
# final table


def test_final_table_rows_columns_and_seed_statistics(world):
    root, acc = world["root"], world["acc"]
    md = report.final_table(evals=world["evals"], out_csv=str(root / "table.csv"), out_md=str(root / "table.md"),
                            methods_order=["selector", "full", "random"], suites_order=SUITES)
    table = pd.read_csv(root / "table.csv")
    assert table["model"].tolist() == ["Base model", "selector", "full", "random"]
    assert table["n_seeds"].tolist() == [1, 3, 1, 3]
    expected_cols = ["model", "method", "n_seeds"] + [f"{c}_{k}" for c in SUITES + ["Average"] for k in ("mean", "std")]
    assert sorted(table.columns) == sorted(expected_cols)

    for method in ("selector", "random"):
        row = table.set_index("method").loc[method]
        runs = [acc[f"{method}_seed{s}"] for s in range(3)]
        for suite in SUITES:
            values = [r[suite] for r in runs]
            assert row[f"{suite}_mean"] == pytest.approx(np.mean(values))
            assert row[f"{suite}_std"] == pytest.approx(np.std(values, ddof=1))
        averages = [np.mean([r[s] for s in SUITES]) for r in runs]
        assert row["Average_mean"] == pytest.approx(np.mean(averages))
        assert row["Average_std"] == pytest.approx(np.std(averages, ddof=1))
    base = table.set_index("method").loc["base"]
    assert base["Average_mean"] == pytest.approx(np.mean(list(acc["base"].values())))
    assert math.isnan(base["Average_std"])  # one run: no spread rather than an invented zero

    assert md == (root / "table.md").read_text()
    lines = md.strip().splitlines()
    assert lines[0] == "| Model | Seeds | " + " | ".join(SUITES) + " | Average |"
    assert len(lines) == 2 + 4
    for line, name in zip(lines[2:], ["Base model", "selector", "full", "random"]):
        assert line.startswith(f"| {name} |")
    sel_vqa = [acc[f"selector_seed{s}"]["toy-vqa"] for s in range(3)]
    assert f"{np.mean(sel_vqa):.3f} ± {np.std(sel_vqa, ddof=1):.3f}" in lines[3]
    assert "±" not in lines[2]  # the base model ran once


def test_final_table_leaves_out_a_judged_suite(world, tmp_path):
    """LLaVA-Bench's eval has accuracy None: the judge compares its answers, the table shows the scored suites."""
    evals = []
    for path in world["evals"]:
        data = json.loads(Path(path).read_text())
        data["suites"]["llava-bench"] = {"accuracy": None, "n": 60, "items": []}
        (tmp_path / Path(path).name).write_text(json.dumps(data))
        evals.append(str(tmp_path / Path(path).name))
    report.final_table(evals=evals, out_csv=str(tmp_path / "t.csv"), out_md=str(tmp_path / "t.md"),
                       suites_order=SUITES)
    table = pd.read_csv(tmp_path / "t.csv").set_index("method")
    assert not [c for c in table.columns if c.startswith("llava-bench")]
    assert table.loc["base", "Average_mean"] == pytest.approx(np.mean(list(world["acc"]["base"].values())))


def test_final_table_default_order_is_alphabetical(world):
    root = world["root"]
    md = report.final_table(evals=world["evals"], out_csv=str(root / "t2.csv"), out_md=str(root / "t2.md"))
    assert pd.read_csv(root / "t2.csv")["method"].tolist() == ["base", "full", "random", "selector"]
    assert md.splitlines()[0] == "| Model | Seeds | " + " | ".join(sorted(SUITES)) + " | Average |"


def test_final_table_rejects_inconsistent_inputs(world, tmp_path):
    root = world["root"]
    out = {"out_csv": str(tmp_path / "t.csv"), "out_md": str(tmp_path / "t.md")}
    with pytest.raises(ValueError, match="methods_order"):
        report.final_table(evals=world["evals"], methods_order=["selector", "random"], **out)
    with pytest.raises(ValueError, match="suites_order"):
        report.final_table(evals=world["evals"], suites_order=SUITES + ["toy-caption"], **out)
    odd = tmp_path / "selector_seed9.json"
    write_json({"suites": {"toy-vqa": {"accuracy": 0.5, "n": 1, "items": []}}, "mean": 0.5}, odd)
    with pytest.raises(ValueError, match="same suites"):
        report.final_table(evals=world["evals"] + [str(odd)], **out)
    badname = tmp_path / "selector.json"
    badname.write_text((root / "eval" / "base.json").read_text())
    with pytest.raises(ValueError, match="_seed"):
        report.final_table(evals=[str(badname)], **out)
    assert not (tmp_path / "t.csv").exists()


# ---------------------------------------------------------------------------------------------------------------------
# plots


def test_indicator_plots(world):
    root = world["root"]
    report.plot_indicator_histograms(scores=world["scores"], out=str(root / "png" / "indicators.png"))
    assert_png(root / "png" / "indicators.png")
    report.plot_indicator_correlation(scores=world["scores"], out=str(root / "png" / "correlation.png"))
    assert_png(root / "png" / "correlation.png")


def test_correlation_with_one_scored_indicator_still_draws(world):
    root = world["root"]
    out = root / "png" / "correlation_one.png"
    report.plot_indicator_correlation(scores=world["scores"][:1] + world["scores"][3:], out=str(out))
    assert_png(out, min_w=400)


def test_embedding_map(world):
    root = world["root"]
    out = root / "png" / "embedding_map.png"
    report.plot_embedding_map(features_dir=str(root / "features"), clusters=str(root / "clusters.parquet"),
                              selected=str(root / "selected.parquet"), out=str(out))
    assert_png(out)


def test_embedding_map_refuses_examples_without_cluster(world, tmp_path):
    root = world["root"]
    clusters = pd.read_parquet(root / "clusters.parquet").iloc[1:]
    write_parquet(clusters, tmp_path / "clusters.parquet")
    with pytest.raises(ValueError, match="no cluster"):
        report.plot_embedding_map(features_dir=str(root / "features"), clusters=str(tmp_path / "clusters.parquet"),
                                  selected=str(root / "selected.parquet"), out=str(tmp_path / "m.png"))
    assert not (tmp_path / "m.png").exists()


def test_labels_vs_predicted(world):
    root = world["root"]
    out = root / "png" / "labels.png"
    report.plot_labels_vs_predicted(labels=str(root / "labels.parquet"), subsets=str(root / "subsets.parquet"),
                                    predictions=str(root / "predictions.parquet"), out=str(out))
    assert_png(out)


def test_gallery(world):
    root = world["root"]
    out = root / "png" / "gallery.png"
    report.plot_gallery(manifest=str(root / "manifest.parquet"), selected=str(root / "selected.parquet"),
                        rejected=str(root / "rejected.parquet"), out=str(out), n=8)
    assert_png(out, min_w=800, min_h=800)


def test_gallery_without_rejects(world, tmp_path):
    """The 'full' method rejects nothing; its gallery shows the picks alone."""
    root = world["root"]
    empty = pd.read_parquet(root / "rejected.parquet").iloc[:0]
    write_parquet(empty, tmp_path / "rejected.parquet")
    out = tmp_path / "gallery.png"
    report.plot_gallery(manifest=str(root / "manifest.parquet"), selected=str(root / "selected.parquet"),
                        rejected=str(tmp_path / "rejected.parquet"), out=str(out), n=3)
    assert_png(out)


@pytest.mark.parametrize("name", ["judge.json", "judge_single.json"])
def test_judge_both_layouts(world, name):
    root = world["root"]
    out = root / "png" / f"{name}.png"
    report.plot_judge(judge=str(root / name), out=str(out))
    assert_png(out, min_h=200)


def test_judge_rejects_missing_counts(tmp_path):
    path = tmp_path / "judge.json"
    path.write_text(json.dumps({"comparisons": [{"a": "x", "b": "y", "counts": {"win": 1}}]}))
    with pytest.raises(ValueError, match="win, tie, loss"):
        report.plot_judge(judge=str(path), out=str(tmp_path / "j.png"))


def test_final_table_plot(world):
    root = world["root"]
    report.final_table(evals=world["evals"], out_csv=str(root / "t3.csv"), out_md=str(root / "t3.md"))
    out = root / "png" / "final_table.png"
    report.plot_final_table(table_csv=str(root / "t3.csv"), out=str(out))
    assert_png(out)


def test_cli_runs_a_plot(world):
    """The rules call the plots through the CLI, with list options such as --scores."""
    root = world["root"]
    out = root / "png" / "cli_correlation.png"
    assert cli_main(["plot-correlation", "--scores", *world["scores"], "--out", str(out)]) == 0
    assert_png(out)
