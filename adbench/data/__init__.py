"""Stage 1 of the DAG: the datasets (the embedded generator, MVTec-style layouts, downloads)."""
