# The embedded default: generate the toy world and train its tiny models (only when dataset.format == toy).
if TOY:

    rule toy_world:
        output:
            dataset=f"{R}/toy/dataset/filter_cap.json",
            truth=f"{R}/toy/truth.parquet",
            captions=f"{R}/toy/corpus/captions.parquet",
            preferences=f"{R}/toy/corpus/preferences.parquet",
            qa=f"{R}/toy/corpus/qa.parquet",
            suites=directory(f"{R}/toy/suites"),
        params:
            p=as_json({k: config["toy"][k] for k in ("seed", "n_examples", "image_size", "corpus_size", "suite_size", "flaw_rates")}),
            out=f"{R}/toy",
        log:
            f"{R}/logs/toy_world.log",
        benchmark:
            f"{R}/benchmarks/toy_world.tsv"
        resources:
            mem_mb=2000,
            runtime=20,
        shell:
            "vlselect toy-world --out-dir {params.out} --params {params.p:q} 2> {log}"

    rule train_toy_clip:
        input:
            f"{R}/toy/corpus/captions.parquet",
        output:
            weights=f"{R}/toy/models/clip/open_clip_model.safetensors",
            config=f"{R}/toy/models/clip/vlselect-toy-clip.json",
            metrics=f"{R}/toy/models/clip/metrics.json",
        params:
            p=as_json({**config["toy"]["models"]["clip"], "seed": config["toy"]["seed"], "image_size": config["toy"]["image_size"]}),
            corpus=f"{R}/toy/corpus",
            out=f"{R}/toy/models/clip",
        log:
            f"{R}/logs/train_toy_clip.log",
        benchmark:
            f"{R}/benchmarks/train_toy_clip.tsv"
        # one thread: on two, a backward kernel sums in an order that varies between runs once a batch holds each
        # caption's four twins, and the CLIP (and every score after it) would differ in the last bits run to run
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} vlselect train-toy-clip --corpus-dir {params.corpus} --out-dir {params.out} "
            "--params {params.p:q} 2> {log}"

    rule train_toy_reward:
        input:
            f"{R}/toy/corpus/preferences.parquet",
        output:
            directory(f"{R}/toy/models/reward"),
        params:
            p=as_json({**config["toy"]["models"]["reward"], "seed": config["toy"]["seed"]}),
            corpus=f"{R}/toy/corpus",
        log:
            f"{R}/logs/train_toy_reward.log",
        benchmark:
            f"{R}/benchmarks/train_toy_reward.tsv"
        # one thread, so it trains beside the one-thread CLIP instead of waiting for a second free core
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} vlselect train-toy-reward --corpus-dir {params.corpus} --out-dir {output} "
            "--params {params.p:q} 2> {log}"

    rule train_toy_vlm:
        input:
            captions=f"{R}/toy/corpus/captions.parquet",
            qa=f"{R}/toy/corpus/qa.parquet",
            # the VLM looks through the toy CLIP's image tower (MiniGPT-4 looks through EVA-CLIP)
            clip=f"{R}/toy/models/clip/open_clip_model.safetensors",
        output:
            directory(f"{R}/toy/models/vlm"),
        params:
            p=as_json({**config["toy"]["models"]["vlm"], "seed": config["toy"]["seed"], "image_size": config["toy"]["image_size"]}),
            corpus=f"{R}/toy/corpus",
            clip=f"{R}/toy/models/clip",
        log:
            f"{R}/logs/train_toy_vlm.log",
        benchmark:
            f"{R}/benchmarks/train_toy_vlm.tsv"
        threads: 2
        resources:
            mem_mb=4000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} vlselect train-toy-vlm --corpus-dir {params.corpus} --clip-dir {params.clip} "
            "--out-dir {output} --params {params.p:q} 2> {log}"
