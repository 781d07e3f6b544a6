# Stage 2: the frozen backbone runs once per image; every method reads the cache.


rule extract_features:
    input:
        data_ready,
    output:
        f"{RESULTS}/features/{{dataset}}/{{category}}/{{backbone}}_{{size}}/{{split}}.pt",
    params:
        dataset=lambda w: config["datasets"][w.dataset],
        weights_dir=config["backbone"]["weights_dir"],
        batch_size=config["backbone"].get("batch_size", 16),
    threads: 2
    log:
        f"{RESULTS}/logs/extract_features/{{dataset}}/{{category}}/{{backbone}}_{{size}}/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_features/{{dataset}}/{{category}}/{{backbone}}_{{size}}/{{split}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/extract_features.py"
