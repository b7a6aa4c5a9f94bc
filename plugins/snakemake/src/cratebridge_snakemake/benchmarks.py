"""A ``benchmark:`` file for a job whose command ran in a container.

Snakemake measures a job's processes itself when it runs them; ours run in
a container started through the broker, out of its sight. So the file holds
what the executor measured: the wall-clock time of the job's ``docker run``
(container start included), once, with ``NA`` for memory, I/O and CPU, in
Snakemake's own format (TSV, or JSON lines for a ``.jsonl`` file;
``--benchmark-extended`` columns when asked for).
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_benchmark"]


def write_benchmark(job: Any, path: str, seconds: float, extended: bool) -> None:
    """Write ``path`` for ``job`` (a Snakemake job) that ran for ``seconds``."""
    from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

    record = BenchmarkRecord(running_time=seconds)
    # as Snakemake's local executor fills in a record (its constructor keeps tuples)
    record.jobid, record.rule_name = job.jobid, job.rule.name
    record.wildcards, record.params, record.resources = job.wildcards, job.params, job.resources
    record.threads, record.input = job.threads, [str(f) for f in job.input]
    write_benchmark_records([record], path, extended)
