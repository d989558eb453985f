rule evaluate:
    """lm-eval on the six benchmarks (the paper's metrics and shots), base or Liger model; an untrained row of the
    ablation table also gets its validation loss (`val_data`)."""
    input:
        model_ready,
        val_data_ready,
    output:
        row_file(pipeline.ROW_FILES["metrics"]),
    params:
        liger=LIGER,
        model=evaluated_model,
        opts=eval_flags,
    log:
        "logs/{run}/{model}/{method}/evaluate.log",
    benchmark:
        "logs/{run}/{model}/{method}/evaluate.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "{params.liger} evaluate --model {params.model} {params.opts} --out {output} > {log} 2>&1"
