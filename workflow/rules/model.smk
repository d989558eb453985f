rule model:
    """The base model as a local Hugging Face folder (the embedded GGUF, or a hub model)."""
    output:
        "resources/models/{model}/config.json",
    params:
        source=lambda wc: (
            f"--hf-id {shlex.quote(config['models'][wc.model]['hf_id'])}"
            if "hf_id" in config["models"][wc.model]
            else ""
        ),
        name=lambda wc: config["models"][wc.model].get("embedded", wc.model),
    log:
        "logs/{model}/model.log",
    benchmark:
        "logs/{model}/model.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "python -m liger fetch-model {params.name} {params.source} --out resources/models/{wildcards.model} > {log} 2>&1"
