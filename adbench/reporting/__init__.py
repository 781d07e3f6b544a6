"""Stage 5 of the DAG: the paper's tables, significance tests, figures and the HTML report."""
