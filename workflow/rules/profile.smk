
rule profile:
    """Prefill throughput, per-token decode latency and peak memory vs context length; plots."""
    input:
        "resources/models/{model}/config.json",
    output:
        csv="results/{run}/{model}/profile.csv",
        latency=report("results/{run}/plots/{model}_latency.png", category="efficiency"),
        prefill=report("results/{run}/plots/{model}_prefill.png", category="efficiency"),
    params:
        liger=LIGER,
        variants=",".join(["base_eager", "base_sdpa", "base_static_compile", *PROFILED]),
        plot="results/{run}/plots/{model}",
        methods=lambda wc: shlex.quote(json.dumps({m: liger_options(m, wc.model) for m in PROFILED})),
        opts=flags(
            {
                "lengths": PROFILE["lengths"],
                "new_tokens": PROFILE["new_tokens"],
                "batch_size": PROFILE["batch_size"],
            }
        ),
    log:
        "logs/{run}/{model}/profile.log",
    benchmark:
        "logs/{run}/{model}/profile.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "{params.liger} profile --model resources/models/{wildcards.model} --variants {params.variants} "
        "--methods {params.methods} {params.opts} --out {output.csv} --plot {params.plot} > {log} 2>&1"


rule profile_shape:
    """The same profile for a named model shape with random weights (e.g. Llama-3-8B: the paper's figure)."""
    output:
        csv="results/{run}/shapes/{shape}/profile.csv",
        latency=report("results/{run}/plots/shape-{shape}_latency.png", category="efficiency"),
        prefill=report("results/{run}/plots/shape-{shape}_prefill.png", category="efficiency"),
    params:
        liger=LIGER,
        variants=",".join(["base_eager", "base_sdpa", "base_static_compile", *PROFILED]),
        plot="results/{run}/plots/shape-{shape}",
        methods=lambda wc: shlex.quote(json.dumps({m: liger_options(m, shape=wc.shape) for m in PROFILED})),
        opts=flags(
            {
                "lengths": PROFILE["lengths"],
                "new_tokens": PROFILE["new_tokens"],
                "batch_size": PROFILE["batch_size"],
            }
        ),
    log:
        "logs/{run}/shapes/{shape}/profile.log",
    benchmark:
        "logs/{run}/shapes/{shape}/profile.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=64000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "{params.liger} profile --shape {wildcards.shape} --variants {params.variants} "
        "--methods {params.methods} {params.opts} --out {output.csv} --plot {params.plot} "
        "> {log} 2>&1"
