# liger-repro: base model -> data -> Liger conversion + LoRA fine-tune -> lm-eval -> tables and plots.
# Run `snakemake --cores 1` (config/config.yaml), or with --configfile config/smoke.yaml / config/paper.yaml.
from snakemake.utils import min_version

min_version("9.0")


# The default config only when none is given (--configfile would otherwise be merged into it).
if not config:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/probes.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("results/{run}/{model}/{method}/{probe}", run=RUN, model=MODELS, method=METHODS, probe=PROBE_FILES),
        expand("results/{run}/{model}/coverage.csv", run=RUN, model=MODELS),
        expand("results/{run}/{model}/report.md", run=RUN, model=MODELS),
        f"results/{RUN}/tables/main.md",
        expand("results/{run}/shapes/{shape}/profile.csv", run=RUN, shape=SHAPES),
