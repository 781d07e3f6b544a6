from adbench.jobs import job_context, summarise_category

with job_context(snakemake.log[0], snakemake.threads):
    summarise_category(list(snakemake.input.metrics), snakemake.output[0])
