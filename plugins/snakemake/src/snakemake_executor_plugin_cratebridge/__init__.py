"""Snakemake discovers executor plugins by package name: this is ``--executor cratebridge``.

The implementation lives in :mod:`cratebridge_snakemake.executor`.
"""

from cratebridge_snakemake.executor import Executor, ExecutorSettings, common_settings

__all__ = ["Executor", "ExecutorSettings", "common_settings"]
