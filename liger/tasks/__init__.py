"""Local lm-eval task configs: the paper's six benchmarks read from offline JSONL mirrors.

Each YAML reproduces the prompt of lm-eval 0.4.13's official task (`lm_eval/tasks/...`); only the data
source differs (`dataset_path: json`, `data_files` relative to the mirror folder, made absolute at run time
by `liger.tasks.loading.write_local_tasks`, which also generates the 57 MMLU subject tasks).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
