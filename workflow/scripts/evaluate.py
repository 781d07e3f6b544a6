from pathlib import Path

from adbench.evaluate import evaluate_run
from adbench.jobs import job_context

with job_context(snakemake.log[0], snakemake.threads):
    evaluate_run(snakemake.config, snakemake.wildcards.method, snakemake.input.test, snakemake.input.model,
                 snakemake.input.run, Path(snakemake.output.metrics).parent)
