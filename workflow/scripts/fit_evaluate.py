from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from pathlib import Path

from adbench.evaluation.evaluate import evaluate_run, fit_run
from adbench.jobs import job_context

inp, out, params = snakemake.input, snakemake.output, snakemake.params
with job_context(snakemake.log[0], snakemake.threads):
    fit_run(dict(params.run), snakemake.wildcards.category, inp.train, out.model, out.run, inp.test,
            params.weights_dir, device=params.device)
    evaluate_run(inp.test, out.model, out.run, Path(out.metrics).parent, device=params.device)
