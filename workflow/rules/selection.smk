# The learned selector, spectral clusters for diversity, and one selection per method (with its export).
SEL = config["selection"]
# where the embeddings that selection.clusters names live (none: no clustering, no such rule)
CLUSTER_FEATURES = {"image": f"{R}/features", "provided": f"{R}/features/provided", "none": None}[SEL["clusters"]]


def uses_clusters(method):
    """Whether a method ranks under the cluster quotas; the others (random, full, no_cluster) never wait for them."""
    return CLUSTER_FEATURES is not None and (method in ("selector", "weights") or method.endswith("_only"))


def selection_params(w):
    """Each method gets only the settings it uses, so a change re-runs only the selections it affects.

    A selection key is a method name, or random{seed} for the final comparison's random draws.
    """
    method, seed = w.sel, SEL["seed"]
    if w.sel.startswith("random") and w.sel != "random":
        method, seed = "random", SEL["seed"] + int(w.sel[len("random"):])
    params = {"method": method}
    if method != "full":
        params["n_select"] = SEL["n_select"]
    if method == "random":
        params["seed"] = seed
    if uses_clusters(method):
        params["quota_m"] = SEL["quota_m"]
    if method in ("weights", "no_cluster"):
        params["weights"] = SEL["weights"]
    return to_json(params)


rule train_selector:
    input:
        scores=SCORE_FILES,
        pca=f"{R}/features/pca.parquet",
        subsets=f"{R}/labels/subsets.parquet",
        labels=f"{R}/labels/labels.parquet",
    output:
        model=f"{R}/selector/model.safetensors",
        report=f"{R}/selector/report.json",
    params:
        p=as_json(SEL["selector"]),
        out=f"{R}/selector",
    log:
        f"{R}/logs/train_selector.log",
    benchmark:
        f"{R}/benchmarks/train_selector.tsv"
    shell:
        "vlselect train-selector --scores {input.scores} --pca {input.pca} --subsets {input.subsets} "
        "--labels {input.labels} --out-dir {params.out} --params {params.p:q} 2> {log}"


rule predict_quality:
    input:
        model=f"{R}/selector/model.safetensors",
        scores=SCORE_FILES,
        pca=f"{R}/features/pca.parquet",
    output:
        f"{R}/selector/predictions.parquet",
    params:
        model_dir=f"{R}/selector",
    log:
        f"{R}/logs/predict_quality.log",
    benchmark:
        f"{R}/benchmarks/predict_quality.tsv"
    shell:
        "vlselect predict --model-dir {params.model_dir} --scores {input.scores} --pca {input.pca} --out {output} 2> {log}"


if EXTERNAL and EXTERNAL["embeddings"]:

    rule import_embeddings:
        input:
            image=EXTERNAL["embeddings"]["image"],
            ids=EXTERNAL["embeddings"]["ids"],
            manifest=f"{R}/manifest.parquet",
        output:
            image=f"{R}/features/provided/image.npy",
            ids=f"{R}/features/provided/ids.parquet",
        params:
            p=as_json({"id_column": EXTERNAL["embeddings"]["id_column"]}),
            out=f"{R}/features/provided",
        log:
            f"{R}/logs/import_embeddings.log",
        benchmark:
            f"{R}/benchmarks/import_embeddings.tsv"
        shell:
            "vlselect import-embeddings --image {input.image:q} --ids {input.ids:q} --manifest {input.manifest} "
            "--out-dir {params.out} --params {params.p:q} 2> {log}"


if CLUSTER_FEATURES:

    rule spectral_clusters:
        input:
            image=f"{CLUSTER_FEATURES}/image.npy",
            ids=f"{CLUSTER_FEATURES}/ids.parquet",
        output:
            f"{R}/selection/clusters.parquet",
        params:
            p=as_json({"n_clusters": SEL["n_clusters"], "seed": SEL["seed"]}),
            features=CLUSTER_FEATURES,
        log:
            f"{R}/logs/spectral_clusters.log",
        benchmark:
            f"{R}/benchmarks/spectral_clusters.tsv"
        shell:
            "vlselect spectral-clusters --features-dir {params.features} --out {output} --params {params.p:q} 2> {log}"


rule select:
    input:
        manifest=f"{R}/manifest.parquet",
        scores=SCORE_FILES,
        clusters=lambda w: [f"{R}/selection/clusters.parquet"] if uses_clusters(w.sel) else [],
        predictions=lambda w: [f"{R}/selector/predictions.parquet"] if w.sel == "selector" else [],
    output:
        selected=f"{R}/selection/{{sel}}/selected.parquet",
        rejected=f"{R}/selection/{{sel}}/rejected.parquet",
        ids=f"{R}/selection/{{sel}}/ids.parquet",
    params:
        p=selection_params,
        out=f"{R}/selection/{{sel}}",
        predictions=lambda w: f"--predictions {R}/selector/predictions.parquet" if w.sel == "selector" else "",
        clusters=lambda w: f"--clusters {R}/selection/clusters.parquet" if uses_clusters(w.sel) else "",
    wildcard_constraints:
        sel=r"[a-z_]+\d*",
    log:
        f"{R}/logs/select/{{sel}}.log",
    benchmark:
        f"{R}/benchmarks/select/{{sel}}.tsv"
    shell:
        "vlselect select --manifest {input.manifest} --scores {input.scores} {params.clusters} "
        "{params.predictions} --out-dir {params.out} --params {params.p:q} 2> {log}"


rule export_selection:
    input:
        manifest=f"{R}/manifest.parquet",
        ids=f"{R}/selection/{{sel}}/ids.parquet",
    output:
        directory(f"{R}/selection/{{sel}}/dataset"),
    params:
        p=as_json({"format": EXPORT_FORMAT}),
    wildcard_constraints:
        sel=r"[a-z_]+\d*",
    log:
        f"{R}/logs/export_selection/{{sel}}.log",
    benchmark:
        f"{R}/benchmarks/export_selection/{{sel}}.tsv"
    shell:
        "vlselect export --manifest {input.manifest} --sample-ids-file {input.ids} --out-dir {output} "
        "--params {params.p:q} 2> {log}"
