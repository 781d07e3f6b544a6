from pathlib import Path

from adbench.evaluate import evaluate_run, fit_run
from adbench.jobs import job_context

w, inp, out = snakemake.wildcards, snakemake.input, snakemake.output
with job_context(snakemake.log[0], snakemake.threads):
    fit_run(snakemake.config, w.dataset, w.category, w.method, int(w.seed), inp.train, out.model, out.run,
            inp.test)
    evaluate_run(snakemake.config, w.method, inp.test, out.model, out.run, Path(out.metrics).parent)
