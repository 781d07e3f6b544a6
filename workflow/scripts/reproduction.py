from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from pathlib import Path

from adbench.operations.golden import summary
from adbench.jobs import job_context
from adbench.methods.runs import write_atomic

with job_context(snakemake.log[0], snakemake.threads):
    text = summary(Path(snakemake.output[0]).parent, snakemake.config, list(snakemake.params.overlays))
    print(text)
    write_atomic(snakemake.output[0], text)
