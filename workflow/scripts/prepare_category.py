from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import job_context, prepare_category

with job_context(snakemake.log[0], snakemake.threads):
    prepare_category(dict(snakemake.params.source), snakemake.wildcards.category, snakemake.params.image_size,
                     snakemake.output[0])
