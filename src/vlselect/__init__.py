"""vlselect: choose a small, high-quality subset of multimodal instruction data.

The package implements the InstructionGPT-4 recipe (quality indicators, genuine
quality labels from subset fine-tunes, a learned selector and diversity-aware
selection) as plain functions; ``vlselect.cli`` exposes each step as a
subcommand, and the Snakemake workflow calls those subcommands.
"""

__version__ = "0.1.0"
