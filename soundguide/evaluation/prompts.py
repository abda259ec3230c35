"""CLIP text prompts for class labels: the templates and the label cleaning, for everyone.

Training (its text targets and its validation top-1) and evaluation (zero-shot)
read labels through the same templates and the same cleaning, so an encoder is
evaluated with the prompts it was trained with unless told otherwise.

Defaults, chosen deliberately:

- :data:`DEFAULT_TEMPLATES`: four templates; a class embedding is the
  renormalized mean of their normalized CLIP embeddings (CLIP's prompt
  ensembling), and training picks one per item and epoch. ``"{label}"`` alone
  is one of them: the original code trained on the bare label text (with word
  augmentation, no template), so the released encoder meets its own kind of text.
- :func:`clean_label`: ``crackling_fire`` -> ``crackling fire``. Underscores
  become spaces, whitespace collapses, the text is lower-cased (CLIP's
  tokenizer lower-cases anyway: the embedding does not change). Hyphens are
  kept: ``hi-hat`` and ``x-ray`` are words.

The original authors' zero-shot script fed the dataset's raw class strings
(``crackling_fire``) with no template: ``soundguide zeroshot --protocol authors``
does the same (``--labels raw --template "{label}"`` alone changes only the prompts).

This module imports nothing heavy: training configs validate their templates with it.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from soundguide.core.errors import ConfigError

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "the sound of {label}",
    "a sound of {label}",
    "a recording of {label}",
    "{label}",
)
"""The prompt ensemble of training and zero-shot evaluation; ``{label}`` is the cleaned label."""

TEMPLATE_HINT = 'e.g. --template "the sound of {label}"'


def clean_label(name: str) -> str:
    """A label as words for a text prompt: ``"crackling_fire"`` -> ``"crackling fire"``.

    Underscores become spaces, runs of whitespace collapse, the result is lower
    case (``"Dog_bark"`` -> ``"dog bark"``); hyphens and other punctuation stay.
    """
    return " ".join(name.replace("_", " ").split()).lower()


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a prompt template (one ``{label}`` field, nothing else), or None."""
    if not isinstance(template, str):
        return f"prompt template {template!r} is not text"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"prompt template {template!r} is malformed: {exc}"
    if fields != ["label"]:
        return (
            f"prompt template {template!r} must contain {{label}} exactly once and no other field"
        )
    return None


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """``templates`` as a tuple, or a one-line :class:`ConfigError` naming the first bad one."""
    templates = tuple(templates)
    if not templates:
        raise ConfigError("no prompt templates given", hint=TEMPLATE_HINT)
    for template in templates:
        problem = template_problem(template)
        if problem is not None:
            raise ConfigError(problem, hint=TEMPLATE_HINT)
    return templates


def prompt(template: str, label: str, *, clean: bool = True) -> str:
    """``template`` with ``{label}`` replaced by the (cleaned) label."""
    return template.format(label=clean_label(label) if clean else label)


def class_prompts(
    class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, *, clean: bool = True
) -> list[list[str]]:
    """The prompts of each class: ``prompts[k][t] = templates[t]`` filled with class ``k``."""
    templates = check_templates(templates)
    return [[prompt(t, name, clean=clean) for t in templates] for name in class_names]
