# Stage 1: the images.  Embedded categories are generated; real datasets are found on disk or downloaded.


rule generate_embedded:
    output:
        f"{RESULTS}/data/{{dataset}}/{{category}}.ready",
    params:
        root=lambda w: config["datasets"][w.dataset]["root"],
        generator=lambda w: config["datasets"][w.dataset].get("generator", {}),
    log:
        f"{RESULTS}/logs/generate_embedded/{{dataset}}/{{category}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/generate_embedded/{{dataset}}/{{category}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/generate_embedded.py"


rule prepare_dataset:
    output:
        f"{RESULTS}/data/{{dataset}}/dataset.ready",
    params:
        dataset=lambda w: config["datasets"][w.dataset],
        archive_dir=lambda w: config["datasets"][w.dataset].get("archive_dir", f"{RESULTS}/downloads"),
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/prepare_dataset.py"


for _ds, _entry in config["datasets"].items():
    if _entry["kind"] != "embedded":

        rule:
            name:
                f"download_{_ds}"
            input:
                f"{RESULTS}/data/{_ds}/dataset.ready",
            default_target: False
