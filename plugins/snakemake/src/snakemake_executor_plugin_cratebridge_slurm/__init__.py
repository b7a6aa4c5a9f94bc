"""Snakemake discovers executor plugins by package name: this is ``--executor cratebridge-slurm``.

The implementation lives in :mod:`cratebridge_snakemake.slurm`; it builds on
``snakemake-executor-plugin-slurm``, a dependency of cratebridge-snakemake.
"""

from cratebridge_snakemake.slurm import Executor, ExecutorSettings, common_settings

__all__ = ["Executor", "ExecutorSettings", "common_settings"]
