# The embedded default: generate the toy world and train its tiny models (only when dataset.format == toy).
if TOY:
    # what every toy model trained on images takes besides its own settings
    TOY_COMMON = {"seed": config["toy"]["seed"], "image_size": config["toy"]["image_size"]}

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

    # two toy CLIPs: "clip" scores the answers (its tower is toy.models.clip.tower), "vision" is the toy VLM's
    # image tower (always a ViT, as Blip2's is); they train side by side, one core each
    TOY_CLIP_PARAMS = {"clip": config["toy"]["models"]["clip"] | TOY_COMMON,
                       "vision": config["toy"]["models"]["vision"] | TOY_COMMON | {"tower": "vit"}}

    rule train_toy_clip:
        input:
            f"{R}/toy/corpus/captions.parquet",
        output:
            weights=f"{R}/toy/models/{{which}}/open_clip_model.safetensors",
            config=f"{R}/toy/models/{{which}}/vlselect-toy-clip.json",
            metrics=f"{R}/toy/models/{{which}}/metrics.json",
        wildcard_constraints:
            which="clip|vision",
        params:
            p=lambda w: to_json(TOY_CLIP_PARAMS[w.which]),
            corpus=f"{R}/toy/corpus",
            out=lambda w: f"{R}/toy/models/{w.which}",
        log:
            f"{R}/logs/train_toy_{{which}}.log",
        benchmark:
            f"{R}/benchmarks/train_toy_{{which}}.tsv"
        # one thread: on two, a backward kernel sums in an order that varies between runs once a batch holds each
        # caption's four twins, and the CLIP (and every score after it) would differ in the last bits run to run
        threads: 1
        # the CLIPs are the toy build's longest jobs: on two cores they start first, and the reward model trains
        # once the ViT is done, beside the ResNet, instead of before both
        priority: 1
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
            # the VLM looks through a toy CLIP's ViT (MiniGPT-4 looks through EVA-CLIP)
            vision=f"{R}/toy/models/vision/open_clip_model.safetensors",
        output:
            directory(f"{R}/toy/models/vlm"),
        params:
            p=as_json(config["toy"]["models"]["vlm"] | TOY_COMMON),
            corpus=f"{R}/toy/corpus",
            vision=f"{R}/toy/models/vision",
        log:
            f"{R}/logs/train_toy_vlm.log",
        benchmark:
            f"{R}/benchmarks/train_toy_vlm.tsv"
        threads: 2
        resources:
            mem_mb=4000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} vlselect train-toy-vlm --corpus-dir {params.corpus} --clip-dir {params.vision} "
            "--out-dir {output} --params {params.p:q} 2> {log}"
