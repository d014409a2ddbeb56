"""The closing summary that `make run` prints: quarantine counts, the final table, and where the report is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def summary(*, results: str = "results") -> None:
    """Print what the run produced: quarantine counts, the comparison table and the judge's verdicts."""
    root = Path(results)
    quarantine = root / "quarantine.parquet"
    if quarantine.exists():
        counts = pd.read_parquet(quarantine)["reason"].value_counts()
        kept = len(pd.read_parquet(root / "manifest.parquet", columns=["sample_id"]))
        print(f"dataset: {kept} examples kept, {int(counts.sum())} quarantined"
              + (f" ({', '.join(f'{r}: {n}' for r, n in counts.items())})" if len(counts) else ""))
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
