"""Cluster glue: config, the `harvest` CLI, local Ray or job submission, metrics, the pipeline."""
