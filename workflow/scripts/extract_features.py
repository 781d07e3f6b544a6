from adbench.worker import delegate

delegate(globals())  # runs this job in the resident worker (adbench/worker.py) when there is one

from adbench.jobs import extract_features, job_context

w, params = snakemake.wildcards, snakemake.params
with job_context(snakemake.log[0], params.torch_threads):  # not snakemake.threads (features.smk)
    extract_features(dict(params.source), w.category, w.split, w.backbone, int(w.size), params.weights_dir,
                     params.batch_size, snakemake.output[0], device=params.device,
                     preprocess=params.preprocess)
