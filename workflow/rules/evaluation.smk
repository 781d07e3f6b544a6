# Stage 4: per-category summaries and MLflow logging of the runs' metrics (written by fit_evaluate).


rule category_summary:
    """One CSV per category (every run's metrics.json as a row); the target for rerunning a category,
    which includes its MLflow logging."""
    input:
        metrics=category_metrics,
        tracked=category_tracking,
    output:
        f"{RESULTS}/{{dataset}}/{{category}}/summary.csv",
    # Cluster requests (the local run ignores them).  Measured: a few seconds, under 1 GB peak RSS.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    log:
        f"{RESULTS}/logs/category_summary/{{dataset}}/{{category}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/category_summary/{{dataset}}/{{category}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/category_summary.py"


rule track_category:
    """All runs of one category into MLflow, in one process (see adbench/evaluation/tracking.py)."""
    input:
        category_metrics,
    output:
        f"{RESULTS}/{{dataset}}/{{category}}/mlflow.json",
    params:
        tracking_uri=config["mlflow"]["tracking_uri"],
        experiment=config["mlflow"]["experiment"],
    # Cluster requests (the local run ignores them).  Measured: 8 s per category (default config), under
    # 1 GB peak RSS (CI config).
    # mlflow_db: one unit of the MLflow SQLite store; workflow/profiles/slurm caps it at 1, so two jobs never
    # write the database (on a shared filesystem) at the same time.  A localrule (Snakefile): under a
    # cluster executor it runs where snakemake runs.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
        mlflow_db=1,
    log:
        f"{RESULTS}/logs/track_category/{{dataset}}/{{category}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/track_category/{{dataset}}/{{category}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/track_category.py"
