"""Which of a detector's labels refer to a caption's entity (ComCLIP's ``grounding="file"``).

A detector output file gives each image ``{label: [boxes]}``; GRiT's dense captions, the
reference's detector, label regions with phrases ("a man wearing a white shirt"). An entity
("young person") is matched to labels by

- ``match_labels`` (no model): the labels equal to the entity's words, else those whose head
  noun (the head of their first noun phrase, by the rule parser) has the entity's lemma;
- ``LLMLabelMatcher``: an OpenAI-compatible endpoint is asked which labels could refer to the
  entity in the caption, as the reference does; every answer is checked (a JSON object
  ``{"labels": [...]}`` naming only listed labels) before it is cached on disk, so nothing
  is asked twice.
"""

from __future__ import annotations

import json
from typing import Sequence

from .llm import BadAnswer, CachedAsker, check_text, json_answer
from .parsing import lemma, parse_caption


LABELS_PROMPT_VERSION = 1
_SYSTEM = ("You match the words of an image caption to the labels a detector gave regions of "
           "the image. Reply with one JSON object and nothing else.")


def head_noun(phrase: str) -> str | None:
    """The lemma of the head of the phrase's first noun phrase (None if it has none)."""
    entities = parse_caption(phrase).entities
    return lemma(entities[0].name) if entities else None


def match_labels(caption: str, entity: str, labels: Sequence[str]) -> list[str]:
    """The labels (as given) equal to ``entity`` (case and spaces aside), else those with the
    entity's head noun; ``caption`` is not used (the LLM matcher's signature)."""
    words = " ".join(entity.lower().split())
    exact = [label for label in labels if " ".join(label.lower().split()) == words]
    if exact:
        return exact
    head = head_noun(entity)
    return [label for label in labels if head is not None and head_noun(label) == head]


class LLMLabelMatcher(CachedAsker):
    """Match entities to labels with an OpenAI-compatible chat endpoint (temperature 0);
    parameters as ``CachedAsker``, whose fallback here is ``match_labels``."""

    def key(self, caption: str, entity: str, labels: Sequence[str]) -> dict:
        return {"model": self.endpoint.model, "kind": "labels", "class": entity,
                "caption": caption, "labels": sorted(labels),
                "prompt_version": LABELS_PROMPT_VERSION}

    def __call__(self, caption: str, entity: str, labels: Sequence[str]) -> list[str]:
        if not labels:
            return []
        listed = json.dumps(sorted(labels), ensure_ascii=False)
        messages = [{"role": "system", "content": _SYSTEM},
                    {"role": "user", "content":
                        f"Detector labels: {listed}\nCaption: {json.dumps(caption)}\n"
                        f"Which of these labels could name the {json.dumps(entity)} of the "
                        f'caption? Reply {{"labels": [...]}} with labels copied exactly from '
                        f"the list, or an empty list when none fits."}]
        return self.answer(
            self.key(caption, entity, labels), messages,
            lambda content: _labels_answer(content, labels),
            lambda answer: json.dumps({"labels": answer}),
            lambda: match_labels(caption, entity, labels),
            failure=f"the LLM gave no valid labels for '{entity}' in '{caption}'.",
            warning="the LLM label matcher failed (%s); labels are matched by words")


def _labels_answer(content: str | None, labels: Sequence[str]) -> list[str]:
    """An answer -> the listed labels it names (de-duplicated, in its order); BadAnswer if
    it is not {"labels": [str, ...]} or names a label that is not listed."""
    data = json_answer(content)
    chosen = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
        raise BadAnswer('the answer had no list of strings under "labels"')
    check_text(chosen)
    unknown = [c for c in chosen if c not in labels]
    if unknown:
        raise BadAnswer(f"the answer named labels that are not listed: {unknown[:3]}")
    return list(dict.fromkeys(chosen))


