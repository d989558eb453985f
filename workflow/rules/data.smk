rule prepare_data:
    """Alpaca records -> prompt template -> tokens with a response-only label mask -> packed chunks."""
    input:
        "resources/models/{model}/config.json",
    output:
        "resources/data/{model}/meta.json",
    params:
        source=lambda wc: shlex.quote(data_source()),
        opts=flags({k: v for k, v in config["data"].items() if k != "source"}),
    log:
        "logs/{model}/prepare_data.log",
    benchmark:
        "logs/{model}/prepare_data.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        ENV
    shell:
        "python -m liger prepare-data --source {params.source} --tokenizer resources/models/{wildcards.model} "
        "--out resources/data/{wildcards.model} {params.opts} > {log} 2>&1"
