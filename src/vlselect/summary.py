"""The closing summary that `make run` prints: quarantine counts, indicators the selection left out, the final table,
and where the report is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vlselect.io import read_parquet_metadata


def summary(*, results: str = "results") -> None:
    """Print what the run produced: quarantine counts, dropped indicators, the comparison table, the report's place.

    An indicator without a single usable score (a GPT score that was skipped or whose every reply failed) is left out
    of selection with only a log line; naming it here keeps a run from passing for one that used it.
    """
    root = Path(results)
    quarantine = root / "quarantine.parquet"
    if quarantine.exists():
        counts = pd.read_parquet(quarantine)["reason"].value_counts()
        kept = len(pd.read_parquet(root / "manifest.parquet", columns=["sample_id"]))
        print(f"dataset: {kept} examples kept, {int(counts.sum())} quarantined"
              + (f" ({', '.join(f'{r}: {n}' for r, n in counts.items())})" if len(counts) else ""))
    for name in _dropped_indicators(root):
        scores = root / "scores" / f"{name}.parquet"
        why = ""
        if scores.exists():
            statuses = pd.read_parquet(scores, columns=["status"])["status"].value_counts()
            why = f" ({', '.join(f'{s}: {n}' for s, n in statuses.items())} in {scores})"
        print(f"indicator {name!r} left out of selection: no usable score{why}")
    table = root / "final" / "table.md"
    if table.exists():
        print("\nfinal comparison (test suites):\n")
        print(table.read_text())
    else:
        print(f"no final table yet at {table}; run `snakemake --cores 2` to finish the pipeline")
    print(f"selections and their exports: {root / 'selection'}/<method>/")
    report = root / "report.html"
    if report.exists():
        print(f"HTML report: {report}")
    else:
        print(f"HTML report: run `snakemake --report {report}` (or `make report`), then open it")


def _dropped_indicators(root: Path) -> list[str]:
    """Indicators that any selection left out for want of a usable score (its files' metadata records them)."""
    names: set[str] = set()
    for path in root.glob("selection/*/selected.parquet"):
        names.update(read_parquet_metadata(path).get("unusable_indicators") or [])
    return sorted(names)
