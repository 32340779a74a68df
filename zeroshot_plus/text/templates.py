"""Class names and prompt templates -> per-class prompt lists.

Template sets are named (``openai_imagenet`` and ``simple_imagenet`` from open_clip, the files
in ``zeroshot_plus.prompt_data/templates``, or a standard dataset's set as ``DATASET:STYLE``, e.g.
``oxford_pets:coop``; see ``data.datasets.dataset_templates``), given as a path to a text file
(one template per line), or given directly as a list of template strings. The class name goes
where a template has ``{}`` (open_clip's form) or ``{c}`` (CLIP_benchmark's; read as ``{}``),
and is used exactly as given, as open_clip's ``build_zero_shot_classifier`` and CLIP_benchmark
use it.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..errors import InputError

OPEN_CLIP_TEMPLATE_SETS = ("openai_imagenet", "simple_imagenet")
PLACEHOLDERS = ("{}", "{c}")  # open_clip's and CLIP_benchmark's


def available_template_sets() -> list[str]:
    shipped = resources.files("zeroshot_plus.prompt_data").joinpath("templates")
    files = sorted(p.name[:-4] for p in shipped.iterdir() if p.name.endswith(".txt"))
    return [*OPEN_CLIP_TEMPLATE_SETS, *files]


def load_templates(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    """A template set by name, from a file, or as a list of template strings; each with
    ``{}`` where the class name goes (a ``{c}`` is read as ``{}``)."""
    if not isinstance(spec, (str, os.PathLike)):
        return _validate_templates(list(spec), "template list")
    name = os.fspath(spec)
    if name in OPEN_CLIP_TEMPLATE_SETS:
        import open_clip

        functions = (open_clip.OPENAI_IMAGENET_TEMPLATES if name == "openai_imagenet"
                     else open_clip.SIMPLE_IMAGENET_TEMPLATES)
        return [f("{}") for f in functions]
    shipped = resources.files("zeroshot_plus.prompt_data").joinpath("templates", f"{name}.txt")
    if shipped.is_file():
        return _validate_templates(_template_lines(shipped.read_text("utf-8")), f"template set '{name}'")
    path = Path(name)
    if path.is_file():
        return _validate_templates(_template_lines(path.read_text("utf-8-sig")), f"template file '{path}'")
    dataset, colon, style = name.partition(":")
    if colon:
        from ..data.datasets import dataset_templates

        return dataset_templates(dataset, style)
    raise InputError(f"unknown template set '{name}': not a file, and not one of "
                     f"{', '.join(available_template_sets())} (or DATASET:STYLE, e.g. "
                     f"oxford_pets:coop).")


def _template_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _validate_templates(templates: list[str], source: str) -> list[str]:
    """The templates with CLIP_benchmark's ``{c}`` written as ``{}``, the one form used inside."""
    if not templates:
        raise InputError(f"the {source} holds no templates.")
    for i, template in enumerate(templates, 1):
        if sum(template.count(p) for p in PLACEHOLDERS) != 1:
            raise InputError(f"template {i} of the {source} ('{template}') must contain '{{}}' "
                             f"or '{{c}}' exactly once, where the class name goes.")
    return [t.replace("{c}", "{}") for t in templates]


def class_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Per class, every template (as ``load_templates`` returns them) filled with the class
    name as given. Repeated names are allowed here: whether a class list may repeat a name is
    ``validate_classnames``'s call."""
    return [[t.replace("{}", name) for t in templates] for name in classnames]
