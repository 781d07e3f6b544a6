from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import generate_embedded, job_context

with job_context(snakemake.log[0], snakemake.threads):
    generate_embedded(snakemake.params.root, snakemake.wildcards.category, snakemake.params.generator,
                      snakemake.output[0])
