from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import job_context, summarise_category

with job_context(snakemake.log[0], snakemake.threads):
    summarise_category(list(snakemake.input.metrics), snakemake.output[0])
