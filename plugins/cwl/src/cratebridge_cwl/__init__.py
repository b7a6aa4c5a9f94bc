"""CWL engines for cratebridge: ``cwltool`` (one machine); ``toil`` (clusters)."""

__all__: list[str] = []
