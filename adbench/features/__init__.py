"""Stage 2 of the DAG: the frozen backbone and the per-split feature cache every method reads."""
