# Stage 3: fit each method on a category's cached training split.


rule fit:
    input:
        unpack(fit_inputs),
    output:
        model=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/model.pt",
        run=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/run.json",
    threads: 1
    log:
        f"{RESULTS}/logs/fit/{{dataset}}/{{category}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit/{{dataset}}/{{category}}/{{method}}/seed{{seed}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/fit.py"
