# Stage 2: the frozen backbone runs once per image; every method reads the cache.

# Torch threads of every extraction, whatever --cores says: the backbone's convolutions give other last
# bits on 1 thread than on 2 (up to 3e-5 on the default config), so the cache must not depend on the
# cores a run was given (tests/test_workflow.py::test_one_core_extracts_the_same_features).
EXTRACTION_THREADS = 2


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
        torch_threads=EXTRACTION_THREADS,  # and so do they on the thread count (above)
    # The job's share of the cores for Snakemake's scheduler: one.  An extraction is a second or two of work
    # per split in make run; asking for two cores made it wait for both, so at each category's turn one
    # core stood idle while a fit finished (about 25 s of make run's wall time).  Its 2 torch threads
    # overlap another job for that second or two, which changes no number.
    threads: 1
    # Cluster requests (the local run ignores them): a CPU per torch thread.  Measured: 2 s per split for
    # the default config, about 1 GB peak RSS for the CI config; memory and time doubled on a retry.
    resources:
        cpus_per_task=EXTRACTION_THREADS,
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
