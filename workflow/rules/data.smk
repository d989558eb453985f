rule prepare_data:
    """Alpaca records -> prompt template -> tokens with a response-only label mask -> packed chunks."""
    input:
        "resources/models/{model}/config.json",
    output:
        "resources/{run}/data/{model}/meta.json",
    params:
        liger=LIGER,
        source=lambda wc: shlex.quote(data_source()),
        opts=flags({k: v for k, v in config["data"].items() if k != "source"}),
        out="resources/{run}/data/{model}",
    log:
        "logs/{run}/{model}/prepare_data.log",
    benchmark:
        "logs/{run}/{model}/prepare_data.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        ENV
    shell:
        "{params.liger} prepare-data --source {params.source} --tokenizer resources/models/{wildcards.model} "
        "--out {params.out} {params.opts} > {log} 2>&1"
