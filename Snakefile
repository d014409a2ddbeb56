# vlselect: InstructionGPT-4 data selection as a Snakemake workflow.
# Dry run: snakemake -n   Run: snakemake --cores 2   Cluster: snakemake --profile profiles/slurm
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/selection.smk"
include: "workflow/rules/final.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
