from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import job_context
from adbench.reporting.significance import write_significance
from adbench.reporting.tables import load_metrics

inp, out, params = snakemake.input, snakemake.output, snakemake.params
with job_context(snakemake.log[0], snakemake.threads):
    load_metrics(list(inp.metrics), dict(params.hashes))  # refuses runs made with other settings
    write_significance(params.results, params.dataset, params.categories, params.methods, params.reference,
                       seeds_of=dict(params.seeds), feature_tag=params.feature_tag, n_boot=params.n_boot,
                       csv_out=out.csv, md_out=out.md)
