"""Torch-free data layer: labeled folders and CSV manifests, few-shot sampling, label noise."""

from edgeprompt.data.fewshot import sample_few_shot
from edgeprompt.data.folder import LabeledSet, load_csv, load_folder, load_labeled
from edgeprompt.data.noise import NoiseSpec, apply_noise, parse_noise

__all__ = [
    "LabeledSet",
    "NoiseSpec",
    "apply_noise",
    "load_csv",
    "load_folder",
    "load_labeled",
    "parse_noise",
    "sample_few_shot",
]
