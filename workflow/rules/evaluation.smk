# Stage 4: per-category summaries and MLflow logging of the runs' metrics (written by fit_evaluate).


rule category_summary:
    """One CSV per category (every run's metrics.json as a row); the target for rerunning a category,
    which includes its MLflow logging."""
    input:
        metrics=category_metrics,
        tracked=category_tracking,
    output:
        f"{RESULTS}/{{dataset}}/{{category}}/summary.csv",
    log:
        f"{RESULTS}/logs/category_summary/{{dataset}}/{{category}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/category_summary/{{dataset}}/{{category}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/category_summary.py"


rule track_category:
    """All runs of one category into MLflow, in one process (see adbench/tracking.py)."""
    input:
        category_metrics,
    output:
        f"{RESULTS}/{{dataset}}/{{category}}/mlflow.json",
    params:
        tracking_uri=config["mlflow"]["tracking_uri"],
        experiment=config["mlflow"]["experiment"],
    log:
        f"{RESULTS}/logs/track_category/{{dataset}}/{{category}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/track_category/{{dataset}}/{{category}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/track_category.py"
