rule model:
    """The base model as a local Hugging Face folder (the embedded GGUF, or a hub model)."""
    output:
        "resources/models/{model}/config.json",
    params:
        liger=LIGER,
        source=lambda wc: (
            f"--hf-id {shlex.quote(config['models'][wc.model]['hf_id'])}"
            if "hf_id" in config["models"][wc.model]
            else ""
        ),
        name=lambda wc: config["models"][wc.model].get("embedded", wc.model),
    log:
        "logs/models/{model}.log",  # the base model is shared by every run, as resources/models/ is
    benchmark:
        "logs/models/{model}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "{params.liger} fetch-model {params.name} {params.source} --out resources/models/{wildcards.model} > {log} 2>&1"


rule convert:
    """A method with `finetune: false` (base_window): the base model converted with its options, not trained."""
    input:
        "resources/models/{model}/config.json",
    output:
        "resources/{run}/converted/{model}/{method}/model/config.json",
    wildcard_constraints:
        method=one_of(UNTRAINED),
    params:
        liger=LIGER,
        options=lambda wc: shlex.quote(json.dumps(liger_options(wc.method, wc.model))),
        out="resources/{run}/converted/{model}/{method}/model",
    log:
        "logs/{run}/{model}/{method}/convert.log",
    benchmark:
        "logs/{run}/{model}/{method}/convert.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        ENV
    shell:
        "{params.liger} convert --model resources/models/{wildcards.model} --options {params.options} "
        "--out {params.out} > {log} 2>&1"
