# The final comparison: fine-tune on each selection (several seeds), evaluate on the test suites, judge pairwise.
FINAL = config["final"]
FINAL_MODELS = final_models()
JUDGE = config["judge"]
JUDGE_PAIRS = [("selector_seed0", other) for other in ("base", "random_seed0", "full_seed0") if other in FINAL_MODELS]


def final_train_dir(w):
    method, seed = w.method, int(w.seed)
    return f"{R}/selection/{selection_key(method, seed)}/dataset"


def final_model_dir(w):
    """The base model is evaluated as it is; every other model is a fine-tune's output."""
    return VLM_INPUTS if w.model == "base" else [f"{R}/final/models/{w.model}"]


rule finetune_final:
    input:
        data=final_train_dir,
        base=VLM_INPUTS,
    output:
        directory(f"{R}/final/models/{{method}}_seed{{seed}}"),
    params:
        p=lambda w: to_json(FT_PARAMS | {"seed": FT["seed"] + int(w.seed)}),
        base=VLM,
        launch=FT_LAUNCH,
    wildcard_constraints:
        method=r"[a-z_]+",
        seed=r"\d+",
    log:
        f"{R}/logs/finetune_final/{{method}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/finetune_final/{{method}}_seed{{seed}}.tsv"
    threads: RES["finetune"]["cpus"]
    resources:
        **vlm_resources("finetune"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} finetune --base-model {params.base:q} --train-dir {input.data} "
        "--out-dir {output} --params {params.p:q} 2> {log}"


rule evaluate_final:
    input:
        model=final_model_dir,
        base=VLM_INPUTS,
        suites=toy_inputs(SUITE_ROOT),
    output:
        f"{R}/final/eval/{{model}}.json",
    params:
        p=as_json(EVAL_PARAMS | {"suites": FINAL_SUITES, "split": "test"}),
        model=lambda w: VLM if w.model == "base" else f"{R}/final/models/{w.model}",
        suite_root=SUITE_ROOT,
    wildcard_constraints:
        model=r"base|[a-z_]+_seed\d+",
    log:
        f"{R}/logs/evaluate_final/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_final/{{model}}.tsv"
    threads: RES["evaluate"]["cpus"]
    resources:
        **vlm_resources("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} vlselect evaluate --model-dir {params.model:q} --suite-root {params.suite_root:q} "
        "--out {output} --params {params.p:q} 2> {log}"


rule final_table:
    input:
        expand(f"{R}/final/eval/{{model}}.json", model=FINAL_MODELS),
    output:
        csv=f"{R}/final/table.csv",
        md=f"{R}/final/table.md",
    params:
        p=as_json({"methods_order": FINAL["methods"], "suites_order": TABLE_SUITE_NAMES}),
    log:
        f"{R}/logs/final_table.log",
    benchmark:
        f"{R}/benchmarks/final_table.tsv"
    shell:
        "vlselect final-table --evals {input} --out-csv {output.csv} --out-md {output.md} --params {params.p:q} 2> {log}"


rule judge_pair:
    input:
        a=f"{R}/final/eval/{{a}}.json",
        b=f"{R}/final/eval/{{b}}.json",
        suites=toy_inputs(SUITE_ROOT),
    output:
        f"{R}/final/judge/{{a}}_vs_{{b}}.json",
    params:
        p=as_json(JUDGE | {"cache_dir": config["cache_dir"]}),
        suite_root=SUITE_ROOT,
    wildcard_constraints:
        a=r"base|[a-z_]+_seed\d+",
        b=r"base|[a-z_]+_seed\d+",
    log:
        f"{R}/logs/judge/{{a}}_vs_{{b}}.log",
    benchmark:
        f"{R}/benchmarks/judge/{{a}}_vs_{{b}}.tsv"
    shell:
        "vlselect judge --eval-a {input.a} --eval-b {input.b} --suite-root {params.suite_root:q} --out {output} "
        "--params {params.p:q} 2> {log}"


rule merge_judgements:
    input:
        [f"{R}/final/judge/{a}_vs_{b}.json" for a, b in JUDGE_PAIRS],
    output:
        f"{R}/final/judge.json",
    log:
        f"{R}/logs/merge_judgements.log",
    benchmark:
        f"{R}/benchmarks/merge_judgements.tsv"
    shell:
        "vlselect merge-judgements --inputs {input} --out {output} 2> {log}"
