"""cratebridge-snakemake: Snakemake workflows with every rule in the cratebridge sandbox."""
