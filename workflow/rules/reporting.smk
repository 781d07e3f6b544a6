# Stage 5: the paper's tables from the runs' metrics.json files.


rule table2:
    input:
        table2_metrics(),
    output:
        csv=f"{RESULTS}/tables/table2.csv",
        md=f"{RESULTS}/tables/table2.md",
    params:
        methods=config["tables"]["table2"]["methods"],
        dataset=config["tables"]["table2"]["dataset"],
        hashes=expected_hashes([config["tables"]["table2"]["dataset"]], config["tables"]["table2"]["methods"]),
    # Cluster requests (the local run ignores them).  Measured: a few seconds, under 1 GB peak RSS.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    log:
        f"{RESULTS}/logs/table2.log",
    benchmark:
        f"{RESULTS}/benchmarks/table2.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/table2.py"


rule table4:
    input:
        table4_metrics(),
    output:
        csv=f"{RESULTS}/tables/table4.csv",
        md=f"{RESULTS}/tables/table4.md",
    params:
        labels={m: ablation_label(config["methods"][m]) for m in config["tables"]["table4"]["methods"]},
        datasets=config["tables"]["table4"]["datasets"],
        hashes=expected_hashes(config["tables"]["table4"]["datasets"], config["tables"]["table4"]["methods"]),
    # Cluster requests (the local run ignores them).  Measured: a few seconds, under 1 GB peak RSS.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    log:
        f"{RESULTS}/logs/table4.log",
    benchmark:
        f"{RESULTS}/benchmarks/table4.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/table4.py"
