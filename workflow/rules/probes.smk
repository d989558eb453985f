# What the recovery means (docs/method.md#controls): window coverage of the benchmarks, passkey retrieval and loss by
# position, for the base model and every method (controls included).
PASSKEY = config["probes"]["passkey"]
POSITION_LOSS = config["probes"]["position_loss"]


rule coverage:
    """Request lengths of each benchmark in the model's tokens; share of items beyond the window; each item's longest
    request (coverage_items.csv, for the report's accuracy by request length)."""
    input:
        "resources/models/{model}/config.json",
    output:
        csv=report("results/{run}/{model}/coverage.csv", category="probes"),
        markdown="results/{run}/{model}/coverage.md",
        per_item="results/{run}/{model}/coverage_items.csv",
    params:
        liger=LIGER,
        opts=flags(
            {
                "tasks": config["eval"]["tasks"],
                "data_dir": eval_data_dir(),
                "limit": config["eval"]["limit"],
                "windows": WINDOWS,
            }
        ),
    log:
        "logs/{run}/{model}/coverage.log",
    benchmark:
        "logs/{run}/{model}/coverage.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        ENV
    shell:
        "{params.liger} coverage --model resources/models/{wildcards.model} {params.opts} --out {output.csv} "
        "> {log} 2>&1"


rule passkey:
    """Passkey retrieval per prompt length and key depth (greedy decoding through the model's cache)."""
    input:
        model_ready,
    output:
        csv=row_file(pipeline.ROW_FILES["passkey"]),
        heatmap=report("results/{run}/plots/{model}_{method}_passkey.png", category="probes"),
    params:
        liger=LIGER,
        model=evaluated_model,
        layer=layer_flag,
        opts=flags(
            {
                "lengths": PASSKEY["lengths"],
                "depths": PASSKEY["depths"],
                "seeds": PASSKEY["seeds"],
                "new_tokens": PASSKEY["new_tokens"],
            }
        ),
    log:
        "logs/{run}/{model}/{method}/passkey.log",
    benchmark:
        "logs/{run}/{model}/{method}/passkey.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "{params.liger} passkey --model {params.model} {params.opts} {params.layer} --out {output.csv} "
        "--plot {output.heatmap} --title '{wildcards.model} {wildcards.method}: passkey accuracy %' > {log} 2>&1"


rule position_loss:
    """Mean next-token loss per position bucket on long sequences of the held-out instruction records."""
    input:
        model_ready,
    output:
        json=row_file(pipeline.ROW_FILES["position_loss"]),
        csv=row_file(pipeline.ROW_FILES["position_loss_csv"]),
    params:
        liger=LIGER,
        model=evaluated_model,
        layer=layer_flag,
        source=lambda wc: shlex.quote(data_source()),
        opts=flags(
            {
                "n_val": config["data"]["n_val"],
                "seq_len": POSITION_LOSS["seq_len"],
                "sequences": POSITION_LOSS["sequences"],
            }
        ),
    log:
        "logs/{run}/{model}/{method}/position_loss.log",
    benchmark:
        "logs/{run}/{model}/{method}/position_loss.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=GPUS,
    conda:
        ENV
    shell:
        "{params.liger} position-loss --model {params.model} --source {params.source} {params.opts} {params.layer} "
        "--out {output.json} > {log} 2>&1"
