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


rule all_tables:
    input:
        all_tables_inputs(),
    default_target: True


onsuccess:
    print_reproduction()
