# Quality indicators: one rule and one file per indicator, each scattered over scoring.shards jobs.
# Changing one model or its settings re-runs that indicator only.
SCORING = config["scoring"]
SCORE_PARAMS = {
    "clip": CLIP | {k: SCORING[k] for k in ("batch_size", "num_workers", "device")},
    "reward": {"path": REWARD, "batch_size": SCORING["batch_size"], "device": SCORING["device"]},
    "length": SCORING["length"],
    "gpt": SCORING["gpt"] | {"cache_dir": config["cache_dir"]},
}
SCORE_MODEL_INPUTS = {
    "clip": toy_inputs(CLIP.get("pretrained", "")),
    "reward": toy_inputs(REWARD),
}

if EXTERNAL:

    rule import_scores:
        input:
            scores=EXTERNAL["path"],
            manifest=f"{R}/manifest.parquet",
        output:
            SCORE_FILES,
        params:
            p=as_json({k: v for k, v in EXTERNAL.items() if k not in ("path", "embeddings")}),
            out=f"{R}/scores",
        log:
            f"{R}/logs/import_scores.log",
        benchmark:
            f"{R}/benchmarks/import_scores.tsv"
        shell:
            "vlselect import-scores --path {input.scores:q} --manifest {input.manifest} --out-dir {params.out} "
            "--params {params.p:q} 2> {log}"

else:

    # Two rules share the command so that a cluster profile can send them to different partitions: the model
    # indicators run a network on a GPU, the text indicators (length, GPT over HTTP) need only a CPU.
    SCORE_SHELL = (
        "OMP_NUM_THREADS={threads} vlselect {params.cmd} --manifest {input.manifest} --out {output} "
        "--shard {params.shard} --n-shards {params.n_shards} --params {params.p:q} 2> {log}"
    )

    rule score_model_shard:
        input:
            manifest=f"{R}/manifest.parquet",
            model=lambda w: SCORE_MODEL_INPUTS[w.indicator],
        output:
            f"{R}/scores/shards/{{indicator}}/{{scatteritem}}.parquet",
        params:
            p=lambda w: to_json(SCORE_PARAMS[w.indicator]),
            cmd=lambda w: f"score-{w.indicator}",
            shard=lambda w: parse_scatteritem(w.scatteritem)[0],
            n_shards=lambda w: parse_scatteritem(w.scatteritem)[1],
        wildcard_constraints:
            indicator="clip|reward",
        log:
            f"{R}/logs/score/{{indicator}}_{{scatteritem}}.log",
        benchmark:
            f"{R}/benchmarks/score/{{indicator}}_{{scatteritem}}.tsv"
        threads: RES["scoring"]["cpus"]
        resources:
            **SCORING_RESOURCES,
        shell:
            SCORE_SHELL

    rule score_text_shard:
        input:
            manifest=f"{R}/manifest.parquet",
        output:
            f"{R}/scores/shards/{{indicator}}/{{scatteritem}}.parquet",
        params:
            p=lambda w: to_json(SCORE_PARAMS[w.indicator]),
            cmd=lambda w: f"score-{w.indicator}",
            shard=lambda w: parse_scatteritem(w.scatteritem)[0],
            n_shards=lambda w: parse_scatteritem(w.scatteritem)[1],
        wildcard_constraints:
            indicator="length|gpt",
        log:
            f"{R}/logs/score/{{indicator}}_{{scatteritem}}.log",
        benchmark:
            f"{R}/benchmarks/score/{{indicator}}_{{scatteritem}}.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=240,
        shell:
            SCORE_SHELL

    rule gather_scores:
        input:
            manifest=f"{R}/manifest.parquet",
            shards=lambda w: gather.shards(f"{R}/scores/shards/{w.indicator}/{{scatteritem}}.parquet"),
        output:
            f"{R}/scores/{{indicator}}.parquet",
        wildcard_constraints:
            indicator="clip|reward|length|gpt",
        log:
            f"{R}/logs/gather_scores_{{indicator}}.log",
        benchmark:
            f"{R}/benchmarks/gather_scores_{{indicator}}.tsv"
        shell:
            "vlselect gather --manifest {input.manifest} --inputs {input.shards} --out {output} 2> {log}"
