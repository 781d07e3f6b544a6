# Stage 4: score the test split, compute the metrics, log to MLflow.


rule evaluate:
    input:
        test=lambda w: feature_path(w.dataset, w.category, "test"),
        model=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/model.pt",
        run=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/run.json",
    output:
        metrics=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/metrics.json",
        scores=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/scores.csv",
        maps=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/maps.npz",
    threads: 1
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{category}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{dataset}}/{{category}}/{{method}}/seed{{seed}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/evaluate.py"


rule category_summary:
    input:
        category_metrics,
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
