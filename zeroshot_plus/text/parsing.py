"""Captions -> entities (head noun + attributes) and relations (subject, predicate, object).

The default parser is rule-based and needs no model: a closed-class lexicon (determiners,
prepositions, auxiliaries, conjunctions), a list of common verbs and suffix rules ("-ing",
"-s", "-ed") tag the words; maximal runs of other words are noun phrases (the last word is
the head, the words before it its attributes); a verb and/or preposition between two noun
phrases makes a relation. ``LLMParser`` asks an OpenAI-compatible endpoint instead (through
``zeroshot_plus.text.llm``'s client and on-disk cache). Both return a ``Parse``,
which reads and writes the reference's JSON schema::

    {"objects": {name: {"attributes": [...]}}, "connections": [{"subject", "verb", "object"}]}
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..errors import InputError
from .llm import BadAnswer, CachedAsker, check_text, json_answer


DETERMINERS = frozenset(
    "a an the this that these those some any his her its their my your our one two three four "
    "five six several many few each every another both no other".split())
PREPOSITIONS = frozenset(
    "on in at of with by near under over above below behind beside besides inside into onto "
    "through towards toward against across along around from to for up down between among "
    "beneath underneath outside off out atop past upon within without via next close front "
    "top away".split())
# Multi-word prepositions, merged into one token before tagging.
COMPOUND_PREPOSITIONS = ("in front of", "on top of", "next to", "close to", "out of",
                         "away from", "in the middle of", "on the side of")
AUXILIARIES = frozenset(
    "is are was were be been being am has have had does do did can could will would may might "
    "should must 's".split())
CONJUNCTIONS = frozenset("and or but while as who which where whose than so then".split())
STOP = frozenset("there here very not also just still really it they he she them him".split())
# Base forms of verbs common in image captions (ComVG, Winoground, COCO).
VERBS = frozenset("""
sit stand walk run hold ride eat drink play wear carry throw catch fly look watch lay lie jump
swim cut feed chase hit kick pet push pull read write cook wash clean brush bite climb kiss hug
touch use open close ski surf skate skateboard swing fill lean float hang drive park cross sleep
rest talk sell buy show take make give put pour graze stare face pose wait work fix paint draw
photograph smile laugh point reach lift grab follow lead attack fight milk dry examine drop sniff
bake kneel stop tap toss grill lick sing dance sail row paddle fish serve slice chop stir mix
spread hang sip chew smell hunt carry pick place stack load unload board exit enter leave
approach pass hide lift tie type text call wave blow shake crawl roll slide dive splash
""".split())
# Words ending in "-ing" / "-s" that are nouns in captions, not verb forms.
NOUN_EXCEPTIONS = frozenset(
    "building ceiling painting clothing railing king ring string wing thing morning evening "
    "ping sign bus glass grass dress class gas lens canvas ding icing frosting awning "
    "stuffing pudding dumpling sling spring ceiling sibling".split())

_IRREGULAR = {"lying": "lie", "laying": "lay", "lies": "lie", "lays": "lay", "laid": "lay",
              "lay": "lay", "sat": "sit", "stood": "stand", "ran": "run", "held": "hold",
              "rode": "ride", "ate": "eat", "drank": "drink", "wore": "wear", "threw": "throw",
              "caught": "catch", "flew": "fly", "flies": "fly", "cut": "cut", "hit": "hit",
              "put": "put", "read": "read", "took": "take", "made": "make", "gave": "give",
              "men": "man", "women": "woman", "children": "child", "people": "person",
              "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose",
              "knives": "knife", "leaves": "leaf", "shelves": "shelf", "wolves": "wolf",
              "glasses": "glasses", "skiing": "ski", "dying": "die", "tying": "tie"}
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|'s")


@dataclass
class Entity:
    """One noun phrase: its head ``name`` and the ``attributes`` (words) before it."""

    name: str
    attributes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The key text of its sub-image: "<attributes> <name>" (the reference's)."""
        return " ".join([*self.attributes, self.name])


@dataclass
class Relation:
    """``subject`` and ``object`` index ``Parse.entities``; ``predicate`` is the words
    between them ("sitting at"), ``verb`` its head lemma ("sit", or the preposition)."""

    subject: int
    predicate: str
    object: int
    verb: str


@dataclass
class Parse:
    """A parsed caption."""

    caption: str
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)

    def triplets(self) -> list[tuple[str, str, str]]:
        """(subject head, verb lemma, object head) per relation."""
        return [(self.entities[r.subject].name, r.verb, self.entities[r.object].name)
                for r in self.relations]

    def to_dict(self) -> dict:
        """The reference's schema; repeated names get a suffix (#2, #3, ...)."""
        names = _unique_names([e.name for e in self.entities])
        return {"objects": {n: {"attributes": e.attributes} for n, e in zip(names, self.entities)},
                "connections": [{"subject": names[r.subject], "verb": r.predicate,
                                 "object": names[r.object]} for r in self.relations]}

    @classmethod
    def from_dict(cls, caption: str, data: dict) -> "Parse":
        """Read the reference's schema (attributes may be a string, a list or null)."""
        if not isinstance(data, dict) or not isinstance(data.get("objects", {}), dict):
            raise InputError(f"the parse of '{caption}' is not an object with an \"objects\" map.")
        if not isinstance(data.get("connections", []), (list, type(None))):
            raise InputError(f"the parse of '{caption}' has \"connections\" that are not a list.")
        entities, index = [], {}
        for name, info in data.get("objects", {}).items():
            attributes = (info or {}).get("attributes") if isinstance(info, dict) else None
            if isinstance(attributes, str):
                attributes = attributes.split()
            if not isinstance(attributes, (list, type(None))):
                raise InputError(f"the parse of '{caption}' gives \"{name}\" attributes that "
                                 f"are neither a list nor a string.")
            words = [str(a).strip() for a in attributes or [] if str(a).strip()]
            index[str(name)] = len(entities)
            entities.append(Entity(re.sub(r"#\d+$", "", str(name)).strip(), words))
        relations = []
        for link in data.get("connections", []) or []:
            if not isinstance(link, dict):
                continue
            subject, obj = index.get(str(link.get("subject"))), index.get(str(link.get("object")))
            predicate = str(link.get("verb") or "").strip()
            if subject is None or obj is None or not predicate:
                continue  # a link to an undeclared object cannot be grounded
            relations.append(Relation(subject, predicate, obj, lemma(predicate.split()[0])))
        return cls(caption, entities, relations)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


# ---------------------------------------------------------------------- lemmas and tags


def lemma(word: str) -> str:
    """A rule-based lemma: irregular forms, then "-ing", "-ed", "-ies", "-es", "-s"."""
    word = word.lower().strip()
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in VERBS or word in NOUN_EXCEPTIONS or len(word) <= 3:
        return word
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            return _verb_stem(word[:-len(suffix)])
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _verb_stem(stem: str) -> str:
    """"sitt" -> "sit", "rid" -> "ride", "chas" -> "chase"; unknown stems unchanged."""
    for candidate in (stem, stem + "e", stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else None):
        if candidate and candidate in VERBS:
            return candidate
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
        return stem[:-1]
    return stem


def tokenize(caption: str) -> list[str]:
    """Lower-case word tokens, with compound prepositions merged ("next to")."""
    tokens = _TOKEN.findall(caption.lower())
    text = " " + " ".join(tokens) + " "
    for compound in COMPOUND_PREPOSITIONS:
        text = text.replace(f" {compound} ", f" {compound.replace(' ', '_')} ")
    return [t.replace("_", " ") for t in text.split()]


def _tag(tokens: list[str]) -> list[str]:
    """One tag per token: DET PREP AUX CONJ STOP VERB or NOUN (content word)."""
    tags = []
    for i, token in enumerate(tokens):
        before = tags[-1] if tags else None
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        if token in DETERMINERS or token.isdigit():
            tags.append("DET")
        elif " " in token or token in PREPOSITIONS:
            tags.append("PREP")
        elif token in AUXILIARIES:
            tags.append("AUX")
        elif token in CONJUNCTIONS:
            tags.append("CONJ")
        elif token in STOP:
            tags.append("STOP")
        elif _is_verb(token, before, after, seen_noun="NOUN" in tags):
            tags.append("VERB")
        else:
            tags.append("NOUN")
    return tags


def _is_verb(token: str, before: str | None, after: str | None, seen_noun: bool) -> bool:
    if token in NOUN_EXCEPTIONS:
        return False
    base = lemma(token)
    ing = token.endswith("ing") and len(token) > 4
    if ing and before == "DET" and after is not None and after not in DETERMINERS \
            and after not in PREPOSITIONS and after not in AUXILIARIES:
        return False  # "a running dog": an attribute
    if ing or (before == "AUX" and token.endswith("ed")):
        return True
    if base in VERBS and (token == base or token.endswith(("s", "ed")) or token in _IRREGULAR):
        # A base form or "-s" form is a verb after the subject ("a man chases") or an
        # auxiliary ("is hold"); before any noun it is a noun or attribute ("a swing").
        return before in ("AUX", "NOUN") and seen_noun
    return False


# ---------------------------------------------------------------------- the rule-based parser


def parse_caption(caption: str) -> Parse:
    """Rule-based parse: noun phrases -> entities, "NP (verb) (preposition) NP" -> relations.

    A preposition links the noun phrase just before it to the next one; a verb links the
    clause's subject (its first noun phrase) to the next one: "a cup on a table held by a man"
    gives (cup, on, table) and (cup, held by, man). Only the first of several coordinated
    subjects is linked ("a man and a woman are sitting on a bench": man-sitting on-bench), and
    a verb without an object makes no relation.
    """
    tokens = tokenize(str(caption))
    tags = _tag(tokens)
    entities: list[Entity] = []
    relations: list[Relation] = []
    words: list[str] = []          # the noun phrase being read
    predicate: list[tuple[str, str]] = []   # (token, tag) between two noun phrases
    subject: int | None = None     # the subject of the current clause
    last: int | None = None        # the last noun phrase

    def close_phrase() -> None:
        nonlocal words, predicate, subject, last
        if not words:
            return
        entities.append(Entity(lemma_noun(words[-1]), words[:-1]))
        current = len(entities) - 1
        verbs = [t for t, g in predicate if g == "VERB"]
        preps = [t for t, g in predicate if g == "PREP"]
        if last is not None and (verbs or preps):
            source = subject if verbs and subject is not None else last
            text = " ".join(t for t, g in predicate if g in ("VERB", "PREP"))
            relations.append(Relation(source, text, current, lemma(verbs[0]) if verbs else preps[0]))
        if subject is None or (last is not None and not predicate):
            subject = current if subject is None else subject
        last, words, predicate = current, [], []

    for token, tag in zip(tokens, tags):
        if tag == "NOUN":
            words.append(token)
        elif tag == "DET" and words:
            close_phrase()
        elif tag in ("VERB", "PREP"):
            close_phrase()
            predicate.append((token, tag))
        elif tag == "CONJ":
            close_phrase()
            if token != "and":
                predicate = []
        elif tag == "AUX":
            close_phrase()
    close_phrase()
    return Parse(str(caption), entities, relations)


def lemma_noun(word: str) -> str:
    """The head noun as written, singular when the plural rule is safe ("dogs" -> "dog")."""
    base = lemma(word)
    return base if word.endswith("s") and not word.endswith(("ss", "us", "is")) else word


# ---------------------------------------------------------------------- the LLM parser

PARSE_PROMPT_VERSION = 1
_PARSE_SYSTEM = ("You parse image captions into objects and relations. Reply with one JSON "
                 "object and nothing else.")
_PARSE_EXAMPLE = ('Caption: "young person sit on a boat"\n'
                  '{"objects": {"person": {"attributes": ["young"]}, "boat": {"attributes": []}}, '
                  '"connections": [{"subject": "person", "verb": "sit on", "object": "boat"}]}')


class LLMParser(CachedAsker):
    """Parse captions with an OpenAI-compatible chat endpoint (the reference's one-shot
    prompt, temperature 0); parameters as ``CachedAsker``, whose fallback here is the
    rule-based parse."""

    def key(self, caption: str) -> dict:
        return {"model": self.endpoint.model, "kind": "parses", "class": caption,
                "prompt_version": PARSE_PROMPT_VERSION}

    def __call__(self, caption: str) -> Parse:
        messages = [{"role": "system", "content": _PARSE_SYSTEM},
                    {"role": "user", "content": f"{_PARSE_EXAMPLE}\nCaption: \"{caption}\""}]
        data = self.answer(
            self.key(caption), messages, lambda content: _parse_answer(content, caption),
            json.dumps, lambda: None,
            failure=f"the LLM gave no valid parse of '{caption}'.",
            warning="the LLM caption parser failed (%s); this caption, and any other it gives "
                    "no parse of, is parsed by the rule parser")
        return parse_caption(caption) if data is None else Parse.from_dict(caption, data)


def _parse_answer(content: str | None, caption: str) -> dict:
    """An answer -> a parse dict that ``Parse.from_dict`` reads; BadAnswer otherwise."""
    data = json_answer(content)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), dict):
        raise BadAnswer('the answer had no "objects" map')
    check_text(data)
    try:
        Parse.from_dict(caption, data)
    except InputError as exc:
        raise BadAnswer(str(exc).rstrip(".")) from None
    return data


def make_parser(parser: str | Callable[[str], Parse]) -> Callable[[str], Parse]:
    """"rules" -> ``parse_caption``; a callable is used as it is."""
    if parser == "rules":
        return parse_caption
    if callable(parser):
        return parser
    raise InputError(f"parser must be 'rules' or a callable caption -> Parse, got {parser!r}.")


# ---------------------------------------------------------------------- accuracy


def verb_matches(relation: Relation, gold: str) -> bool:
    """Whether a parsed predicate matches an annotated verb.

    The annotation is compared without spaces ("laying in" = "layingin") with the verb's
    lemma, its surface form, and verb + preposition (surface or lemma); lemmas of both sides
    are compared too; an annotation that starts with the surface verb matches (ComVG glues a
    preposition to the verb: "layingin" for "laying on"), and "lie" and "lay" count as one
    verb (captions and annotations use them interchangeably).
    """
    gold = gold.lower().replace(" ", "")
    words = relation.predicate.split()
    surface, rest = words[0], "".join(words[1:]).replace(" ", "")
    verb = "lay" if relation.verb == "lie" else relation.verb
    surface = "laying" if surface == "lying" else surface
    candidates = {verb, surface, surface + rest, verb + rest}
    gold_lemma = lemma(gold)
    return (gold in candidates or ("lay" if gold_lemma == "lie" else gold_lemma) == verb
            or gold.startswith(surface))


def triplet_accuracy(captions: Sequence[str], triplets: Iterable[tuple[str, str, str]],
                     parser: Callable[[str], Parse] = parse_caption) -> dict[str, float]:
    """Agreement of the first parsed relation with annotated (subject, verb, object) triplets.

    Subject and object match when their lemmas are equal; the verb as ``verb_matches``.
    A caption with no relation counts as wrong on all three. Returns the fraction correct
    per slot and for whole triplets ("triplet"), over ``n`` captions.
    """
    hits = {"subject": 0, "verb": 0, "object": 0, "triplet": 0}
    n = 0
    for caption, (subject, verb, obj) in zip(captions, triplets):
        n += 1
        parse = parser(caption)
        if not parse.relations:
            continue
        first = parse.relations[0]
        ok = (lemma(parse.entities[first.subject].name) == lemma(subject),
              verb_matches(first, verb),
              lemma(parse.entities[first.object].name) == lemma(obj))
        for slot, good in zip(("subject", "verb", "object"), ok):
            hits[slot] += good
        hits["triplet"] += all(ok)
    if n == 0:
        raise InputError("no captions to measure parser accuracy on.")
    return {**{k: v / n for k, v in hits.items()}, "n": n}


def read_comvg_triplets(path: str | os.PathLike) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Distinct (sentence, positive triplet) pairs of a ComVG CSV, in file order."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise InputError(f"cannot read ComVG file '{path}': {exc.strerror}.") from None
    if not rows or not {"sentence", "pos_triplet"} <= set(rows[0]):
        raise InputError(f"'{path}' is not a ComVG CSV (columns sentence, pos_triplet).")
    pairs = dict.fromkeys((r["sentence"].strip(), r["pos_triplet"].strip()) for r in rows)
    captions = [s for s, _ in pairs]
    triplets = [tuple(p.strip() for p in t.split(",")) for _, t in pairs]
    kept = [(c, t) for c, t in zip(captions, triplets) if len(t) == 3]
    return [c for c, _ in kept], [t for _, t in kept]
