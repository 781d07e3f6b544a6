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


rule download_dtd:
    """DRAEM's original anomaly source; set the draem params `anomaly_source: dtd` and
    `dtd_root: <results>/data/dtd` to use it (the default uses offline textures)."""
    output:
        f"{RESULTS}/data/dtd.ready",
    params:
        url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        root=f"{RESULTS}/data/dtd",
        archive_dir=f"{RESULTS}/downloads",
    log:
        f"{RESULTS}/logs/download_dtd.log",
    benchmark:
        f"{RESULTS}/benchmarks/download_dtd.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/download_dtd.py"
