# FOD reproducibility workflow.  `snakemake --cores all all_tables` regenerates the paper's tables from
# the datasets in config/config.yaml; see README.md for the stages and their outputs.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/methods.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/reporting.smk"


# Bookkeeping jobs run where `snakemake` runs, also under a cluster executor (workflow/profiles/slurm):
# each reads and writes a few small files in seconds, and as a cluster job it would wait for the queue,
# then start Snakemake again on a node (seconds of CPU) to do it.  The MLflow writers (track_*) then
# also stay on one host.  Training, extraction, the significance tests and the figures stay cluster jobs.
localrules:
    category_summary,
    track_category,
    table,
    track_all_tables,
    html_report,
    reproduction,


rule all_tables:
    input:
        all_tables_inputs(),
    default_target: True


onsuccess:
    print_reproduction()
