# Image and answer embeddings (scattered like the scores), then one PCA per modality fitted on the whole dataset.


rule embed_shard:
    input:
        manifest=f"{R}/manifest.parquet",
        model=toy_inputs(CLIP.get("pretrained", "")),
    output:
        image=f"{R}/features/shards/{{scatteritem}}/image.npy",
        text=f"{R}/features/shards/{{scatteritem}}/text.npy",
        ids=f"{R}/features/shards/{{scatteritem}}/ids.parquet",
    params:
        p=as_json(CLIP | {k: config["scoring"][k] for k in ("batch_size", "num_workers", "device")} | {k: v for k, v in config["features"].items() if k != "pca_dim"}),
        out=f"{R}/features/shards/{{scatteritem}}",
        shard=lambda w: parse_scatteritem(w.scatteritem)[0],
        n_shards=lambda w: parse_scatteritem(w.scatteritem)[1],
    log:
        f"{R}/logs/embed/{{scatteritem}}.log",
    benchmark:
        f"{R}/benchmarks/embed/{{scatteritem}}.tsv"
    threads: RES["scoring"]["cpus"]
    resources:
        **SCORING_RESOURCES,
    shell:
        "OMP_NUM_THREADS={threads} vlselect embed --manifest {input.manifest} --out-dir {params.out} "
        "--shard {params.shard} --n-shards {params.n_shards} --params {params.p:q} 2> {log}"


rule gather_features:
    input:
        gather.shards(f"{R}/features/shards/{{scatteritem}}/ids.parquet"),
    output:
        image=f"{R}/features/image.npy",
        text=f"{R}/features/text.npy",
        ids=f"{R}/features/ids.parquet",
    params:
        dirs=lambda w, input: " ".join(str(Path(p).parent) for p in input),
        out=f"{R}/features",
    log:
        f"{R}/logs/gather_features.log",
    benchmark:
        f"{R}/benchmarks/gather_features.tsv"
    shell:
        "vlselect gather-features --inputs {params.dirs} --out-dir {params.out} 2> {log}"


rule fit_pca:
    input:
        image=f"{R}/features/image.npy",
        text=f"{R}/features/text.npy",
        ids=f"{R}/features/ids.parquet",
    output:
        f"{R}/features/pca.parquet",
    params:
        p=as_json({"pca_dim": config["features"]["pca_dim"], "seed": config["labels"]["seed"]}),
        features=f"{R}/features",
    log:
        f"{R}/logs/fit_pca.log",
    benchmark:
        f"{R}/benchmarks/fit_pca.tsv"
    shell:
        "vlselect fit-pca --features-dir {params.features} --out {output} --params {params.p:q} 2> {log}"
