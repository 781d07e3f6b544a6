from adbench.jobs import extract_features, job_context

w = snakemake.wildcards
with job_context(snakemake.log[0], snakemake.threads):
    extract_features(w.dataset, snakemake.params.dataset, w.category, w.split, w.backbone, int(w.size),
                     snakemake.params.weights_dir, snakemake.params.batch_size, snakemake.output[0])
