"""Results table and report figures.

``final_table`` turns the final evaluations into the paper's comparison table (rows = models, columns = suites
and their average; a method trained with several seeds is reported as mean ± std over its seeds). Each
``plot_*`` function reads contract files and writes one PNG, atomically, for the Snakemake report (one CLI
subcommand and one rule per plot).

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no pyplot global state and
no GUI backend, so plotting works on headless cluster nodes and never leaks figures between calls.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from vlselect.io import atomic_path, read_json, read_parquet_metadata, write_text

log = logging.getLogger(__name__)

BASE = "base"
BASE_LABEL = "Base model"
AVERAGE = "Average"
DPI = 110
# Big enough to stay readable when the HTML report scales a figure down to its column width.
FONT = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 10}
_SEED_RE = re.compile(r"^(?P<method>.+)_seed(?P<seed>\d+)$")


# --------------------------------------------------------------------------------------------------------------------
# Final table


def final_table(
    *,
    evals: list[str],
    out_csv: str,
    out_md: str,
    methods_order: list[str] | None = None,
    suites_order: list[str] | None = None,
) -> str:
    """Build the comparison table from ``final/eval/{model}.json`` files; write CSV and Markdown, return the Markdown.

    ``model`` (the file name's stem) is ``base`` or ``{method}_seed{s}``. Rows: the base model first (labelled
    "Base model"), then one row per method in ``methods_order`` (default: alphabetical). Columns: each suite's
    accuracy, in ``suites_order`` (default: alphabetical; pass config ``final.suites`` for the paper's order), and
    "Average", the mean of the suite accuracies. For a method with several seeds, each seed's accuracies
    are averaged over seeds and the spread is the sample standard deviation (ddof=1); a single run has no std (NaN in
    the CSV, a bare number in the Markdown), because inventing a zero spread would overstate certainty.

    CSV columns: model, method, n_seeds, then ``{suite}_mean``, ``{suite}_std`` per suite and ``Average_mean``,
    ``Average_std``. Markdown cells read "0.612 ± 0.013".
    """
    if not evals:
        raise ValueError("final_table needs at least one evaluation file (final/eval/{model}.json); got none")
    runs = _load_runs(evals)
    suites = _check_order(_common_suites(runs), suites_order, "suites")
    order = _check_order(sorted({r["method"] for r in runs.values()} - {BASE}), methods_order, "methods")
    rows = []
    for method in ([BASE] if any(r["method"] == BASE for r in runs.values()) else []) + order:
        seeds = sorted((r for r in runs.values() if r["method"] == method), key=lambda r: r["seed"])
        acc = pd.DataFrame([[r["acc"][s] for s in suites] for r in seeds], columns=suites)
        acc[AVERAGE] = acc[suites].mean(axis=1)  # per run first, so the average's std is the spread of run averages
        row = {"model": BASE_LABEL if method == BASE else method, "method": method, "n_seeds": len(seeds)}
        for col in suites + [AVERAGE]:
            row[f"{col}_mean"] = float(acc[col].mean())
            row[f"{col}_std"] = float(acc[col].std(ddof=1)) if len(seeds) > 1 else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(out_csv, ".csv") as tmp:
        table.to_csv(tmp, index=False)
    markdown = _markdown(table, suites + [AVERAGE])
    write_text(markdown, out_md)
    log.info("final table: %d models x %d suites -> %s, %s", len(table), len(suites), out_csv, out_md)
    return markdown


def _load_runs(evals: list[str]) -> dict[str, dict]:
    runs: dict[str, dict] = {}
    for path in evals:
        name = Path(path).stem
        if name in runs:
            raise ValueError(f"two evaluation files share the model name {name!r} ({runs[name]['path']} and {path})")
        if name == BASE:
            method, seed = BASE, 0
        else:
            match = _SEED_RE.match(name)
            if not match:
                raise ValueError(
                    f"cannot tell the model of {path}: its name must be 'base.json' or '{{method}}_seed{{s}}.json'"
                )
            method, seed = match["method"], int(match["seed"])
        data = read_json(path)
        if "suites" not in data or not data["suites"]:
            raise ValueError(f"{path} has no 'suites' results; re-run the evaluation that writes it")
        # a judged suite (accuracy None) has no score of its own: the judge compares its answers
        acc = {suite: float(res["accuracy"]) for suite, res in data["suites"].items() if res["accuracy"] is not None}
        runs[name] = {"path": path, "method": method, "seed": seed, "acc": acc}
    return runs


def _common_suites(runs: dict[str, dict]) -> list[str]:
    """Suites in alphabetical order; every run must cover the same ones or the averages would not be comparable."""
    first = next(iter(runs.values()))
    suites = sorted(first["acc"])
    for r in runs.values():
        if set(r["acc"]) != set(suites):
            raise ValueError(
                f"{r['path']} covers suites {sorted(r['acc'])} but {first['path']} covers {sorted(suites)}; "
                "evaluate every model on the same suites"
            )
    return suites


def _check_order(found: list[str], wanted: list[str] | None, what: str) -> list[str]:
    """Return ``wanted`` (or ``found`` when None) after checking it names each evaluated item exactly once."""
    if wanted is None:
        return found
    order = [m for m in wanted if m != BASE]  # the base model always comes first, listed or not
    missing, extra = set(order) - set(found), set(found) - set(order)
    if missing or extra or len(set(order)) != len(order):
        raise ValueError(
            f"{what}_order {wanted} does not match the evaluated {what} {found}: "
            f"no evaluation for {sorted(missing)}, not ordered {sorted(extra)}; list each evaluated one once"
        )
    return order


def _cell(mean: float, std: float) -> str:
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _markdown(table: pd.DataFrame, columns: list[str]) -> str:
    header = ["Model", "Seeds"] + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for _, row in table.iterrows():
        cells = [str(row["model"]), str(int(row["n_seeds"]))]
        cells += [_cell(row[f"{c}_mean"], row[f"{c}_std"]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Plots


def _styled(fn):
    """Draw under the report's font sizes without changing matplotlib's global settings for the caller."""

    @functools.wraps(fn)
    def wrapper(**kwargs):
        with matplotlib.rc_context(FONT):
            return fn(**kwargs)

    return wrapper


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, out: str) -> None:
    # The temporary file ends in ".tmp", so the format must be named rather than guessed from the extension.
    with atomic_path(out, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    log.info("wrote %s", out)


def _load_scores(path: str) -> tuple[str, pd.DataFrame]:
    df = pd.read_parquet(path)
    for col in ("sample_id", "score", "status"):
        if col not in df.columns:
            raise ValueError(f"{path} lacks the column {col!r}; scores files hold sample_id, score, status")
    name = read_parquet_metadata(path).get("indicator") or Path(path).stem
    return name, df


@_styled
def plot_indicator_histograms(*, scores: list[str], out: str) -> None:
    """One histogram panel per indicator file (scores/{indicator}.parquet), with its median and status counts.

    An indicator with no finite score (skipped, e.g. GPT without an endpoint, or all failed) gets a panel saying
    "not scored" so the reader sees that it was absent rather than wonder where it went.
    """
    if not scores:
        raise ValueError("plot_indicator_histograms needs at least one scores parquet; got none")
    n = len(scores)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig = _figure(6.0 * ncols, 4.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, path in zip(axes, scores):
        name, df = _load_scores(path)
        values = df["score"].to_numpy(dtype=float)
        ok = values[np.isfinite(values)]
        status = ", ".join(f"{k} {v}" for k, v in df["status"].value_counts().sort_index().items())
        ax.set_title(f"{name} ({status})")
        if ok.size == 0:
            ax.text(0.5, 0.5, f"{name}: not scored", ha="center", va="center", fontsize=14, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.hist(ok, bins=40, color="tab:blue", alpha=0.8, label=f"scored examples (n={ok.size})")
        ax.axvline(np.median(ok), color="black", linestyle="--", label=f"median {np.median(ok):.3g}")
        ax.set_xlabel(f"{name} score")
        ax.set_ylabel("examples")
        ax.legend(loc="best")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("Distribution of each quality indicator over the dataset")
    _save(fig, out)


@_styled
def plot_indicator_correlation(*, scores: list[str], out: str) -> None:
    """Heatmap of the Spearman rank correlation between indicators, each cell labelled with its value.

    Scores are joined on sample_id; each pair uses the examples both indicators scored. Indicators without any score
    are left out and named in the title.
    """
    if not scores:
        raise ValueError("plot_indicator_correlation needs at least one scores parquet; got none")
    columns, unscored = {}, []
    for path in scores:
        name, df = _load_scores(path)
        series = df.set_index("sample_id")["score"].astype(float)
        if series.notna().any():
            columns[name] = series
        else:
            unscored.append(name)
    fig = _figure(6.5, 5.5)
    ax = fig.subplots()
    title = "Spearman correlation between indicators"
    if unscored:
        title += f"\n(not scored: {', '.join(unscored)})"
    ax.set_title(title)
    if len(columns) < 2:
        ax.text(0.5, 0.5, "fewer than two scored indicators:\nnothing to correlate", ha="center", va="center",
                fontsize=13, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        _save(fig, out)
        return
    corr = pd.DataFrame(columns).corr(method="spearman")
    names = list(corr.columns)
    im = ax.imshow(corr.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("indicator")
    ax.set_ylabel("indicator")
    for i in range(len(names)):
        for j in range(len(names)):
            value = corr.iat[i, j]
            ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=12,
                    color="white" if abs(value) > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="Spearman ρ")
    _save(fig, out)


@_styled
def plot_embedding_map(*, features_dir: str, clusters: str, selected: str, out: str, seed: int = 0) -> None:
    """2-D PCA of the image embeddings (features/image.npy), coloured by spectral cluster; selected examples as stars.

    PCA rather than t-SNE: it is deterministic, takes a second on thousands of points, and keeps global distances,
    so the picture shows whether the selection covers every cluster.
    """
    from sklearn.decomposition import PCA

    feats = np.load(Path(features_dir) / "image.npy")
    ids = pd.read_parquet(Path(features_dir) / "ids.parquet")["sample_id"].astype(str).tolist()
    if len(ids) != len(feats):
        raise ValueError(f"{features_dir}: image.npy has {len(feats)} rows but ids.parquet {len(ids)}; re-run embed")
    cluster_of = pd.read_parquet(clusters).set_index("sample_id")["cluster"]
    missing = [i for i in ids if i not in cluster_of.index]
    if missing:
        raise ValueError(f"{clusters} has no cluster for {len(missing)} embedded examples (e.g. {missing[0]!r}); "
                         "re-run spectral_clusters on the same manifest")
    picked = set(pd.read_parquet(selected)["sample_id"].astype(str))
    unknown = picked - set(ids)
    if unknown:
        raise ValueError(f"{selected} names {len(unknown)} examples without embeddings (e.g. {sorted(unknown)[0]!r})")
    xy = PCA(n_components=2, random_state=seed).fit_transform(feats.astype(np.float64))
    cl = cluster_of.loc[ids].to_numpy()
    is_sel = np.array([i in picked for i in ids])
    labels = sorted(np.unique(cl))
    cmap = _colours(len(labels))
    fig = _figure(9.5, 7.0)
    ax = fig.subplots()
    for colour, c in zip(cmap, labels):
        m = cl == c
        ax.scatter(xy[m, 0], xy[m, 1], s=10, color=colour, alpha=0.5, label=f"cluster {c} (n={m.sum()})")
    ax.scatter(xy[is_sel, 0], xy[is_sel, 1], s=110, marker="*", c=[cmap[labels.index(c)] for c in cl[is_sel]],
               edgecolors="black", linewidths=0.8, zorder=3)
    # The stars take their cluster's colour, so the legend shows a neutral one.
    ax.scatter([], [], s=110, marker="*", color="white", edgecolors="black", label=f"selected (n={is_sel.sum()})")
    ax.set_title(f"Image embeddings (PCA), coloured by spectral cluster; stars = picked by "
                 f"'{Path(selected).parent.name}'")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=1.5, ncol=1 if len(labels) <= 16 else 2)
    _save(fig, out)


def _colours(n: int) -> list:
    name = "tab10" if n <= 10 else "tab20"
    cmap = matplotlib.colormaps[name]
    return [cmap(i % cmap.N) for i in range(n)]


@_styled
def plot_labels_vs_predicted(*, labels: str, subsets: str, predictions: str, out: str) -> None:
    """Each subset's genuine label (mean accuracy after fine-tuning on it) against the mean predicted quality of its
    members; the title gives Spearman's ρ, i.e. how well the selector ranks subsets. A label averaged over several
    fine-tune seeds gets an error bar of its standard error (seed sd / sqrt(seeds))."""
    from scipy.stats import spearmanr

    lab = pd.read_parquet(labels)
    lab["stderr"] = lab["seed_sd"] / np.sqrt(lab["n_seeds"]) if "seed_sd" in lab else np.nan
    lab = lab[["subset", "label", "stderr"]]
    sub = pd.read_parquet(subsets)[["sample_id", "subset"]]
    pred = pd.read_parquet(predictions)[["sample_id", "quality"]]
    members = sub.merge(pred, on="sample_id", how="left")
    if members["quality"].isna().any():
        n = int(members["quality"].isna().sum())
        raise ValueError(f"{predictions} has no prediction for {n} subset members; re-run predict on the manifest")
    per_subset = members.groupby("subset")["quality"].mean().rename("predicted").reset_index()
    df = lab.merge(per_subset, on="subset", how="inner")
    if len(df) < 2:
        raise ValueError(f"only {len(df)} subsets appear in both {labels} and {subsets}; need at least two to compare")
    rho = spearmanr(df["predicted"], df["label"]).statistic
    fig = _figure(7.5, 6.0)
    ax = fig.subplots()
    if df["stderr"].notna().any():
        ax.errorbar(df["predicted"], df["label"], yerr=df["stderr"].fillna(0), fmt="none", ecolor="gray", alpha=0.7,
                    label="± standard error over seeds")
    ax.scatter(df["predicted"], df["label"], s=45, color="tab:blue", edgecolors="black", label=f"subset (n={len(df)})")
    for _, r in df.iterrows():
        ax.annotate(str(int(r["subset"])), (r["predicted"], r["label"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=9, color="dimgray")
    if df["predicted"].nunique() > 1:
        slope, intercept = np.polyfit(df["predicted"], df["label"], 1)
        xs = np.linspace(df["predicted"].min(), df["predicted"].max(), 50)
        ax.plot(xs, slope * xs + intercept, color="tab:red", linestyle="--", label="least-squares line")
    ax.set_title(f"Subset label vs mean predicted quality (Spearman ρ = {rho:.2f})")
    ax.set_xlabel("mean predicted quality of the subset's examples")
    ax.set_ylabel("label: mean suite accuracy after fine-tuning")
    ax.legend(loc="best")
    _save(fig, out)


@_styled
def plot_gallery(*, manifest: str, selected: str, rejected: str, out: str, n: int = 8) -> None:
    """A grid of the ``n`` top-ranked selected examples (green frame) and the ``n`` lowest-scored rejected ones (red
    frame): image thumbnail, score, and the start of the answer, so a reader can judge the selection by eye."""
    from PIL import Image

    if n < 1:
        raise ValueError(f"plot_gallery needs n >= 1, got {n}")
    man = pd.read_parquet(manifest).set_index("sample_id")
    sel = pd.read_parquet(selected)
    sel = sel.sort_values("rank") if "rank" in sel.columns else sel.sort_values("score", ascending=False)
    rej = pd.read_parquet(rejected).sort_values("score", ascending=True, na_position="last")
    groups = [("selected", "tab:green", sel.head(n)), ("rejected", "tab:red", rej.head(n))]
    ncols = min(n, 4)
    rows_per_group = math.ceil(n / ncols)
    n_rows = 2 * rows_per_group
    fig = _figure(3.2 * ncols, n_rows * 4.6 + 0.8)  # constrained layout leaves room for each answer's lines
    fig.get_layout_engine().set(h_pad=0.15)  # keeps a row's titles clear of the answer text above them
    axes = fig.subplots(n_rows, ncols, squeeze=False)
    for g, (kind, colour, part) in enumerate(groups):
        for k, (_, row) in enumerate(part.iterrows()):
            sid = row["sample_id"]
            if sid not in man.index:
                raise ValueError(f"{sid!r} from the selection is not in {manifest}; were they built from one manifest?")
            item = man.loc[sid]
            ax = axes[g * rows_per_group + k // ncols, k % ncols]
            with Image.open(item["image_path"]) as im:
                ax.imshow(im.convert("RGB"))
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            ax.set_xticks([])
            ax.set_yticks([])
            score = "n/a" if pd.isna(row["score"]) else f"{row['score']:.3f}"
            ax.set_title(f"{kind} #{k + 1}: {sid}\nscore {score}", fontsize=11, color=colour)
            ax.set_xlabel(_snippet(str(item["answer"])), fontsize=10, multialignment="left")
        for ax in axes[g * rows_per_group:(g + 1) * rows_per_group].ravel()[len(part):]:
            ax.set_visible(False)
        if part.empty:  # e.g. the 'full' method rejects nothing: say so instead of leaving a blank band
            note = axes[g * rows_per_group, 0]
            note.set_visible(True)
            note.axis("off")
            note.text(0, 0.5, f"no {kind} examples", fontsize=14, color=colour, transform=note.transAxes)
    fig.suptitle(f"Top-ranked selected (green, {len(groups[0][2])} shown) and lowest-scored rejected "
                 f"(red, {len(groups[1][2])} shown) examples", fontsize=14)
    fig.legend(handles=[Patch(edgecolor="tab:green", facecolor="none", linewidth=3, label="selected"),
                        Patch(edgecolor="tab:red", facecolor="none", linewidth=3, label="rejected")],
               loc="outside lower center", ncol=2, fontsize=12)
    _save(fig, out)


def _snippet(text: str, width: int = 34, lines: int = 5) -> str:
    """Wrap the answer and keep its first ``lines`` lines, marking the cut, so every cell has the same height."""
    wrapped = textwrap.wrap(" ".join(text.split()), width=width) or ["(empty answer)"]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return "\n".join(wrapped)


def _judge_comparisons(data: dict, path: str) -> list[dict]:
    """Accept both judge.json layouts: {"comparisons": [{"a","b","counts"}...]} or one {"a","b","counts"}."""
    items = data["comparisons"] if "comparisons" in data else [data]
    for item in items:
        counts = item.get("counts", {})
        if not {"a", "b"} <= set(item) or not {"win", "tie", "loss"} <= set(counts):
            raise ValueError(f"{path}: each comparison needs 'a', 'b' and counts {{win, tie, loss}}; got {item}")
    return items


@_styled
def plot_judge(*, judge: str, out: str) -> None:
    """Stacked horizontal bars of the pairwise judge's verdicts: wins, ties and losses of model ``a`` against ``b``.

    Reads final/judge.json as {"comparisons": [{"a", "b", "counts": {"win", "tie", "loss"}}]}; the single-comparison
    form {"a", "b", "counts": {...}} is accepted too. Counts are from ``a``'s side.
    """
    items = _judge_comparisons(read_json(judge), judge)
    if not items:
        raise ValueError(f"{judge} holds no comparisons; run the judge step first")
    fig = _figure(9.0, 2.2 + 0.8 * len(items))
    ax = fig.subplots()
    y = np.arange(len(items))
    left = np.zeros(len(items))
    for key, colour in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
        values = np.array([float(it["counts"][key]) for it in items])
        bars = ax.barh(y, values, left=left, color=colour, label=key, height=0.6)
        ax.bar_label(bars, labels=[f"{int(v)}" if v else "" for v in values], label_type="center", color="white",
                     fontweight="bold")
        left += values
    ax.set_yticks(y, [f"{it['a']} vs {it['b']}" for it in items])
    ax.invert_yaxis()  # first comparison on top, as listed in the file
    ax.set_xlabel("number of judged questions")
    ax.set_title("Pairwise judge: wins / ties / losses of the first model")
    fig.legend(loc="outside lower center", ncol=3)
    _save(fig, out)


@_styled
def plot_final_table(*, table_csv: str, out: str) -> None:
    """Grouped bars of per-suite accuracy (and the average) by model, with ± one std over seeds as error bars."""
    table = pd.read_csv(table_csv)
    cols = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    if not cols or "model" not in table.columns:
        raise ValueError(f"{table_csv} is not a final table: it needs a 'model' column and '<suite>_mean' columns")
    n_models = len(table)
    width = 0.8 / n_models
    x = np.arange(len(cols))
    colours = _colours(n_models)
    fig = _figure(max(8.0, 1.6 * len(cols) + 0.3 * n_models * len(cols)), 5.5)
    ax = fig.subplots()
    for i, (_, row) in enumerate(table.iterrows()):
        means = row[[f"{c}_mean" for c in cols]].to_numpy(dtype=float)
        stds = row[[f"{c}_std" for c in cols]].to_numpy(dtype=float)
        seeds = int(row["n_seeds"]) if "n_seeds" in table.columns else 1
        label = f"{row['model']} ({seeds} seeds)" if seeds > 1 else str(row["model"])
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, means, width, color=colours[i], label=label)
        spread = np.isfinite(stds)  # single runs have no std: no error bar rather than a misleading zero-width one
        if spread.any():
            ax.errorbar(pos[spread], means[spread], yerr=stds[spread], fmt="none", ecolor="black", capsize=3,
                        elinewidth=1)
        # The value above each bar (and its error bar), so a zero reads as 0.00 rather than as a missing bar.
        for p, m, s in zip(pos, means, np.where(spread, stds, 0.0)):
            ax.text(p, m + s + 0.008, f"{m:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, cols, rotation=20 if len(cols) > 6 else 0)
    ax.set_xlabel("evaluation suite")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, min(1.05, max(0.1, float(np.nanmax(table[[f'{c}_mean' for c in cols]].to_numpy())) * 1.25)))
    ax.set_title("Accuracy by suite and model (error bars: ± 1 std over seeds)")
    fig.legend(loc="outside lower center", ncol=min(n_models, 4))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out)

