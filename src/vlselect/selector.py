"""The learned data selector: per-example quality from indicators and features, trained on subset labels.

Only subsets carry labels (the benchmark score of a model fine-tuned on the subset), so the selector is
trained through an aggregate: the mean predicted quality of a subset's members is regressed onto the
subset's (standardised) label. Three shapes are compared by leave-subsets-out cross-validation against a
constant predictor: "linear", "mlp", and "attention" (the paper's: self-attention across a subset's
members, then a linear head per example), each on two input sets: the indicators with the PCA features
("all", the paper's) and the indicators alone ("indicators"). With some thirty labels the PCA features can
let a model fit which images a subset holds rather than how good its answers are; cross-validation decides.
It takes the simplest candidate whose cross-validated error is within one standard error of the lowest (the
"one-standard-error rule"): thirty labels cannot tell apart errors that close, and a more flexible model
fitted to them extrapolates freely to examples unlike any subset's mean, such as a repetition loop far longer
than any subset's typical answer. The final model is trained on every subset.

Monotone (the default): the linear selector's weights on the indicators are kept non-negative (projected
gradient), because every indicator is defined so that higher is better. Thirty noisy labels can otherwise
give an indicator a negative weight from a confound (which images a subset holds): on the toy world one such
fit weighted CLIP negatively and picked 153 answers describing other images. The PCA features and the other
shapes are not constrained; a negative weight found there is still free to be fitted.

Per-example input: each usable indicator as its rank-based normal score over the whole dataset (``normalise``
"rank", the default: the normal quantile of its percentile rank) or as it is ("zscore"), then z-scored (an
unscored example gets 0, the average), followed by the PCA features, also z-scored. Ranks bound what one extreme
value can add: under z-scores a repetition loop many times longer than any clean answer sat far out on the length
axis, and any positive length weight put it near the top. The statistics (percentile grids, means, standard
deviations) are saved with the model so prediction uses exactly the training transform.

Attention context: a subset's members are split into groups of at most ``context`` examples (order from a
seeded permutation) and attention runs within a group, which bounds memory at large subsets. Prediction
groups all examples the same way (seeded permutation, groups of the training group size), so every example
sees peers as in training, though not necessarily from its own subset.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from sklearn.model_selection import KFold
from torch import nn
from tqdm import tqdm

from vlselect.io import atomic_path, read_json, write_json, write_parquet
from vlselect.indicators import percentile_grid, rank_scores, read_indicators

log = logging.getLogger(__name__)

ARCHS = ("linear", "mlp", "attention")
INPUTS = ("all", "indicators")
NORMALISE = ("rank", "zscore")
# (arch, inputs) from the fewest parameters to the most: the order in which the one-standard-error rule prefers them
SIMPLEST_FIRST = tuple((a, s) for a in ARCHS for s in ("indicators", "all"))


def _inputs(x: np.ndarray, n_indicators: int, inputs: str) -> np.ndarray:
    """The columns of the feature matrix that an input set uses (the indicators come first)."""
    return x if inputs == "all" else x[:, :n_indicators]


# -------------------------------------------------------------------------------------------------- models
class Selector(nn.Module):
    """Maps (groups, members, features) to one quality per member; ``mask`` marks real members."""

    def __init__(self, arch: str, in_dim: int, hidden: int = 16, n_heads: int = 1, layers: int = 1):
        super().__init__()
        self.arch = arch
        if arch == "linear":
            self.head = nn.Linear(in_dim, 1)
        elif arch == "mlp":
            blocks, width = [], in_dim
            for _ in range(layers):
                blocks += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            self.body = nn.Sequential(*blocks)
            self.head = nn.Linear(width, 1)
        elif arch == "attention":
            if hidden % n_heads:
                raise ValueError(f"hidden={hidden} must be divisible by n_heads={n_heads}")
            self.proj = nn.Linear(in_dim, hidden)
            self.attn = nn.ModuleList(nn.MultiheadAttention(hidden, n_heads, batch_first=True) for _ in range(layers))
            self.head = nn.Linear(hidden, 1)
        else:
            raise ValueError(f"unknown selector arch {arch!r}; choose one of {', '.join(ARCHS)} or auto")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.arch == "linear":
            return self.head(x).squeeze(-1)
        if self.arch == "mlp":
            return self.head(self.body(x)).squeeze(-1)
        h = self.proj(x)
        for attn in self.attn:
            # Residual, so each example's own features stay in its representation.
            a, _ = attn(h, h, h, key_padding_mask=~mask, need_weights=False)
            h = h + a
        return self.head(h).squeeze(-1)


def make_groups(members: list[np.ndarray], context: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Split each member list (seeded shuffle) into groups of at most ``context``; (index matrix, owner per group).

    The index matrix is (n_groups, width) padded with -1.
    """
    groups, owner = [], []
    for k, idx in enumerate(members):
        idx = rng.permutation(idx)
        for g in np.array_split(idx, -(-len(idx) // context)):
            groups.append(g)
            owner.append(k)
    width = max(len(g) for g in groups)
    mat = np.full((len(groups), width), -1, dtype=np.int64)
    for r, g in enumerate(groups):
        mat[r, : len(g)] = g
    return mat, owner


def _gather(x: torch.Tensor, mat: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.from_numpy(mat)
    mask = idx >= 0
    return x[idx.clamp(min=0)], mask


def fit_model(x: np.ndarray, members: list[np.ndarray], y: np.ndarray, *, arch: str, epochs: int, lr: float,
              weight_decay: float, hidden: int, n_heads: int, layers: int, context: int, seed: int,
              nonneg: int = 0) -> Selector:
    """Full-batch Adam on MSE(mean member prediction, label) over the given subsets.

    ``nonneg``: for the linear shape, how many leading input columns (the indicators) keep non-negative weights.
    """
    torch.manual_seed(seed)
    model = Selector(arch, x.shape[1], hidden, n_heads, layers)
    mat, owner = make_groups(members, context, np.random.default_rng(seed))
    xg, mask = _gather(torch.from_numpy(x), mat)
    owner_t = torch.tensor(owner)
    sizes = torch.tensor([len(m) for m in members], dtype=torch.float32)
    target = torch.from_numpy(y.astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in tqdm(range(epochs), desc=f"selector {arch}", file=sys.stderr, leave=False, mininterval=5):
        opt.zero_grad()
        pred = subset_means(model(xg, mask), mask, owner_t, len(members), sizes)
        loss = torch.mean((pred - target) ** 2)
        loss.backward()
        opt.step()
        if arch == "linear" and nonneg:
            with torch.no_grad():
                model.head.weight[:, :nonneg].clamp_(min=0.0)
    return model


def subset_means(pred: torch.Tensor, mask: torch.Tensor, owner: torch.Tensor, n_subsets: int,
                 sizes: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(n_subsets).index_add(0, owner, (pred * mask).sum(1))
    return sums / sizes


def predict_members(model: Selector, x: np.ndarray, group_size: int, seed: int) -> np.ndarray:
    """One quality per row of ``x``, attention groups formed by a seeded permutation of all rows."""
    mat, _ = make_groups([np.arange(len(x))], group_size, np.random.default_rng(seed))
    out = np.empty(len(x), dtype=np.float64)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        for start in range(0, len(mat), 256):  # bounded memory at any N
            xg, mask = _gather(xt, mat[start: start + 256])
            pred = model(xg, mask).numpy()
            rows = mat[start: start + 256]
            out[rows[rows >= 0]] = pred[rows >= 0]
    return out


# ------------------------------------------------------------------------------------------------ features
def _features(scores: list[str], pca: str, indicators: list[str] | None = None, stats: dict | None = None,
              normalise: str = "rank") -> tuple[np.ndarray, list[str], list[str], list[str], dict]:
    """(matrix, sample_ids, feature names, skipped indicators, stats); uses ``stats`` when given (prediction).

    With ``normalise`` "rank" each indicator first becomes its rank-based normal score (:func:`rank_scores`);
    with "zscore" it enters as it is. Every column is then z-scored.
    """
    if normalise not in NORMALISE:
        raise ValueError(f"unknown selector normalise {normalise!r}; choose one of {', '.join(NORMALISE)}")
    pca_df = pd.read_parquet(pca)
    ids = pca_df["sample_id"].astype(str).tolist()
    raw, skipped = read_indicators(list(scores), ids)
    if indicators is not None:
        missing = [n for n in indicators if n not in raw.columns]
        if missing:
            raise ValueError(f"the selector was trained with indicator(s) {missing}, which have no usable score "
                             "here; pass the same score files as for training")
        raw = raw[indicators]
    if stats is None:
        grids = {n: percentile_grid(raw[n]) for n in raw.columns} if normalise == "rank" else None
    else:
        grids = stats.get("percentile_grids")  # models saved before ranks existed z-scored the raw values
    if grids is not None:
        raw = raw.apply(lambda col: rank_scores(col, grids[col.name]))
    pca_cols = [c for c in pca_df.columns if c != "sample_id"]
    table = pd.concat([raw.reset_index(drop=True), pca_df[pca_cols].reset_index(drop=True)], axis=1)
    names = list(table.columns)
    values = table.to_numpy(dtype=np.float64)
    if stats is None:
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        stats = {"mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist(), "percentile_grids": grids}
    z = (values - np.asarray(stats["mean"])) / np.asarray(stats["std"])
    return np.nan_to_num(z, nan=0.0).astype(np.float32), ids, names, skipped, stats


def _subset_members(subsets: str, labels: str, ids: list[str]) -> tuple[list[np.ndarray], np.ndarray, list[int]]:
    sub = pd.read_parquet(subsets)
    lab = pd.read_parquet(labels)
    pos = pd.Series(np.arange(len(ids)), index=ids)
    unknown = ~sub["sample_id"].astype(str).isin(pos.index)
    if unknown.any():
        raise ValueError(f"{subsets}: {int(unknown.sum())} sample_ids are not in the PCA features; re-run make_subsets")
    sub_ids = sorted(set(sub["subset"]) & set(lab["subset"]))
    missing = sorted(set(sub["subset"]) ^ set(lab["subset"]))
    if missing:
        raise ValueError(f"subsets {missing} appear in only one of {subsets} and {labels}; re-run collect_labels")
    members = [pos[sub.loc[sub["subset"] == k, "sample_id"].astype(str)].to_numpy() for k in sub_ids]
    y = lab.set_index("subset").loc[sub_ids, "label"].to_numpy(dtype=np.float64)
    return members, y, sub_ids


# ------------------------------------------------------------------------------------------------- training
def train_selector(*, scores: list[str], pca: str, subsets: str, labels: str, out_dir: str, arch: str = "mlp",
                   inputs: str = "all", epochs: int = 300, lr: float = 0.01, seed: int = 0, weight_decay: float = 1e-3,
                   hidden: int = 16, n_heads: int = 1, layers: int = 1, context: int = 128, n_folds: int = 5,
                   monotone: bool = True, normalise: str = "rank") -> None:
    """Cross-validate every selector shape and input set on the subset labels, then train the chosen one on all.

    ``arch`` is linear, mlp, attention, or auto; ``inputs`` is all (indicators + PCA features), indicators, or
    auto; an auto choice takes the simplest candidate within one standard error of the lowest cross-validated
    MSE (:func:`choose_candidate`). ``normalise`` is how indicators enter (see the module docstring):
    rank or zscore. ``monotone`` keeps the linear shape's indicator
    weights non-negative (see the module docstring). Writes out_dir/report.json (CV MSE per
    "arch/inputs" candidate and for a constant predictor, in standardised-label units), out_dir/model.safetensors
    and out_dir/model.json (arch, inputs, sizes, feature names, standardisation statistics).
    """
    if arch not in ARCHS + ("auto",):
        raise ValueError(f"unknown selector arch {arch!r}; choose one of {', '.join(ARCHS)} or auto")
    if inputs not in INPUTS + ("auto",):
        raise ValueError(f"unknown selector inputs {inputs!r}; choose one of {', '.join(INPUTS)} or auto")
    x, ids, names, skipped, stats = _features(scores, pca, normalise=normalise)
    indicators = [n for n in names if not n.startswith(("img_pc", "txt_pc"))]
    members, y, sub_ids = _subset_members(subsets, labels, ids)
    if len(members) < 3:
        raise ValueError(f"only {len(members)} labelled subsets; the selector needs at least 3 (labels.n_subsets)")
    y_mean, y_std = float(y.mean()), float(y.std())
    y_std = y_std if y_std > 0 else 1.0
    yz = (y - y_mean) / y_std
    hp = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, hidden=hidden, n_heads=n_heads, layers=layers,
              context=context, seed=seed, nonneg=len(indicators) if monotone else 0)

    folds = list(KFold(n_splits=min(n_folds, len(members)), shuffle=True, random_state=seed).split(yz))
    # every (arch, inputs) pair is cross-validated and reported; the choice is among those the caller allows
    candidates = [(a, s) for a in ARCHS for s in (INPUTS if inputs == "auto" else (inputs,))]
    cv = {}
    for a, s in candidates:
        xs = _inputs(x, len(indicators), s)
        pred = np.empty(len(yz))
        for train, test in folds:
            model = fit_model(xs, [members[i] for i in train], yz[train], arch=a, **hp)
            per_example = predict_members(model, xs, context, seed)
            pred[test] = [per_example[members[i]].mean() for i in test]
        err = (pred - yz) ** 2
        cv[f"{a}/{s}"] = {"mse": float(err.mean()), "se": float(err.std(ddof=1) / np.sqrt(len(err))),
                          "fold_mse": [float(np.mean(err[t])) for _, t in folds],
                          "corr": _corr(pred, yz)}
    const = np.empty(len(yz))
    for train, test in folds:
        const[test] = yz[train].mean()
    cv["constant"] = {"mse": float(np.mean((const - yz) ** 2)),
                      "fold_mse": [float(np.mean((const[t] - yz[t]) ** 2)) for _, t in folds]}
    allowed = [c for c in candidates if arch in ("auto", c[0])]
    chosen, chosen_inputs = choose_candidate(cv, allowed)
    best = f"{chosen}/{chosen_inputs}"
    if cv[best]["mse"] >= cv["constant"]["mse"]:
        log.warning("selector %s does not beat a constant predictor in cross-validation (MSE %.3f vs %.3f); "
                    "its ranking may be no better than noise", best, cv[best]["mse"], cv["constant"]["mse"])

    xs = _inputs(x, len(indicators), chosen_inputs)
    model = fit_model(xs, members, yz, arch=chosen, **hp)
    per_example = predict_members(model, xs, context, seed)
    fitted = np.array([per_example[m].mean() for m in members])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors", ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    spec = {"arch": chosen, "inputs": chosen_inputs, "in_dim": int(xs.shape[1]), "hidden": hidden,
            "n_heads": n_heads, "layers": layers, "context": context, "seed": seed, "features": names, "indicators": indicators,
            "skipped_indicators": skipped, "feature_stats": stats, "label_mean": y_mean, "label_std": y_std}
    write_json(spec, out_dir / "model.json")
    report = {"arch_requested": arch, "arch": chosen, "inputs_requested": inputs, "inputs": chosen_inputs, "cv": cv,
              "lowest_cv": "/".join(min(allowed, key=lambda c: cv["/".join(c)]["mse"])),
              "choice_rule": "simplest within one standard error of the lowest CV MSE",
              "n_folds": len(folds), "cv_units": "standardised label",
              "n_subsets": len(members), "subsets": sub_ids, "features": names, "skipped_indicators": skipped,
              "label_mean": y_mean, "label_std": y_std, "train_mse": float(np.mean((fitted - yz) ** 2)),
              "monotone": monotone, "normalise": normalise, "hyperparameters": hp}
    if chosen == "linear":  # in standardised units per input: what a pick owes to each indicator and feature
        used = names if chosen_inputs == "all" else indicators
        report["linear_weights"] = linear_weights(model, used)
    write_json(report, out_dir / "report.json")
    log.info("selector CV MSE: %s; using %s, the simplest within one standard error of the lowest (%s)",
             {k: round(v["mse"], 3) for k, v in cv.items()}, best, report["lowest_cv"])


def linear_weights(model: Selector, names: list[str]) -> dict[str, float]:
    """A linear selector's weight on each input, by name (in standardised input units)."""
    return dict(zip(names, model.head.weight.detach()[0].tolist()))


def choose_candidate(cv: dict, allowed: list[tuple[str, str]]) -> tuple[str, str]:
    """The simplest (arch, inputs) of ``allowed`` whose CV MSE is within one standard error of the lowest.

    ``cv["arch/inputs"]`` holds "mse" and "se" (the standard error of the mean of the per-subset squared
    errors). Simplicity follows :data:`SIMPLEST_FIRST`.
    """
    key = "/".join
    best = min(allowed, key=lambda c: cv[key(c)]["mse"])
    bound = cv[key(best)]["mse"] + cv[key(best)]["se"]
    return next(c for c in SIMPLEST_FIRST if c in allowed and cv[key(c)]["mse"] <= bound)


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def predict(*, model_dir: str, scores: list[str], pca: str, out: str) -> None:
    """Predict a quality for every example in ``pca`` (not only those in subsets); writes sample_id, quality.

    quality is in label units (the standardisation of the labels is undone), so it reads as an expected
    benchmark score contribution.
    """
    spec = read_json(Path(model_dir) / "model.json")
    model = Selector(spec["arch"], spec["in_dim"], spec["hidden"], spec["n_heads"], spec["layers"])
    model.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")))
    model.eval()
    x, ids, names, _, _ = _features(scores, pca, indicators=spec["indicators"], stats=spec["feature_stats"])
    if names != spec["features"]:
        raise ValueError(f"features {names} differ from the trained model's {spec['features']}; use the same PCA")
    used = spec.get("inputs", "all")  # models saved before the input choice existed used every feature
    x = _inputs(x, len(spec["indicators"]), used)
    q = predict_members(model, x, spec["context"], spec["seed"]) * spec["label_std"] + spec["label_mean"]
    meta = {"arch": spec["arch"], "inputs": used, "model_dir": str(model_dir), "features": names}
    if spec["arch"] == "linear":  # what each indicator adds to a pick's quality, for selection's "why" column
        meta["linear_weights"] = {n: w for n, w in linear_weights(model, names).items() if n in spec["indicators"]}
    write_parquet(pd.DataFrame({"sample_id": ids, "quality": q}), out, metadata=meta)
    log.info("predicted quality for %d examples: mean %.4f, std %.4f", len(q), q.mean(), q.std())

