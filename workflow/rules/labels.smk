# Genuine quality labels: balanced k-means subsets, one fine-tune job and one evaluation job per subset ({k} fans
# out); each job runs labels.seeds seeds, whose mean is the label.
FT = config["finetune"]
# Only the settings a fine-tune uses reach its params, so editing unused ones (LoRA's without trainable: lora, the
# official backend's under the transformers backend) reruns nothing
FT_PARAMS = {k: FT[k] for k in (
    "backend", "trainable", "template", "family", "model_dtype", "gradient_checkpointing", "epochs", "steps",
    "batch_size", "grad_accum", "checkpoint_every", "lr")} | {
    "instruction": config["dataset"]["instruction"], "device": config["scoring"]["device"]}
if FT["trainable"] == "lora":
    FT_PARAMS["lora"] = FT["lora"]
if FT["backend"] == "minigpt4":
    # one converted base for every subset's evaluation, not one per subset
    FT_PARAMS["minigpt4"] = FT["minigpt4"] | {"convert_dir": FT["minigpt4"]["convert_dir"] or f"{R}/minigpt4_base"}
# a fine-tune on several GPUs runs as one process per GPU under torchrun (the official backend launches its own);
# --standalone gives each job its own rendezvous port, so fine-tunes that share a node do not collide
FT_LAUNCH = (f"torchrun --standalone --nproc-per-node {FT['gpus']} -m vlselect.cli"
             if FT["gpus"] > 1 and FT["backend"] == "transformers" else "vlselect")
# the base model is prompted as its fine-tunes are: same family (the template is recorded by each fine-tune)
EVAL_PARAMS = {k: v for k, v in config["evaluate"].items() if k not in ("suite_root", "prompts")} | {
    "device": config["scoring"]["device"], "family": FT["family"], "model_dtype": FT["model_dtype"]}
VLM_INPUTS = toy_inputs(VLM)
LABEL_SEEDS = config["labels"]["seeds"]
# The selector, and so the selector's final fine-tunes, wait for the labels; the random and full final fine-tunes
# wait for nothing. Local runs fit those in around the label jobs, not the other way round.
LABEL_PRIORITY = 10


SUBSET_SPACE = config["labels"]["subset_space"]


rule make_subsets:
    input:
        # subsets cut along the indicators read the scores, never the embeddings; image subsets the reverse
        image=f"{R}/features/image.npy" if SUBSET_SPACE == "image" else [],
        ids=f"{R}/features/ids.parquet" if SUBSET_SPACE == "image" else [],
        manifest=f"{R}/manifest.parquet" if SUBSET_SPACE == "indicators" else [],
        scores=SCORE_FILES if SUBSET_SPACE == "indicators" else [],
    output:
        subsets=f"{R}/labels/subsets.parquet",
        dropped=f"{R}/labels/subsets_dropped.parquet",
    params:
        p=as_json({"n_subsets": config["labels"]["n_subsets"], "seed": config["labels"]["seed"], "space": SUBSET_SPACE}),
        source=(f"--features-dir {R}/features" if SUBSET_SPACE == "image"
                else f"--manifest {R}/manifest.parquet --scores {' '.join(SCORE_FILES)}"),
    priority: LABEL_PRIORITY
    log:
        f"{R}/logs/make_subsets.log",
    benchmark:
        f"{R}/benchmarks/make_subsets.tsv"
    shell:
        "vlselect make-subsets {params.source} --out {output.subsets} --out-dropped {output.dropped} "
        "--params {params.p:q} 2> {log}"


# One job writes every subset's training set, so the subset fine-tunes become ready together and a SLURM
# profile sends them out as one job array (the plugin bundles only jobs that are ready in the same pass).
rule export_subsets:
    input:
        manifest=f"{R}/manifest.parquet",
        subsets=f"{R}/labels/subsets.parquet",
    output:
        [directory(f"{R}/labels/subset_{k}") for k in SUBSETS],
    params:
        p=as_json({"format": EXPORT_FORMAT}),
    priority: LABEL_PRIORITY
    log:
        f"{R}/logs/export_subsets.log",
    benchmark:
        f"{R}/benchmarks/export_subsets.tsv"
    shell:
        "vlselect export-subsets --manifest {input.manifest} --subsets {input.subsets} --out-dirs {output} "
        "--params {params.p:q} 2> {log}"


rule finetune_subset:
    input:
        data=f"{R}/labels/subset_{{k}}",
        base=VLM_INPUTS,
    output:
        directory(f"{R}/labels/models/subset_{{k}}"),
    params:
        p=as_json(FT_PARAMS | {"seeds": [FT["seed"] + i for i in range(LABEL_SEEDS)]}),
        base=VLM,
        launch=FT_LAUNCH,
    wildcard_constraints:
        k=r"\d+",
    log:
        f"{R}/logs/finetune_subset/{{k}}.log",
    benchmark:
        f"{R}/benchmarks/finetune_subset/{{k}}.tsv"
    priority: LABEL_PRIORITY
    threads: RES["finetune"]["cpus"]
    resources:
        **vlm_resources("finetune", runtime_factor=LABEL_SEEDS),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} finetune-seeds --base-model {params.base:q} --train-dir {input.data} "
        "--out-dir {output} --params {params.p:q} 2> {log}"


rule evaluate_subset:
    input:
        model=f"{R}/labels/models/subset_{{k}}",
        # every subset's model, though a job reads only its own: the evaluations then become ready together and go
        # out as one job array, like the fine-tunes
        all_models=expand(f"{R}/labels/models/subset_{{k}}", k=SUBSETS),
        base=VLM_INPUTS,
        suites=toy_inputs(SUITE_ROOT),
    output:
        f"{R}/labels/eval/subset_{{k}}.json",
    params:
        p=as_json(EVAL_PARAMS | {"suites": SUITES, "split": "val"}),
        suite_root=SUITE_ROOT,
    wildcard_constraints:
        k=r"\d+",
    log:
        f"{R}/logs/evaluate_subset/{{k}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_subset/{{k}}.tsv"
    priority: LABEL_PRIORITY
    threads: RES["evaluate"]["cpus"]
    resources:
        **vlm_resources("evaluate", runtime_factor=LABEL_SEEDS),
    shell:
        "OMP_NUM_THREADS={threads} vlselect evaluate --model-dir {input.model} --suite-root {params.suite_root:q} "
        "--out {output} --params {params.p:q} 2> {log}"


rule collect_labels:
    input:
        expand(f"{R}/labels/eval/subset_{{k}}.json", k=SUBSETS),
    output:
        f"{R}/labels/labels.parquet",
    params:
        p=as_json({"suites": SUITE_NAMES}),
    log:
        f"{R}/logs/collect_labels.log",
    benchmark:
        f"{R}/benchmarks/collect_labels.tsv"
    shell:
        "vlselect collect-labels --evals {input} --out {output} --params {params.p:q} 2> {log}"
