from adbench.jobs import job_context, prepare_dataset

with job_context(snakemake.log[0], snakemake.threads):
    prepare_dataset(snakemake.params.dataset, snakemake.params.archive_dir, snakemake.output[0])
