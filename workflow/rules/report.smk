rule report:
    """One model's main table (CSV + Markdown, the paper's rows beside ours), the paired differences from the base
    and the config's window-only row with bootstrap intervals (paired.csv, paired.md) and by request length
    (by_length.csv, by_length.md and a plot), the probes' tables, report.md and, when rows have a `paper_row`, the
    ablation table (ablations.csv, .md) and its plot. `liger report` reads its inputs and writes its declared
    outputs, no other file."""
    input:
        metrics=expand(row_file(pipeline.ROW_FILES["metrics"]), method=METHODS, allow_missing=True),
        train=expand(row_file(pipeline.STAGES["lora"].summary), method=TRAINED, allow_missing=True),
        transfer=expand(row_file(pipeline.STAGES["transfer"].summary), method=TRANSFERRED, allow_missing=True),
        paper=PAPER_CSV,
        profile="results/{run}/{model}/profile.csv",
        coverage="results/{run}/{model}/coverage.csv",
        coverage_items="results/{run}/{model}/coverage_items.csv",
        passkey=expand(row_file(pipeline.ROW_FILES["passkey"]), method=METHODS, allow_missing=True),
        position_loss=expand(row_file(pipeline.ROW_FILES["position_loss"]), method=METHODS, allow_missing=True),
    output:
        table=report("results/{run}/{model}/main.csv", category="tables"),
        markdown="results/{run}/{model}/main.md",
        report="results/{run}/{model}/report.md",
        paired=report("results/{run}/{model}/paired.csv", category="tables"),
        paired_markdown="results/{run}/{model}/paired.md",
        by_length=report("results/{run}/{model}/by_length.csv", category="tables"),
        by_length_markdown="results/{run}/{model}/by_length.md",
        passkey="results/{run}/{model}/passkey.csv",
        passkey_markdown="results/{run}/{model}/passkey.md",
        position_loss="results/{run}/{model}/position_loss.csv",
        position_loss_markdown="results/{run}/{model}/position_loss.md",
        position_roles="results/{run}/{model}/position_loss_roles.csv",
        position_plot=report("results/{run}/plots/{model}_position_loss.png", category="probes"),
        by_length_plot=report("results/{run}/plots/{model}_by_length.png", category="probes"),
        # rows with a `paper_row`: the ablation table and its plot (liger.ablations), declared only then
        **ABLATION_OUTPUTS,
    params:
        liger=LIGER,
        out_dir=lambda wc, output: os.path.dirname(output.table),
        roles=flags(pipeline.report_roles(config)),  # base, reference, controls, ablation rows, window
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
        "{params.liger} report --model {wildcards.model} --metrics {input.metrics} --train {input.train} "
        "--transfer {input.transfer} --passkey {input.passkey} --position-loss {input.position_loss} "
        "--coverage {input.coverage} --coverage-items {input.coverage_items} --out-dir {params.out_dir} "
        "--plot {output.position_plot} "
        "--paper-name {params.paper} --paper-csv {input.paper} --note {params.note} {params.roles} > {log} 2>&1"


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
