from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import job_context, track_all_tables

inp, params = snakemake.input, snakemake.params
with job_context(snakemake.log[0], snakemake.threads):
    track_all_tables(list(inp.cells), dict(params.artifacts), params.tracking_uri, params.experiment, "all_tables",
                     dict(params.run), snakemake.output[0])
