"""Project hygiene: pins in one place, conda envs in step with them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_conda_envs_mirror_pyproject_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
        assert sorted(pip) == sorted(deps), f"{env.name} pip pins differ from pyproject.toml"
        assert "python=3.11" in spec["dependencies"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_plan_counts_the_work(tmp_path):
    from liger.pipeline import load_config
    from liger.plan import FIXED_S, plan

    smoke = plan(load_config(ROOT / "config" / "smoke.yaml"), workdir=tmp_path)
    work = smoke["models"]["smollm2-135m"]
    assert work["train_tokens_per_method"] == 2 * 128 * 2  # max_steps x seq_len x grad_accum
    assert work["eval_items_per_method"] == 5 * 4 + 57  # 4 per task, 1 per MMLU subject
    # every row is evaluated and probed, the untrained base_window and the weights_of row lolcats_sliding too
    assert smoke["jobs"]["evaluate"] == smoke["jobs"]["passkey"] == smoke["jobs"]["position_loss"] == 6
    assert smoke["seconds"]["start"] == sum(FIXED_S[rule] * n for rule, n in smoke["jobs"].items())
    full = plan(load_config(ROOT / "config" / "config.yaml"), workdir=tmp_path)
    assert full["models"]["smollm2-135m"]["train_tokens_per_method"] == 2 * 51_802 * 112
    assert full["hours"] > 100 and max(full["seconds"], key=full["seconds"].get) == "training"
