"""Functions the local task YAMLs reference (`!function liger.tasks.utils.NAME`).

HellaSwag's and WinoGrande's are lm-eval's own, imported from the installed package so the prompts are the
official ones by construction. MMLU's mirror holds all subjects in one file per split: each subject task
keeps its records (`mmlu_by_subject`: one pass over the `subject` field, shared by the 57 tasks).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable

import datasets
from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice as winogrande_doc_to_choice
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target as winogrande_doc_to_target
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text as winogrande_doc_to_text

__all__ = [
    "MMLU_CATEGORIES",
    "MMLU_SUBJECTS",
    "hellaswag_process_docs",
    "mmlu_description",
    "winogrande_doc_to_choice",
    "winogrande_doc_to_target",
    "winogrande_doc_to_text",
]

# The 57 MMLU subjects by lm-eval category (the `mmlu_<category>_tasks` tags of lm_eval/tasks/mmlu/default).
MMLU_CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
        "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ),
    "social_sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
        "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ),
}  # fmt: skip
MMLU_SUBJECTS: dict[str, str] = dict(sorted((s, cat) for cat, subjects in MMLU_CATEGORIES.items() for s in subjects))


def mmlu_description(subject: str) -> str:
    """The official per-subject description (system prompt) of lm-eval's MMLU tasks."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


# dataset fingerprint -> subject -> its records, for the last few splits seen (a fingerprint changes with the data)
_BY_SUBJECT: OrderedDict[str, dict[str, datasets.Dataset]] = OrderedDict()
_KEPT_SPLITS = 4


def mmlu_by_subject(dataset: datasets.Dataset) -> dict[str, datasets.Dataset]:
    """A split of the MMLU mirror cut into its subjects' records (each in file order), in one pass over `subject`.

    lm-eval asks each of the 57 subject tasks' documents several times (task set-up, requests, results) and each ask
    ran a filter over the whole mirror; the cut is made once per split and shared (cached by the dataset's
    fingerprint, which `datasets` derives from the data files).
    """
    key = dataset._fingerprint
    if key in _BY_SUBJECT:
        _BY_SUBJECT.move_to_end(key)
        return _BY_SUBJECT[key]
    rows: dict[str, list[int]] = defaultdict(list)
    for i, subject in enumerate(dataset["subject"]):
        rows[subject].append(i)
    _BY_SUBJECT[key] = {subject: dataset.select(indices) for subject, indices in rows.items()}
    while len(_BY_SUBJECT) > _KEPT_SPLITS:
        _BY_SUBJECT.popitem(last=False)
    return _BY_SUBJECT[key]


def _subject_docs(subject: str) -> Callable[[datasets.Dataset], datasets.Dataset]:
    def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
        docs = mmlu_by_subject(dataset).get(subject)
        return docs if docs is not None else dataset.select([])

    process_docs.__name__ = process_docs.__qualname__ = f"mmlu_process_docs_{subject}"
    return process_docs


# mmlu_process_docs_<subject>: keep the mirror's records of one subject, in file order.
for _subject in MMLU_SUBJECTS:
    globals()[f"mmlu_process_docs_{_subject}"] = _subject_docs(_subject)
del _subject
