"""Pretrained face models by name: the registry (published models, local files) and the model home.

>>> from arcface.pretrained import list_models, pull, resolve_model
>>> [entry.name for entry in list_models()]          # yunet, buffalo_l, buffalo_sc, antelopev2, ...
>>> path = pull("buffalo_l")                          # once: download, verify, unpack into $ARCFACE_HOME
>>> FaceRecognizer.from_pretrained("buffalo_l")       # the entry's input convention applied

This package imports neither training nor the command line.
"""

from .registry import (
    BUILTIN,
    TASKS,
    ModelEntry,
    add_local_model,
    find_entry_for_path,
    get_model,
    list_models,
    remove_local_model,
    user_registry_path,
)
from .store import MANIFEST, ResolvedModel, input_arguments, is_pulled, pull, pulled_path, resolve_model

__all__ = [
    "BUILTIN",
    "TASKS",
    "MANIFEST",
    "ModelEntry",
    "ResolvedModel",
    "add_local_model",
    "find_entry_for_path",
    "get_model",
    "input_arguments",
    "is_pulled",
    "list_models",
    "pull",
    "pulled_path",
    "remove_local_model",
    "resolve_model",
    "user_registry_path",
]
