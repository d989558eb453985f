"""The Snakemake DAG: the whole smoke run on CPU as a newcomer runs it, reruns, and config validation."""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, SHARED_DATA

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
TASK_FILES = {
    "piqa": ["validation.jsonl"],
    "arc_easy": ["test.jsonl", "validation.jsonl", "train.jsonl"],
    "arc_challenge": ["test.jsonl", "validation.jsonl"],
    "hellaswag": ["validation.jsonl"],
    "winogrande": ["validation.jsonl"],
    "mmlu": ["test.jsonl", "dev.jsonl", "validation.jsonl"],
}


def run_snakemake(workdir: Path, *args: str, env: dict | None = None,
                  snakefile: Path = ROOT / "Snakefile") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory",
                           str(workdir), *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=3000)


def small_mirror(dest: Path, per_file: int = 6) -> Path:
    """The first records of each benchmark mirror file (MMLU: the first of every subject)."""
    for task, files in TASK_FILES.items():
        (dest / task).mkdir(parents=True)
        for name in files:
            lines = (SHARED_DATA / task / name).read_text().splitlines()
            if task == "mmlu":
                seen: dict[str, int] = {}
                keep = []
                for line in lines:
                    subject = json.loads(line)["subject"]
                    if seen.get(subject, 0) < (5 if name == "dev.jsonl" else 1):
                        seen[subject] = seen.get(subject, 0) + 1
                        keep.append(line)
                lines = keep
            else:
                lines = lines[:per_file]
            (dest / task / name).write_text("\n".join(lines) + "\n")
    return dest


def git_copy(src: Path, dest: Path) -> Path:
    """A fresh clone of the working tree: its files as git sees them (tracked and untracked, not ignored), committed
    in a new repository at `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (src / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)
    return dest


@dataclass
class Smoke:
    """The smoke DAG run once in a clone: where, with which environment, and what it took."""

    work: Path
    config: str
    env: dict
    wall_s: float
    cpu_s: float
    git_status: list[str]  # `git status --porcelain --ignored` right after the run
    not_venv_python: Path  # written by the `python` on PATH if anything calls it

    def snakemake(self, *args: str) -> subprocess.CompletedProcess:
        return run_snakemake(self.work, *args, "--configfile", self.config, env=self.env,
                             snakefile=self.work / "Snakefile")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, smollm2_dir) -> Smoke:
    """`snakemake --cores 2 --configfile config/smoke.yaml` in a fresh clone, Snakemake called by its path in the
    venv, the venv not on PATH and a `python` there that fails: the rules must run the venv's interpreter."""
    if not (SHARED_DATA / "alpaca" / "alpaca_data.jsonl").exists():
        pytest.skip(f"no data mirrors at {SHARED_DATA}")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tmp = tmp_path_factory.mktemp("smoke")
    work = git_copy(ROOT, tmp / "clone")
    (work / "resources" / "models").mkdir(parents=True)
    os.symlink(smollm2_dir, work / "resources" / "models" / "smollm2-135m")
    alpaca = tmp / "alpaca.jsonl"
    alpaca.write_text("\n".join((SHARED_DATA / "alpaca" / "alpaca_data.jsonl").read_text().splitlines()[:150]) + "\n")
    fake_bin, called = tmp / "bin", tmp / "not_venv_python_called"
    fake_bin.mkdir()
    for name in ("python", "python3"):
        (fake_bin / name).write_text(f"#!/bin/sh\necho \"$@\" >> {shlex.quote(str(called))}\nexit 97\n")
        (fake_bin / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"LIGER_ALPACA": str(alpaca), "LIGER_EVAL_DATA": str(small_mirror(tmp / "mirror")),
            "PATH": f"{fake_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    config = str(work / "config" / "smoke.yaml")
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--configfile", config],
                          cwd=work, env=env, capture_output=True, text=True, timeout=7200)
    wall_s, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=work, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Smoke(work, config, env, wall_s, cpu_s, status, called)


@pytest.mark.slow
def test_smoke_dag_runs_the_venv_python_not_the_one_on_path(smoke_run):
    assert not smoke_run.not_venv_python.exists(), smoke_run.not_venv_python.read_text()
    log = (smoke_run.work / "logs" / "smoke" / "smollm2-135m" / "liger_gla" / "evaluate.log").read_text()
    assert "Traceback" not in log


@pytest.mark.slow
def test_smoke_dag_leaves_every_tracked_file_as_it_was(smoke_run):
    """The smoke run writes only its own folders, all ignored by git: no tracked file changes or goes away, and
    nothing of it lands in a committed folder (results/published/)."""
    allowed = {"!! .snakemake/", "!! logs/", "!! resources/", "!! results/smoke/"}
    changed = [line for line in smoke_run.git_status
               if line not in allowed and not (line.startswith("!! ") and line.endswith("__pycache__/"))]
    assert not changed, changed
    assert "!! results/smoke/" in smoke_run.git_status


@pytest.mark.slow
def test_plan_estimates_the_smoke_run(smoke_run):
    """`liger plan`'s estimate (wall time on an otherwise idle 2-core CPU) against this run's CPU time, which other
    load on the machine hardly changes: on 2 cores the wall time lies between half the CPU time and all of it. The
    estimate must too, give or take 1.5x; above only where the rates were measured (a 2-core machine)."""
    from liger.pipeline import load_config
    from liger.plan import plan

    estimate = plan(load_config(Path(smoke_run.config)), workdir=smoke_run.work)["hours"] * 3600
    measured = f"estimate {estimate:.0f} s, CPU {smoke_run.cpu_s:.0f} s, wall {smoke_run.wall_s:.0f} s"
    assert estimate >= smoke_run.cpu_s / 2 / 1.5, measured
    if (os.cpu_count() or 1) <= 2:
        assert estimate <= smoke_run.cpu_s * 1.5, measured


@pytest.mark.slow
def test_smoke_dag_tables_trace_to_metrics(smoke_run):
    work = smoke_run.work
    results = work / "results" / "smoke"  # config/smoke.yaml: `run: smoke`
    table = pd.read_csv(results / "tables" / "main.csv")
    ours = table[~table["method"].str.endswith("(paper)")]
    assert list(ours["method"]) == ["base", "liger_gla", "window_only", "base_window", "lolcats",
                                    "lolcats_sliding", "chance (from the data)"]
    assert list(ours["role"]) == ["base", "method", "control", "control", "method", "control", "chance"]
    headers = [("piqa", "PiQA"), ("arc_easy", "ARC-e"), ("arc_challenge", "ARC-c"), ("hellaswag", "HellaSwag"),
               ("winogrande", "WinoGrande"), ("mmlu", "MMLU")]
    for _, row in ours.iloc[:-1].iterrows():
        metrics = json.loads(Path(work / row["source"]).read_text())
        for task, header in headers:
            assert row[header] == pytest.approx(round(100 * metrics["paper_metrics"][task], 1))
    chance = json.loads((work / ours.iloc[0]["source"]).read_text())["chance"]
    for task, header in headers:
        assert ours.iloc[-1][header] == pytest.approx(round(100 * chance[task], 1))
    assert not pd.isna(ours.iloc[1]["Chance-corrected recovery %"])
    assert ours.loc[ours["method"] == "liger_gla", "train tokens"].iloc[0] > 0
    # LoLCATs: attention transfer then LoRA, each 2 steps x 2 chunks x 128 tokens; both counted
    lol = ours[ours["method"] == "lolcats"].iloc[0]
    assert lol["train tokens"] == 2 * 512
    assert re.fullmatch(r"attention transfer 0\.00M in \d+\.\d min \+ LoRA 0\.00M in \d+\.\d min", lol["train stages"])
    stage1 = json.loads((results / "smollm2-135m" / "lolcats" / "transfer_summary.json").read_text())
    stage2 = json.loads((results / "smollm2-135m" / "lolcats" / "train_summary.json").read_text())
    assert (stage1["stage"], stage1["train_config"]["lr"], stage1["train_config"]["max_grad_norm"]) == (
        "transfer", 1e-2, 0.0)
    assert (stage2["train_config"]["lora_alpha"], stage2["train_config"]["lora_targets"]) == (
        16, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert stage2["model_dir"].endswith("transferred/smollm2-135m/lolcats/model")
    # lolcats_sliding: LoLCATs' own model (not trained again) scored with the sliding window
    sliding = json.loads((results / "smollm2-135m" / "lolcats_sliding" / "metrics.json").read_text())
    assert sliding["layer_options"] == {"window_shape": "sliding"} and sliding["liger"]["window_shape"] == "sliding"
    assert sliding["model"].endswith("finetuned/smollm2-135m/lolcats/model") and pd.isna(
        ours.loc[ours["method"] == "lolcats_sliding", "train tokens"].iloc[0])
    assert not list(work.glob("resources/smoke/*/smollm2-135m/lolcats_sliding"))
    assert (results / "tables" / "main.md").exists()
    assert (results / "plots" / "smollm2-135m_latency.png").stat().st_size > 0
    report = (results / "smollm2-135m" / "report.md").read_text()
    assert "liger_gla" in report and "smollm2-135m_latency.png" in report and "alpaca" in report


@pytest.mark.slow
def test_smoke_dag_controls_and_probes(smoke_run):
    work = smoke_run.work
    results, resources = work / "results" / "smoke", work / "resources" / "smoke"
    res = results / "smollm2-135m"
    # base_window: converted with its options, never trained; window_only: trained like liger_gla
    converted = json.loads((resources / "converted" / "smollm2-135m" / "base_window" / "model" /
                            "config.json").read_text())["liger"]
    assert (converted["alpha"], converted["beta"], converted["window"]) == (1.0, 0.0, 65)  # 64 keys before the query
    assert not (resources / "finetuned" / "smollm2-135m" / "base_window").exists()
    assert json.loads((res / "window_only" / "train_summary.json").read_text())["liger_options"]["beta"] == 0.0
    assert json.loads((res / "base_window" / "metrics.json").read_text())["liger"]["alpha"] == 1.0
    coverage = pd.read_csv(res / "coverage.csv").set_index("task")
    assert coverage.loc["mmlu", "shots"] == 5 and coverage.loc["mmlu", "items beyond window 64 %"] == 100.0
    for method in ["base", "liger_gla", "window_only", "base_window", "lolcats", "lolcats_sliding"]:
        passkey = pd.read_csv(res / method / "passkey.csv")
        assert sorted(set(passkey["length"])) == [96, 192] and len(passkey) == 4
        assert set(passkey["cache"]) == {"kv" if method == "base" else "liger"}
        assert (results / "plots" / f"smollm2-135m_{method}_passkey.png").stat().st_size > 0
        loss = json.loads((res / method / "position_loss.json").read_text())
        assert loss["seq_len"] == 256 and loss["sequences"] == 2
    terraced, sliding = (json.loads((res / m / "position_loss.json").read_text())["buckets"][-1]["mean_loss"]
                         for m in ("lolcats", "lolcats_sliding"))  # the same weights, another window
    assert terraced != pytest.approx(sliding, rel=1e-4)
    report = (res / "report.md").read_text()
    for section in ("## Window coverage", "## Passkey retrieval", "## Loss by position", "Controls: window_only"):
        assert section in report
    assert (results / "plots" / "smollm2-135m_position_loss.png").stat().st_size > 0


@pytest.mark.slow
def test_second_run_does_nothing_and_deleting_metrics_reruns_only_that(smoke_run):
    dry = smoke_run.snakemake("-n", "--cores", "1")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    (smoke_run.work / "results" / "smoke" / "smollm2-135m" / "liger_gla" / "metrics.json").unlink()
    dry = smoke_run.snakemake("-n", "--cores", "1")
    jobs = dry.stdout + dry.stderr
    table = jobs[jobs.index("job "):jobs.index("total")]
    counts = {line.split()[0]: int(line.split()[1]) for line in table.splitlines()[2:] if line.strip()}
    assert counts == {"evaluate": 1, "report": 1, "tables": 1, "all": 1}, counts


def test_paper_config_builds_the_dag(tmp_path):
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(ROOT / "config" / "paper.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ["llama-3-8b", "mistral-7b", "llama-3.2-1b", "llama-3.2-3b"]:
        assert f"results/paper/{name}/report.md" in proc.stdout
        for method in ["lolcats", "lolcats_liger_rerun"]:
            assert f"resources/paper/transferred/{name}/{method}/summary.json" in proc.stdout


def test_a_lolcats_stage_takes_its_recipe_not_trains(tmp_path):
    """The rules give the Liger rows every key of `train`; a LoLCATs stage only the keys its recipe does not set,
    then its `lolcats_train` overrides (its recipe, liger.methods.lolcats.RECIPES, sets the others)."""
    from liger.methods.lolcats import RECIPES

    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", str(ROOT / "config" / "smoke.yaml"))
    commands = {c.split("--out ")[1].split()[0]: c for c in shell_commands(proc) if "--data " in c}
    assert "--lr 0.001 --lora-r 8" in commands["resources/smoke/finetuned/smollm2-135m/liger_gla"]
    for stage, folder in (("transfer", "transferred"), ("lora", "finetuned")):
        command = commands[f"resources/smoke/{folder}/smollm2-135m/lolcats"]
        recipe = {f"--{key.replace('_', '-')} " for key in RECIPES["original"][stage]}
        assert "--max-steps 2 " in command and "--eval-every 2" in command  # train's, and lolcats_train's
        assert not [flag for flag in recipe - {"--eval-every "} if flag in command], command


def test_a_trained_row_is_scored_with_its_layer_options(tmp_path):
    """A converted row's `layer_options` reach its evaluation and probes, not its training: the 1.5B
    `lolcats_liger_rerun` trains with blocks of 256 queries and is scored with blocks of 1,024."""
    row = "results/qwen/qwen2.5-coder-1.5b/lolcats_liger_rerun"
    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", f"{row}/metrics.json", f"{row}/passkey.csv",
                         "--configfile", str(ROOT / "config" / "qwen2.5-coder-1.5b.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = shell_commands(proc)
    scored = [c for c in commands if " evaluate " in c or " passkey " in c]
    trained = [c for c in commands if " transfer " in c or " finetune " in c]
    assert len(scored) == 2 and all("""--layer-options '{"query_block": 1024}'""" in c for c in scored), scored
    assert len(trained) == 2 and all('"query_block": 256' in c and "--layer-options" not in c for c in trained)


def test_snakefile_and_the_vocabulary_load_without_torch(tmp_path):
    """The Snakefile (a dry run of the smoke DAG) and liger/pipeline.py run where torch cannot load."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(ROOT / "config" / "smoke.yaml"), env=env)
    assert proc.returncode == 0 and "report" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    proc = subprocess.run([sys.executable, "-c", "import liger.pipeline, liger.plan"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


FAKE_CONDA = """#!/bin/sh
case "$*" in
  "--version") echo "conda 24.7.1";;
  "info --json") echo '{"conda_prefix": "%(prefix)s", "envs_dirs": ["%(prefix)s/envs"], "pkgs_dirs": [],
                        "platform": "linux-64", "conda_version": "24.7.1"}';;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}';;
  *) exit 1;;
esac
"""


def shell_commands(proc: subprocess.CompletedProcess) -> list[str]:
    """The shell commands of a dry run with -p (the target rules have none)."""
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line.split("Shell command: ", 1)[1] for line in lines if "Shell command: " in line
            and not line.endswith("Shell command: None")]


def test_rules_run_the_snakemake_interpreter_or_the_conda_envs_python(tmp_path):
    """Without conda every rule runs the interpreter that runs Snakemake; with --use-conda, its env's `python`
    (a stand-in `conda` answers Snakemake's checks: a dry run creates no env)."""
    smoke = str(ROOT / "config" / "smoke.yaml")
    plain = shell_commands(run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", smoke))
    assert len(plain) > 20 and all(c.startswith(f"{shlex.quote(sys.executable)} -m liger ") for c in plain)
    conda = tmp_path / "bin" / "conda"
    conda.parent.mkdir()
    conda.write_text(FAKE_CONDA % {"prefix": tmp_path})
    conda.chmod(0o755)
    path = {"PATH": f"{conda.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--use-conda", "--configfile", smoke, env=path)
    assert shell_commands(proc) and all(c.startswith("python -m liger ") for c in shell_commands(proc)), (
        proc.stdout + proc.stderr)[-3000:]


def test_plan_counts_the_jobs_snakemake_runs(tmp_path):
    """`liger plan` counts, per rule, the jobs of the DAG (untrained and weights_of rows included)."""
    from liger.pipeline import load_config
    from liger.plan import plan

    for name in ("smoke", "config"):
        proc = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(ROOT / "config" / f"{name}.yaml"))
        out = proc.stdout + proc.stderr
        table = out[out.index("job "):out.index("total")]
        counts = {line.split()[0]: int(line.split()[1]) for line in table.splitlines()[2:] if line.strip()}
        counts.pop("all")
        assert plan(load_config(ROOT / "config" / f"{name}.yaml"), workdir=tmp_path)["jobs"] == counts, name


@pytest.mark.parametrize("case", ["unknown key", "wrong type", "model without a source", "unknown method option",
                                  "options without a method", "window 0", "weights_of no row", "weights_of base",
                                  "weights_of with options"])
def test_snakemake_refuses_a_bad_config_as_plan_does(tmp_path, case):
    """The Snakefile runs the check `liger plan` runs (tests/test_config.py): the same line, before any job."""
    from tests.test_config import BAD, bad_config

    path = bad_config(tmp_path, case)
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(path))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{path}: {BAD[case][1]}" in out and "Traceback" not in out, out[-2000:]


def test_lint_is_clean(tmp_path):
    shutil.copy(ROOT / "config" / "smoke.yaml", tmp_path / "c.yaml")
    proc = subprocess.run([*SNAKEMAKE, "--lint", "--configfile", str(tmp_path / "c.yaml")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0 and "good condition" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.slow
def test_snakemake_html_report(smoke_run, tmp_path):
    proc = smoke_run.snakemake("--cores", "1", "--report", str(tmp_path / "report.html"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_slurm_profile_dry_run(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    proc = run_snakemake(tmp_path, "-n", "--profile", str(ROOT / "workflow" / "profiles" / "slurm"),
                         "--configfile", str(ROOT / "config" / "paper.yaml"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "finetune" in proc.stdout + proc.stderr


def test_one_gpu_profile_budgets_gpu_memory_per_job(tmp_path):
    """The shared-GPU profile: each GPU job takes its measured budget; a LoLCATs stage 2 takes more than a Liger
    fine-tune (it ran out of memory within the Liger budget)."""
    profile = ROOT / "workflow" / "profiles" / "one-gpu"
    config = ROOT / "config" / "config.yaml"
    proc = run_snakemake(tmp_path, "-n", "--profile", str(profile), "--configfile", str(config),
                         str(profile / "eval-batch.yaml"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    budgets = {}
    for block in proc.stdout.split("\n\n"):
        rule = re.search(r"rule (\w+):", block)
        method = re.search(r"method=(\w+)", block)
        gb = re.search(r"gpu_mem_gb=(\d+)", block)
        if rule and method and gb:
            budgets[(rule.group(1), method.group(1))] = int(gb.group(1))
    assert budgets[("finetune", "liger_gla")] == 16 and budgets[("finetune", "lolcats")] == 48
    assert budgets[("transfer", "lolcats")] == 22 and budgets[("evaluate", "liger_gla")] == 16
    assert "--batch-size 64 --mmlu-batch-size 16" in proc.stdout


RUNS = ROOT / "results" / "published" / "gpu-runs"


def with_weights(run: Path, out: Path, base_dir: Path) -> Path:
    """A copy of a published run as git keeps it (configs, summaries, logs) with weight files made here, of the
    shapes the real ones have: LoRA with nonzero B (so that merging changes the model), the conversion's added
    parameters as initialised."""
    import torch
    from peft import LoraConfig, get_peft_model

    import liger
    from liger.convert import save_added
    from liger.methods import options_from_dict

    shutil.copytree(run, out, ignore=shutil.ignore_patterns("*.log", "*.tsv", "*.png"))
    torch.manual_seed(0)
    for adapter in out.glob("finetuned/*/*/adapter"):
        model = liger.load(base_dir)
        liger.linearize(model, **options_from_dict(json.loads((adapter / "liger_options.json").read_text())).to_dict())
        config = json.loads((adapter / "adapter_config.json").read_text())
        lora = get_peft_model(model, LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"],
                                                target_modules=config["target_modules"]))  # fmt: skip
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.data.normal_(std=0.01)
        lora.save_pretrained(out / "made")
        shutil.move(out / "made" / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
        shutil.rmtree(out / "made")
    for added in out.glob("transferred/*/*/added"):
        model = liger.load(base_dir)
        liger.linearize(model, **options_from_dict(json.loads((added / "liger_options.json").read_text())).to_dict())
        save_added(model, added)
    return out


def test_reuse_restores_published_runs_instead_of_training(tmp_path, smollm2_dir):
    """`reuse: RUN`: the methods with a published run are restored (`liger restore`), the others trained; a
    Liger-GLA adapter rebuilds a model that differs from the base only where LoRA was applied."""
    published = with_weights(RUNS / "h100-2026-11-23c", tmp_path / "runs" / "h100-2026-11-23c", smollm2_dir)
    (tmp_path / "resources" / "models").mkdir(parents=True)
    os.symlink(smollm2_dir, tmp_path / "resources" / "models" / "smollm2-135m")
    config = ["--configfile", str(ROOT / "config" / "config.yaml"), "--config", f"reuse={published}"]
    targets = [f"results/default/smollm2-135m/{m}/metrics.json"
               for m in ("liger_gla", "lolcats", "liger_gla_no_window")]
    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", *targets, *config)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    commands = [line for line in (proc.stdout + proc.stderr).splitlines() if "python -m liger" in line]
    restored = {line.split("--out ")[1].split()[0] for line in commands if "liger restore" in line}
    trained = {line.split("--out ")[1].split()[0] for line in commands if " finetune " in line or " transfer " in line}
    assert restored == {"resources/default/finetuned/smollm2-135m/liger_gla",
                        "resources/default/transferred/smollm2-135m/lolcats"}
    assert trained == {f"resources/default/finetuned/smollm2-135m/{m}" for m in ("lolcats", "liger_gla_no_window")}
    # several runs, comma-separated: the first that has a method wins (the later run published the no-window row)
    later = RUNS / "h100-2026-11-23d"  # scheduled only (dry run): its configs and summary suffice
    both = ["--configfile", str(ROOT / "config" / "config.yaml"), "--config", f"reuse={published},{later}"]
    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", *targets, *both)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    runs = {line.split("--run ")[1].split()[0] for line in (proc.stdout + proc.stderr).splitlines()
            if "liger restore" in line}  # fmt: skip
    assert runs == {f"{published}/finetuned/smollm2-135m/liger_gla", f"{published}/transferred/smollm2-135m/lolcats",
                    f"{later}/finetuned/smollm2-135m/liger_gla_no_window"}  # fmt: skip

    proc = run_snakemake(tmp_path, "--cores", "1", "results/default/smollm2-135m/liger_gla/train_summary.json",
                         "results/default/smollm2-135m/lolcats/transfer_summary.json", *config)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    stage1 = json.loads((tmp_path / "results/default/smollm2-135m/lolcats/transfer_summary.json").read_text())
    assert stage1["stage"] == "transfer" and stage1["restored_from"].endswith("transferred/smollm2-135m/lolcats")
    assert (tmp_path / "resources/default/transferred/smollm2-135m/lolcats/model/config.json").is_file()
    summary = json.loads((tmp_path / "results/default/smollm2-135m/liger_gla/train_summary.json").read_text())
    assert summary["restored_from"].endswith("finetuned/smollm2-135m/liger_gla") and summary["tokens_trained"] > 0
    from safetensors.torch import load_file

    merged = load_file(str(tmp_path / "resources/default/finetuned/smollm2-135m/liger_gla/model/model.safetensors"))
    base = load_file(str(next(smollm2_dir.glob("*.safetensors"))))
    changed = {k for k in base if not (base[k] == merged[k]).all()}
    assert changed and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")) for k in changed)
