from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.reporting.evidence import draw_figures
from adbench.jobs import job_context

params = snakemake.params
with job_context(snakemake.log[0], snakemake.threads):
    draw_figures(params.results, params.dataset, params.categories, params.methods, dict(params.seeds),
                 params.curve_methods, params.feature_tag, params.out, dict(params.hashes))
