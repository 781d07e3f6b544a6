# Stage 3: fit each method on a category's cached training split and evaluate it on the test split.
# One job does both (adbench.evaluation.evaluate.fit_run, then evaluate_run): a job's fixed cost (starting Python,
# importing torch, reading the caches) is several seconds, comparable to a reduced-budget fit.


rule fit_evaluate:
    input:
        unpack(fit_inputs),
    output:
        model=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/model.pt",
        run=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/run.json",
        metrics=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/metrics.json",
        scores=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/scores.csv",
        maps=f"{RESULTS}/{{dataset}}/{{category}}/{{method}}/seed{{seed}}/maps.npz",
    params:
        # Everything that determines the run's numbers (its config hash): a change reruns the cell.
        run=lambda w: cell_config(w.dataset, w.category, w.method, int(w.seed)),
        weights_dir=config["backbone"]["weights_dir"],
        # Where to fit and score (auto: CUDA when present); recorded, not hashed (adbench.methods.runs.run_config).
        device=config.get("device", "auto"),
    # One torch thread, whatever --cores says: training results depend on the thread count.
    threads: 1
    # Cluster requests (the local run ignores them).  Measured: 7-25 s per cell (default config), under
    # 1.4 GB peak RSS (CI config); the headroom is for larger configs (config/paper.yaml: 256 px, b6).
    # The GPU is requested by workflow/profiles/slurm (set-resources), so no local run needs one.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    log:
        f"{RESULTS}/logs/fit_evaluate/{{dataset}}/{{category}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_evaluate/{{dataset}}/{{category}}/{{method}}/seed{{seed}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/fit_evaluate.py"
