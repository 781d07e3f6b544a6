"""Stage 4 of the DAG: one cell fitted and scored (evaluate), its metrics, file digests and MLflow record,
and the learning check."""
