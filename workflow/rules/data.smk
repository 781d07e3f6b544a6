# Stage 1: the images.  Embedded categories are generated; real datasets are found on disk or downloaded.


rule generate_embedded:
    output:
        f"{RESULTS}/data/{{dataset}}/{{category}}.generated",
    params:
        root=lambda w: config["datasets"][w.dataset]["root"],
        generator=lambda w: config["datasets"][w.dataset].get("generator", {}),
    # Cluster requests (the local run ignores them).  Measured: 9 s per category for the default config,
    # under 1 GB peak RSS for the CI config; doubled on a retry (workflow/profiles/slurm's retries).
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 15 * attempt,
    log:
        f"{RESULTS}/logs/generate_embedded/{{dataset}}/{{category}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/generate_embedded/{{dataset}}/{{category}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/generate_embedded.py"


rule download_dataset:
    """A real dataset's archive, downloaded, checked and unpacked into its root (all categories at once);
    needed only by categories missing from the root (see ``download_marker``)."""
    output:
        f"{RESULTS}/downloads/{{dataset}}.done",
    params:
        source=lambda w: dataset_source(w.dataset),
        sha256=lambda w: config["datasets"][w.dataset].get("sha256"),
        archive_dir=lambda w: config["datasets"][w.dataset].get("archive_dir", f"{RESULTS}/downloads"),
    # Cluster requests: a multi-GB archive over a slow link, then unpacked (runtime in minutes).
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
    log:
        f"{RESULTS}/logs/download_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/download_dataset/{{dataset}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/download_dataset.py"


rule prepare_category:
    """One category of a real dataset, found on disk: every image and mask decoded and checked before the
    marker is written.  One marker per category, so adding a category to the config prepares (and
    extracts, fits) only that one."""
    input:
        download_marker,
    output:
        f"{RESULTS}/data/{{dataset}}/{{category}}.verified",
    params:
        source=lambda w: dataset_source(w.dataset),
        image_size=SIZE,  # images smaller than this are warned about (upsampled)
    # Cluster requests: decodes every image and mask of one category (full-size MVTec AD images).
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    log:
        f"{RESULTS}/logs/prepare_category/{{dataset}}/{{category}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_category/{{dataset}}/{{category}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/prepare_category.py"


for _ds, _entry in config["datasets"].items():
    if _entry["kind"] != "embedded":

        rule:
            name:
                f"download_{_ds}"
            input:
                f"{RESULTS}/downloads/{_ds}.done",
            default_target: False


rule download_dtd:
    """DRAEM's original anomaly source; set the draem params `anomaly_source: dtd` and
    `dtd_root: <results>/data/dtd` to use it (the default uses offline textures)."""
    output:
        f"{RESULTS}/data/dtd.ready",
    params:
        url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        root=lambda w, output: output[0].removesuffix(".ready"),  # DTD_ROOT
        archive_dir=f"{RESULTS}/downloads",
    # Cluster requests: a 600 MB archive, downloaded and unpacked.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    log:
        f"{RESULTS}/logs/download_dtd.log",
    benchmark:
        f"{RESULTS}/benchmarks/download_dtd.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/download_dtd.py"
