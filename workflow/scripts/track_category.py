from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from pathlib import Path

from adbench.jobs import job_context, track_category

with job_context(snakemake.log[0], snakemake.threads):
    track_category([str(Path(p).parent) for p in snakemake.input], snakemake.params.tracking_uri,
                   snakemake.params.experiment, snakemake.output[0])
