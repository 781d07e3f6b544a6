from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import job_context
from adbench.reporting.report import benchmark_report
from adbench.evaluation.tracking import git_commit

inp, params = snakemake.input, snakemake.params
with job_context(snakemake.log[0], snakemake.threads):
    tables = {name: (csv, md, params.emphasis[name]) for name, csv, md in zip(params.names, inp.tables, inp.markdown)}
    benchmark_report(tables, next(iter(inp.significance), None), list(inp.figures), snakemake.output[0],
                     {"git commit": git_commit(), **params.provenance})
