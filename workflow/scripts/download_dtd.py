from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import download_dtd, job_context

with job_context(snakemake.log[0], snakemake.threads):
    download_dtd(snakemake.params.url, snakemake.params.archive_dir, snakemake.params.root, snakemake.output[0])
