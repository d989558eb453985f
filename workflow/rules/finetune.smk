rule finetune:
    """Linearize the base model with the method's options, attach LoRA, train on the packed chunks (for lolcats:
    stage 2, LoRA on the stage-1 model); or, with `reuse`, restore the published run's adapter instead."""
    input:
        unpack(lambda wc: stage_inputs(wc, "lora")),
    output:
        summary=stage_folder("lora", "summary.json"),
        train=row_file(pipeline.STAGES["lora"].summary),
        log_csv=row_file(pipeline.STAGES["lora"].log),
    wildcard_constraints:
        method=one_of(TRAINED),
    params:
        run=lambda wc: stage_command(wc, "lora"),
        out=stage_folder("lora"),
    log:
        "logs/{run}/{model}/{method}/finetune.log",
    benchmark:
        "logs/{run}/{model}/{method}/finetune.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "{params.run} > {log} 2>&1 && cp {output.summary} {output.train} && "
        "cp {params.out}/train_log.csv {output.log_csv}"


rule transfer:
    """LoLCATs stage 1: convert, train the feature maps to match softmax attention on the packed chunks; or, with
    `reuse`, restore the published run's trained feature maps (added/) instead."""
    input:
        unpack(lambda wc: stage_inputs(wc, "transfer")),
    output:
        summary=stage_folder("transfer", "summary.json"),
        train=row_file(pipeline.STAGES["transfer"].summary),
        log_csv=row_file(pipeline.STAGES["transfer"].log),
    wildcard_constraints:
        method=one_of(TRANSFERRED),
    params:
        run=lambda wc: stage_command(wc, "transfer"),
        out=stage_folder("transfer"),
    log:
        "logs/{run}/{model}/{method}/transfer.log",
    benchmark:
        "logs/{run}/{model}/{method}/transfer.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "{params.run} > {log} 2>&1 && cp {output.summary} {output.train} && "
        "cp {params.out}/train_log.csv {output.log_csv}"
