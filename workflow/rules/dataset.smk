# Import the dataset into one manifest, quarantining bad examples with a reason each.


rule import_dataset:
    input:
        toy_inputs(f"{R}/toy/dataset/filter_cap.json"),
    output:
        manifest=f"{R}/manifest.parquet",
        quarantine=f"{R}/quarantine.parquet",
    params:
        p=as_json({k: v for k, v in config["dataset"].items() if k != "root"}),
        root=DATA_ROOT,
    log:
        f"{R}/logs/import_dataset.log",
    benchmark:
        f"{R}/benchmarks/import_dataset.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "vlselect import --root {params.root:q} --out-manifest {output.manifest} --out-quarantine {output.quarantine} "
        "--params {params.p:q} 2> {log}"
