"""cratebridge-nextflow: runs Nextflow workflows from crates offline, one record per task."""

__all__: list[str] = []
