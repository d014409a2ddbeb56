# Plots for `snakemake --report report.html`: each plot is one rule, captioned in workflow/report/.
PLOTS = f"{R}/report"
REPORT_SEL = "selector" if "selector" in SEL["methods"] else SEL["methods"][0]


def report_targets():
    # the embedding map shows the clusters on the embeddings they were cut from, so only where there are clusters
    names = ["indicators", "correlation"] + (["embedding_map"] if CLUSTER_FEATURES else []) + [
        "labels", "gallery", "final_table"]
    if JUDGE_PAIRS:
        names.append("judge")
    return [f"{PLOTS}/{name}.png" for name in names]


rule plot_indicators:
    input:
        SCORE_FILES,
    output:
        report(f"{PLOTS}/indicators.png", caption="../report/indicators.rst", category="Indicators"),
    log:
        f"{R}/logs/plot/indicators.log",
    benchmark:
        f"{R}/benchmarks/plot/indicators.tsv"
    shell:
        "vlselect plot-indicators --scores {input} --out {output} 2> {log}"


rule plot_correlation:
    input:
        SCORE_FILES,
    output:
        report(f"{PLOTS}/correlation.png", caption="../report/correlation.rst", category="Indicators"),
    log:
        f"{R}/logs/plot/correlation.log",
    benchmark:
        f"{R}/benchmarks/plot/correlation.tsv"
    shell:
        "vlselect plot-correlation --scores {input} --out {output} 2> {log}"


if CLUSTER_FEATURES:

    rule plot_embedding_map:
        input:
            image=f"{CLUSTER_FEATURES}/image.npy",
            ids=f"{CLUSTER_FEATURES}/ids.parquet",
            clusters=f"{R}/selection/clusters.parquet",
            selected=f"{R}/selection/{REPORT_SEL}/selected.parquet",
        output:
            report(f"{PLOTS}/embedding_map.png", caption="../report/embedding_map.rst", category="Selection"),
        params:
            features=CLUSTER_FEATURES,
        log:
            f"{R}/logs/plot/embedding_map.log",
        benchmark:
            f"{R}/benchmarks/plot/embedding_map.tsv"
        shell:
            "vlselect plot-embedding-map --features-dir {params.features} --clusters {input.clusters} "
            "--selected {input.selected} --out {output} 2> {log}"


rule plot_labels:
    input:
        labels=f"{R}/labels/labels.parquet",
        subsets=f"{R}/labels/subsets.parquet",
        predictions=f"{R}/selector/predictions.parquet",
    output:
        report(f"{PLOTS}/labels.png", caption="../report/labels.rst", category="Labels"),
    log:
        f"{R}/logs/plot/labels.log",
    benchmark:
        f"{R}/benchmarks/plot/labels.tsv"
    shell:
        "vlselect plot-labels --labels {input.labels} --subsets {input.subsets} --predictions {input.predictions} "
        "--out {output} 2> {log}"


rule plot_gallery:
    input:
        manifest=f"{R}/manifest.parquet",
        selected=f"{R}/selection/{REPORT_SEL}/selected.parquet",
        rejected=f"{R}/selection/{REPORT_SEL}/rejected.parquet",
    output:
        report(f"{PLOTS}/gallery.png", caption="../report/gallery.rst", category="Selection"),
    log:
        f"{R}/logs/plot/gallery.log",
    benchmark:
        f"{R}/benchmarks/plot/gallery.tsv"
    shell:
        "vlselect plot-gallery --manifest {input.manifest} --selected {input.selected} --rejected {input.rejected} "
        "--out {output} 2> {log}"


rule plot_final_table:
    input:
        csv=f"{R}/final/table.csv",
        md=f"{R}/final/table.md",
    output:
        report(f"{PLOTS}/final_table.png", caption="../report/final_table.rst", category="Comparison"),
    log:
        f"{R}/logs/plot/final_table.log",
    benchmark:
        f"{R}/benchmarks/plot/final_table.tsv"
    shell:
        "vlselect plot-final-table --table-csv {input.csv} --out {output} 2> {log}"


rule plot_judge:
    input:
        f"{R}/final/judge.json",
    output:
        report(f"{PLOTS}/judge.png", caption="../report/judge.rst", category="Comparison"),
    log:
        f"{R}/logs/plot/judge.log",
    benchmark:
        f"{R}/benchmarks/plot/judge.tsv"
    shell:
        "vlselect plot-judge --judge {input} --out {output} 2> {log}"
