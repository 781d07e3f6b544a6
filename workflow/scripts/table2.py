from adbench.jobs import job_context
from adbench.tables import write_table2

with job_context(snakemake.log[0], snakemake.threads):
    write_table2(list(snakemake.input), snakemake.params.dataset, snakemake.params.methods,
                 snakemake.output.csv, snakemake.output.md,
                 dict(snakemake.params.hashes))
