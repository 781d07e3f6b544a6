# Stage 2: the frozen backbone runs once per image; every method reads the cache.


rule extract_features:
    input:
        data_ready,
    output:
        f"{RESULTS}/features/{{dataset}}/{{category}}/{{backbone}}_{{size}}/{{split}}.pt",
    params:
        source=lambda w: dataset_source(w.dataset),
        weights_dir=config["backbone"]["weights_dir"],
        batch_size=config["backbone"].get("batch_size", 16),
        cpu_isa=config["determinism"]["cpu_isa"],  # the features' last bits depend on it
    # Features are bit-identical with 1 or 2 torch threads (so --cores 1 gives the same cache).
    threads: 2
    log:
        f"{RESULTS}/logs/extract_features/{{dataset}}/{{category}}/{{backbone}}_{{size}}/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_features/{{dataset}}/{{category}}/{{backbone}}_{{size}}/{{split}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/extract_features.py"
