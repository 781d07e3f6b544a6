from adbench.jobs import job_context
from adbench.tables import write_table4

with job_context(snakemake.log[0], snakemake.threads):
    write_table4(list(snakemake.input), dict(snakemake.params.labels), snakemake.params.datasets,
                 snakemake.output.csv, snakemake.output.md,
                 dict(snakemake.params.hashes))
