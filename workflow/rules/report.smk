rule report:
    """One model's main table (CSV + Markdown, the paper's rows beside ours), the paired differences from base and
    window_only with bootstrap intervals (paired.csv, paired.md) and report.md."""
    input:
        metrics=expand("results/{{run}}/{{model}}/{method}/metrics.json", method=METHODS),
        train=expand("results/{{run}}/{{model}}/{method}/train_summary.json", method=TRAINED),
        transfer=expand("results/{{run}}/{{model}}/{method}/transfer_summary.json", method=TRANSFERRED),
        paper=PAPER_CSV,
        profile="results/{run}/{model}/profile.csv",
        coverage="results/{run}/{model}/coverage.csv",
        passkey=expand("results/{{run}}/{{model}}/{method}/passkey.csv", method=METHODS),
        position_loss=expand("results/{{run}}/{{model}}/{method}/position_loss.json", method=METHODS),
    output:
        table=report("results/{run}/{model}/main.csv", category="tables"),
        markdown="results/{run}/{model}/main.md",
        report="results/{run}/{model}/report.md",
        paired=report("results/{run}/{model}/paired.csv", category="tables"),
        paired_markdown="results/{run}/{model}/paired.md",
        passkey="results/{run}/{model}/passkey.csv",
        position_loss="results/{run}/{model}/position_loss.csv",
        position_roles="results/{run}/{model}/position_loss_roles.csv",
        position_plot=report("results/{run}/plots/{model}_position_loss.png", category="probes"),
    params:
        liger=LIGER,
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.table)),  # results/RUN
        methods=",".join(METHODS),
        controls=",".join(CONTROLS) or "''",
        window=WINDOWS[0],
        paper=lambda wc: shlex.quote(config["models"][wc.model]["paper_name"] or ""),
        note=lambda wc: shlex.quote(run_note()),
    log:
        "logs/{run}/{model}/report.log",
    benchmark:
        "logs/{run}/{model}/report.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "{params.liger} report --results {params.results} --model {wildcards.model} --methods {params.methods} "
        "--paper-name {params.paper} --paper-csv {input.paper} --note {params.note} --controls {params.controls} "
        "--window {params.window} > {log} 2>&1"


rule tables:
    """Every model's main table stacked: results/RUN/tables/main.csv and .md."""
    input:
        expand("results/{{run}}/{model}/main.csv", model=MODELS),
    output:
        csv=report("results/{run}/tables/main.csv", category="tables"),
        markdown="results/{run}/tables/main.md",
    params:
        liger=LIGER,
        out="results/{run}/tables",
    log:
        "logs/{run}/tables.log",
    benchmark:
        "logs/{run}/tables.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "{params.liger} report --tables {input} --out {params.out} > {log} 2>&1"


# A target rule per model, e.g. `snakemake --cores 1 smollm2_135m`.
for _model in MODELS:

    rule:
        name:
            _model.replace("-", "_").replace(".", "_")
        input:
            expand("results/{run}/{model}/{method}/{probe}", run=RUN, model=_model, method=METHODS, probe=PROBE_FILES),
            f"results/{RUN}/{_model}/coverage.csv",
            f"results/{RUN}/{_model}/report.md",
        localrule: True
