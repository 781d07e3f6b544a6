from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from pathlib import Path

from adbench.jobs import job_context
from adbench.reporting.tables import write_table

with job_context(snakemake.log[0], snakemake.threads):
    write_table(dict(snakemake.params.spec), list(snakemake.input.metrics), str(Path(snakemake.output.csv).with_suffix("")),
                dict(snakemake.params.hashes))
