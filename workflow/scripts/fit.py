from adbench.evaluate import fit_run
from adbench.jobs import job_context

w = snakemake.wildcards
with job_context(snakemake.log[0], snakemake.threads):
    fit_run(snakemake.config, w.dataset, w.category, w.method, int(w.seed), snakemake.input.train,
            snakemake.output.model, snakemake.output.run, snakemake.input.get("test"))
