rule report:
    """One model's main table (CSV + Markdown, the paper's rows beside ours), the paired differences from base and
    window_only with bootstrap intervals (paired.csv, paired.md) and report.md."""
    input:
        metrics=expand("results/{{model}}/{method}/metrics.json", method=METHODS),
        train=expand("results/{{model}}/{method}/train_summary.json", method=TRAINED),
        transfer=expand("results/{{model}}/{method}/transfer_summary.json", method=LOLCATS),
        paper=PAPER_CSV,
        profile="results/{model}/profile.csv",
        coverage="results/{model}/coverage.csv",
        passkey=expand("results/{{model}}/{method}/passkey.csv", method=METHODS),
        position_loss=expand("results/{{model}}/{method}/position_loss.json", method=METHODS),
    output:
        table=report("results/{model}/main.csv", category="tables"),
        markdown="results/{model}/main.md",
        report="results/{model}/report.md",
        paired=report("results/{model}/paired.csv", category="tables"),
        paired_markdown="results/{model}/paired.md",
        passkey="results/{model}/passkey.csv",
        position_loss="results/{model}/position_loss.csv",
        position_roles="results/{model}/position_loss_roles.csv",
        position_plot=report("results/plots/{model}_position_loss.png", category="probes"),
    params:
        methods=",".join(METHODS),
        controls=",".join(CONTROLS) or "''",
        window=WINDOWS[0],
        paper=lambda wc: shlex.quote(config["models"][wc.model].get("paper_name", "")),
        note=lambda wc: shlex.quote(run_note()),
    log:
        "logs/{model}/report.log",
    benchmark:
        "logs/{model}/report.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "python -m liger report --model {wildcards.model} --methods {params.methods} --paper-name {params.paper} "
        "--paper-csv {input.paper} --note {params.note} --controls {params.controls} --window {params.window} "
        "> {log} 2>&1"


rule tables:
    """Every model's main table stacked: results/tables/main.csv and .md."""
    input:
        expand("results/{model}/main.csv", model=MODELS),
    output:
        csv=report("results/tables/main.csv", category="tables"),
        markdown="results/tables/main.md",
    log:
        "logs/tables.log",
    benchmark:
        "logs/tables.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "python -m liger report --tables {input} --out results/tables > {log} 2>&1"


# A target rule per model, e.g. `snakemake --cores 1 smollm2_135m`.
for _model in MODELS:

    rule:
        name:
            _model.replace("-", "_").replace(".", "_")
        input:
            expand("results/{model}/{method}/{probe}", model=_model, method=METHODS, probe=PROBE_FILES),
            f"results/{_model}/coverage.csv",
            f"results/{_model}/report.md",
        localrule: True
