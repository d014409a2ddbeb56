"""Fixtures shared by the end-to-end tests."""

import pytest

from workflow_helpers import snakemake, tiny_config, write_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole workflow on the tiny toy world, run locally once per test session: (workdir, config).

    The end-to-end tests check its outputs; the SLURM test compares a cluster run's outputs with them.
    """
    workdir = tmp_path_factory.mktemp("tiny_run")
    config = tiny_config()
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2")
    return workdir, config
