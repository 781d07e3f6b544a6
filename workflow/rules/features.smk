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
        preprocess=config["backbone"]["preprocess"],
        cpu_isa=config["determinism"]["cpu_isa"],  # the features' last bits depend on it
        device=config.get("device", "auto"),  # so do they on the device (auto: CUDA when present)
    # Features are bit-identical with 1 or 2 torch threads (so --cores 1 gives the same cache).
    threads: 2
    # Cluster requests (the local run ignores them): as many CPUs as threads.  Measured: 7 s per split for
    # the default config, about 1 GB peak RSS for the CI config; memory and time doubled on a retry.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    log:
        f"{RESULTS}/logs/extract_features/{{dataset}}/{{category}}/{{backbone}}_{{size}}/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_features/{{dataset}}/{{category}}/{{backbone}}_{{size}}/{{split}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/extract_features.py"
