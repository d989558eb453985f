rule finetune:
    """Linearize the base model with the method's options, attach LoRA, train on the packed chunks (for lolcats:
    stage 2, LoRA on the stage-1 model); or, with `reuse`, restore the published run's adapter instead."""
    input:
        unpack(lambda wc: stage_inputs(wc, "finetuned")),
    output:
        summary="resources/{run}/finetuned/{model}/{method}/summary.json",
        train="results/{run}/{model}/{method}/train_summary.json",
        log_csv="results/{run}/{model}/{method}/train_log.csv",
    wildcard_constraints:
        method=one_of(TRAINED),
    params:
        run=lambda wc: stage_command(wc, "finetuned"),
        out="resources/{run}/finetuned/{model}/{method}",
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
        unpack(lambda wc: stage_inputs(wc, "transferred")),
    output:
        summary="resources/{run}/transferred/{model}/{method}/summary.json",
        train="results/{run}/{model}/{method}/transfer_summary.json",
        log_csv="results/{run}/{model}/{method}/transfer_log.csv",
    wildcard_constraints:
        method=one_of(LOLCATS),
    params:
        run=lambda wc: stage_command(wc, "transferred"),
        out="resources/{run}/transferred/{model}/{method}",
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
