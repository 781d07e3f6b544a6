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
    log:
        f"{RESULTS}/logs/table2.log",
    benchmark:
        f"{RESULTS}/benchmarks/table2.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/table2.py"
