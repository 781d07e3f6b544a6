# Stage 5: the evidence, from the runs' files: the paper's Tables 1-4 (and a per-category pixel table) in
# CSV, Markdown and LaTeX; significance tests; figures; a self-contained HTML report; one MLflow parent run.
# Every output below is also wrapped in report(...), so `snakemake all_tables --report results/snakemake_report.html`
# builds Snakemake's own report of the same results.


rule table:
    """One of the paper's tables (``TABLE_SPECS``): reads the metrics.json of the runs it covers, and refuses
    any made with other settings than the current config's (config hash), and any whose scores.csv or
    maps.npz differ from the digests it records or whose image AUROC is not that of its scores.csv
    (adbench.evaluation.integrity)."""
    input:
        metrics=lambda w: metrics_files(*table_runs(w.name)),
        checked=lambda w: [p.replace("metrics.json", f) for p in metrics_files(*table_runs(w.name))
                           for f in ("scores.csv", "maps.npz")],
    output:
        csv=report(f"{TABLES}/{{name}}.csv", caption="../report/table.rst", category="Tables",
                   labels=lambda w: {"table": w.name}),
        md=f"{TABLES}/{{name}}.md",
        tex=f"{TABLES}/{{name}}.tex",
    params:
        spec=lambda w: TABLE_SPECS[w.name],
        hashes=lambda w: expected_hashes(*table_runs(w.name)),
    wildcard_constraints:
        name="|".join(TABLE_SPECS),
    # Cluster requests (the local run ignores them).  Measured: a few seconds, under 1 GB peak RSS.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    log:
        f"{RESULTS}/logs/table/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/table/{{name}}.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/table.py"


rule significance:
    """Table 2's reference method (FOD) against each other method: DeLong per category (Holm-corrected),
    paired bootstrap CIs over test images (image and pixel AUROC), Wilcoxon and Friedman/Nemenyi across
    categories (adbench.reporting.significance)."""
    input:
        metrics=table2_run_files("metrics.json"),
        scores=table2_run_files("scores.csv"),
        maps=table2_run_files("maps.npz"),
        features=table2_test_features(),
    output:
        csv=report(f"{TABLES}/significance.csv", caption="../report/significance.rst", category="Significance"),
        md=f"{TABLES}/significance.md",
    params:
        results=lambda w, output: str(Path(output.md).parent.parent),  # RESULTS
        dataset=TABLE2["dataset"],
        categories=config["datasets"][TABLE2["dataset"]]["categories"],
        methods=TABLE2["methods"],
        seeds=method_seed_map(TABLE2["methods"]),
        reference=SIGNIFICANCE["reference"],
        n_boot=SIGNIFICANCE["n_boot"],
        feature_tag=FEATURE_TAG,
        hashes=expected_hashes([TABLE2["dataset"]], TABLE2["methods"]),
    # Cluster requests (the local run ignores them).  Measured: about 20 s for the default config.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    log:
        f"{RESULTS}/logs/significance.log",
    benchmark:
        f"{RESULTS}/benchmarks/significance.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/significance.py"


rule figures:
    """AUROC heatmaps, the critical-difference diagram, ROC curves and map galleries per category, FOD's
    training curves and (when the paper has the dataset) reproduced-vs-paper values (adbench.reporting.figures)."""
    input:
        metrics=table2_run_files("metrics.json"),
        scores=table2_run_files("scores.csv"),
        maps=table2_run_files("maps.npz"),
        runs=table2_run_files("run.json"),
        features=table2_test_features(),
    output:
        [report(f"{FIGURES}/{stem}.png", caption="../report/figure.rst", category="Figures",
                labels={"figure": stem}) for stem in figure_stems()],
        [f"{FIGURES}/{stem}.pdf" for stem in figure_stems()],
    params:
        results=lambda w, output: str(Path(output[0]).parent.parent),  # RESULTS
        dataset=TABLE2["dataset"],
        categories=config["datasets"][TABLE2["dataset"]]["categories"],
        methods=TABLE2["methods"],
        seeds=method_seed_map(TABLE2["methods"]),
        curve_methods=curve_methods(),
        feature_tag=FEATURE_TAG,
        out=lambda w, output: str(Path(output[0]).parent),  # FIGURES
        hashes=expected_hashes([TABLE2["dataset"]], TABLE2["methods"]),
    # Cluster requests (the local run ignores them).  Measured: about 30 s for the default config.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    log:
        f"{RESULTS}/logs/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/figures.py"


rule html_report:
    """Every table and figure in one self-contained HTML file (adbench.reporting.report); open it in any browser."""
    input:
        tables=[table_files(name)["csv"] for name in table_names()],
        markdown=[table_files(name)["md"] for name in table_names()],
        significance=significance_files()[1:],
        figures=[f"{FIGURES}/{stem}.png" for stem in figure_stems()],
    output:
        report(f"{RESULTS}/report.html", caption="../report/html_report.rst", category="Report"),
    params:
        names=table_names(),
        emphasis={name: EMPHASIS[TABLE_SPECS[name]["kind"]] for name in table_names()},
        provenance={"config": ", ".join(["config/config.yaml", *OVERLAYS]), "results": RESULTS,
                    "backbone": f"{BACKBONE} at {SIZE} px"},
    # Cluster requests (the local run ignores them).  Measured: a few seconds.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    log:
        f"{RESULTS}/logs/html_report.log",
    benchmark:
        f"{RESULTS}/benchmarks/html_report.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/html_report.py"


rule track_all_tables:
    """One MLflow parent run for this all_tables execution: the tables, figures and report as artifacts, every
    cell's run nested under it (adbench.evaluation.tracking.log_parent)."""
    input:
        cells=[f"{RESULTS}/{ds}/{c}/mlflow.json" for ds in config["run"]["datasets"]
               for c in config["datasets"][ds]["categories"]],
        tables=[f for name in table_names() for f in table_files(name).values()],
        significance=significance_files(),
        figures=[f"{FIGURES}/{stem}.{ext}" for stem in figure_stems() for ext in ("png", "pdf")],
        report=f"{RESULTS}/report.html",
    output:
        f"{RESULTS}/mlflow_parent.json",
    params:
        tracking_uri=config["mlflow"]["tracking_uri"],
        experiment=config["mlflow"]["experiment"],
        artifacts={"tables": TABLES, "figures": FIGURES, "report.html": f"{RESULTS}/report.html"},
        run={"datasets": config["run"]["datasets"], "methods": config["run"]["methods"],
             "seeds": config["run"]["seeds"], "one_seed": config["run"].get("one_seed", []),
             "backbone": BACKBONE, "image_size": SIZE, "config_files": ["config/config.yaml", *OVERLAYS]},
    # Cluster requests (the local run ignores them); mlflow_db: see track_category.
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
        mlflow_db=1,
    log:
        f"{RESULTS}/logs/track_all_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/track_all_tables.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/track_all_tables.py"


rule reproduction:
    """What the run reproduced: Table 2's means, the exact comparison with the committed golden files of this
    config (results/reference/<name>/, adbench.operations.golden; "no committed reference" for other configs), and where
    the outputs are.  Printed at the end of a successful run (onsuccess, Snakefile)."""
    input:
        tables=[f for name in table_names() for f in table_files(name).values()],
        significance=significance_files(),
        metrics=metrics_files(config["run"]["datasets"], config["run"]["methods"]),
    output:
        REPRODUCTION,
    params:
        overlays=OVERLAYS,
        golden=folder_digest(reference_named(OVERLAYS)),
        hashes=expected_hashes(config["run"]["datasets"], config["run"]["methods"]),
    resources:
        cpus_per_task=lambda wc, threads: threads,
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    log:
        f"{RESULTS}/logs/reproduction.log",
    benchmark:
        f"{RESULTS}/benchmarks/reproduction.tsv"
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/reproduction.py"
