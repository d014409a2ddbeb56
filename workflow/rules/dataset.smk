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
        # outside the outputs, which Snakemake deletes when the import stops on dataset.max_bad_fraction
        quarantine_copy=f"{R}/logs/quarantine_rejected.parquet",
    log:
        f"{R}/logs/import_dataset.log",
    benchmark:
        f"{R}/benchmarks/import_dataset.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "vlselect import --root {params.root:q} --out-manifest {output.manifest} --out-quarantine {output.quarantine} "
        "--quarantine-copy {params.quarantine_copy:q} --params {params.p:q} 2> {log}"
