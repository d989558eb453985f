PROFILED = [m for m in TRAINED if m not in CONTROLS]  # speed is the methods' claim, not the controls'


rule profile:
    """Prefill throughput, per-token decode latency and peak memory vs context length; plots."""
    input:
        "resources/models/{model}/config.json",
    output:
        csv="results/{model}/profile.csv",
        latency=report("results/plots/{model}_latency.png", category="efficiency"),
        prefill=report("results/plots/{model}_prefill.png", category="efficiency"),
    params:
        variants=",".join(["base_eager", "base_sdpa", *PROFILED]),
        methods=shlex.quote(json.dumps({m: liger_options(m) for m in PROFILED})),
        opts=flags(
            {
                "lengths": PROFILE.get("lengths", [1024, 2048, 4096, 8192, 16384, 32768]),
                "new_tokens": PROFILE.get("new_tokens", 128),
                "batch_size": PROFILE.get("batch_size", 1),
            }
        ),
    log:
        "logs/{model}/profile.log",
    benchmark:
        "logs/{model}/profile.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "python -m liger profile --model resources/models/{wildcards.model} --variants {params.variants} "
        "--methods {params.methods} {params.opts} --out {output.csv} --plot results/plots/{wildcards.model} > {log} 2>&1"
