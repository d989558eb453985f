rule evaluate:
    """lm-eval on the six benchmarks (the paper's metrics and shots), base or Liger model."""
    input:
        model_ready,
    output:
        "results/{model}/{method}/metrics.json",
    params:
        model=evaluated_model,
        opts=eval_flags,
    log:
        "logs/{model}/{method}/evaluate.log",
    benchmark:
        "logs/{model}/{method}/evaluate.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "python -m liger evaluate --model {params.model} {params.opts} --out {output} > {log} 2>&1"
