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
    "length": [],
    "gpt": [],
}
# GPU scoring jobs ask for a GPU; the profile maps the `gpu` resource onto the cluster's partitions.
SCORE_GPUS = {"clip": 1, "reward": 1, "length": 0, "gpt": 0}

if config["selection"]["external_scores"]:

    rule import_scores:
        input:
            config["selection"]["external_scores"]["path"],
        output:
            expand(f"{R}/scores/{{indicator}}.parquet", indicator=INDICATORS),
        params:
            p=as_json({k: v for k, v in config["selection"]["external_scores"].items() if k != "path"}),
            out=f"{R}/scores",
        log:
            f"{R}/logs/import_scores.log",
        benchmark:
            f"{R}/benchmarks/import_scores.tsv"
        shell:
            "vlselect import-scores --path {input:q} --out-dir {params.out} --params {params.p:q} 2> {log}"

else:

    rule score_shard:
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
            indicator="clip|reward|length|gpt",
        log:
            f"{R}/logs/score/{{indicator}}_{{scatteritem}}.log",
        benchmark:
            f"{R}/benchmarks/score/{{indicator}}_{{scatteritem}}.tsv"
        threads: 2
        resources:
            gpu=lambda w: SCORE_GPUS[w.indicator],
            mem_mb=8000,
            runtime=240,
        shell:
            "OMP_NUM_THREADS={threads} vlselect {params.cmd} --manifest {input.manifest} --out {output} "
            "--shard {params.shard} --n-shards {params.n_shards} --params {params.p:q} 2> {log}"

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
