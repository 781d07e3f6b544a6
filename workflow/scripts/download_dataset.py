from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import download_dataset, job_context

params = snakemake.params
with job_context(snakemake.log[0], snakemake.threads):
    download_dataset(dict(params.source), params.sha256, params.archive_dir, snakemake.output[0])
