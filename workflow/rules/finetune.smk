rule finetune:
    """Linearize the base model with the method's options, attach LoRA, train on the packed chunks."""
    input:
        model="resources/models/{model}/config.json",
        data="resources/data/{model}/meta.json",
    output:
        summary="resources/finetuned/{model}/{method}/summary.json",
        train="results/{model}/{method}/train_summary.json",
        log_csv="results/{model}/{method}/train_log.csv",
    wildcard_constraints:
        method=one_of(TRAINED),
    params:
        options=lambda wc: shlex.quote(json.dumps(liger_options(wc.method))),
        train=flags(config["train"]),
        out="resources/finetuned/{model}/{method}",
    log:
        "logs/{model}/{method}/finetune.log",
    benchmark:
        "logs/{model}/{method}/finetune.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "python -m liger finetune --model resources/models/{wildcards.model} --data resources/data/{wildcards.model} "
        "--out {params.out} --options {params.options} {params.train} > {log} 2>&1 && "
        "cp {output.summary} {output.train} && cp {params.out}/train_log.csv {output.log_csv}"
