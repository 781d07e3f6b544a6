from adbench.jobs import download_dataset, job_context

params = snakemake.params
with job_context(snakemake.log[0], snakemake.threads):
    download_dataset(dict(params.source), params.sha256, params.archive_dir, snakemake.output[0])
