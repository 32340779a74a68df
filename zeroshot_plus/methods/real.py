"""REAL: prompts with each concept's most frequent synonym (Parashar et al., "The Neglected
Tails of Vision-Language Models", CVPR 2024; METHODS.md §3).

REAL-Prompt: zero-shot classification where each class name c is replaced, inside every
template, by s_c, its synonym most frequent in the pretraining captions:

    w_c = normalise( mean_j normalise(g(template_j(s_c))) ),   logits = 100 · x̂ · w_cᵀ

Its variants in the reference code (``prompt_maker``; METHODS.md §3.2), as parameters:
``name_type`` "most_common_name" (s_c, above), "name" (the class name itself: the zero-shot
baseline) or "alternates" (every synonym a of c in every template, all averaged into one
weight: w_c = normalise(mean_{a,j} normalise(g(template_j(a))))); and ``prompt_style``
"templates" (above), "dclip" or "cupl": the class's prompts are then its DCLIP descriptor
prompts ("k, which has d", the "menon" rule) or its CuPL sentences, in which every occurrence
of the class name k is replaced by the chosen name (Python's ``str.replace``: case-sensitive,
inside longer words too, as the reference); a class with an empty list gets the one prompt
"A photo of a {chosen name}". The reference's ``tau`` re-normalisation, w_c / ‖w_c‖^τ, is
left out: every w_c has unit norm, so it changes nothing.

REAL-Linear: a linear head trained on a pool of (image, caption) pairs:

    1. For each synonym a of class c: e_{c,a} = normalise(mean_j normalise(g(template_j(a)))).
    2. Candidates of c: the pool captions mentioning a synonym of c (phrase match, as the
       frequency counts); score r_i = mean_a cos(g(caption_i), e_{c,a})  (text to text).
    3. Keep the ``n_samples`` best-scored candidates with r_i >= 0: their *image* embeddings,
       labelled c.
    4. W ∈ R^{C×D}, no bias, starts at the REAL-Prompt weights W_zs. Each step draws 32 image
       samples and 32 prompt samples (every REAL-Prompt prompt of every class, labelled), and
       takes an AdamW step (lr 1e-4, betas (0.9, 0.999), weight decay 0.01) on the
       cross-entropy of 100 · x̂ · Wᵀ. The learning rate warms up linearly for 50 steps (step 0
       at 1e-5), then follows a cosine over ``max_iter`` steps. max_iter = min(32000,
       n_samples · C · 10 / 32): about ten epochs. The last iterate is kept.
    5. WiSE-FT: W_final = 0.5 · W + 0.5 · W_zs (not re-normalised); logits = 100 · x̂ · W_finalᵀ.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ..errors import InputError
from ..text.frequency import CaptionIndex
from .base import (Predictor, check_param, class_columns, given_text_weights, is_integer,
                   is_number, label_codes, random_state_of)
from ..text.classnames import display_name
from ..text.descriptors import descriptor_prompts, match_descriptors
from ..text.templates import class_prompts, load_templates
from ..text.synonyms import NAME_TYPES, REAL_PROMPT_STYLES, SynonymTable, load_synonyms
from ..text.heads import class_weights, l2_normalise, segment_mean
from .zeroshot import ZeroShotClassifier


class RealPromptClassifier(ZeroShotClassifier):
    """Zero-shot classification with each class name replaced by its most frequent synonym.

    Parameters
    ----------
    backbone : Backbone that encodes the prompts.
    classnames : class names (list, comma string or file); they become ``classes_``, sorted
        (positions 0..C-1 when names repeat, as in some metrics files). With a metrics file
        they are matched to its rows by class id; when None, the metrics file's ``name``
        fields (or the synonym map's keys) are the classes.
    synonyms : a REAL metrics file as released (``most_common_name`` per class id, taken as
        written) or written by ``zeroshot-plus frequency``; or a JSON file / dict mapping
        each class name to the synonym to use ({class: synonym}).
    templates : template set name, template file, or list of templates ("{}" = the name).
    name_type : the name(s) in the prompts: "most_common_name" (REAL-Prompt), "name" (the
        class name) or "alternates" (every synonym: a metrics file's ``alternates`` as
        written, or a map's class name and its synonyms, all averaged into one weight).
    prompt_style : "templates" (``templates`` filled with the names), "dclip" or "cupl"
        (``descriptors`` prompts with the class name replaced; see the module docstring).
    descriptors : with "dclip", a descriptor file or dict {class: [descriptor, ...]}; with
        "cupl", a CuPL file {class: [sentence, ...]}; matched to the classes by name.
    text_weights : a precomputed (C, D) text head (e.g. a saved ``text_head_``) instead of
        backbone + synonyms, as in ZeroShotClassifier.
    logit_scale : multiplier of the cosine similarities (CLIP's is 100).
    cache : embedding store directory for the prompt embeddings.

    Fitted attributes: ``classes_`` and ``classnames_`` (C,) the original class names,
    ``prompt_names_`` (C,) the names the prompts use (not with ``text_weights`` or
    "alternates"),
    ``text_head_`` (C, D) (usable as GDA's ``text_weights``), ``n_features_in_``; rows in
    ``classes_`` order.
    """

    _optional_fitted = frozenset({"prompt_names_"})

    def __init__(self, backbone=None, *, classnames=None, synonyms=None,
                 templates="openai_imagenet", name_type: str = "most_common_name",
                 prompt_style: str = "templates", descriptors=None, text_weights=None,
                 logit_scale: float = 100.0, cache=None):
        self.backbone = backbone
        self.classnames = classnames
        self.synonyms = synonyms
        self.templates = templates
        self.name_type = name_type
        self.prompt_style = prompt_style
        self.descriptors = descriptors
        self.text_weights = text_weights
        self.logit_scale = logit_scale
        self.cache = cache

    def fit(self, X=None, y=None):
        if self.text_weights is not None:
            return super().fit(X, y)
        check_param(self, "logit_scale", is_number(self.logit_scale, 0), "a number >= 0")
        _check_name_type(self)
        check_param(self, "prompt_style", self.prompt_style in REAL_PROMPT_STYLES,
                    "'templates', 'dclip' or 'cupl'")
        name = type(self).__name__
        if self.prompt_style == "templates" and self.descriptors is not None:
            raise InputError(f"{name}: descriptors are used only with prompt_style 'dclip' or "
                             f"'cupl', not '{self.prompt_style}'.")
        if self.prompt_style != "templates" and self.descriptors is None:
            raise InputError(f"{name}: prompt_style '{self.prompt_style}' needs descriptors "
                             f"(a {'descriptor' if self.prompt_style == 'dclip' else 'CuPL'} "
                             f"file or dict).")
        if self.prompt_style != "templates" and self.name_type == "alternates":
            raise InputError(f"{name}: prompt_style '{self.prompt_style}' replaces the class "
                             f"name by one name; use name_type 'most_common_name' or 'name', "
                             f"not 'alternates'.")
        table = _synonym_table(self)
        prompts = _real_prompts(table, self.name_type, self.templates, self.prompt_style,
                                self.descriptors)
        self._set_text_head(class_weights(self.backbone, prompts, cache=self.cache),
                            table.classes)
        vars(self).pop("prompt_names_", None)
        if self.name_type != "alternates":
            names = [chosen for (chosen,) in table.names(self.name_type)]
            self.prompt_names_ = np.array(names)[class_columns(table.classes)[2]]
        self._check_fit_data(X, y)
        return self


def _real_prompts(table: SynonymTable, name_type: str, templates, style: str = "templates",
                  descriptors=None) -> list[list[str]]:
    """Per class (in ``table`` order), REAL's prompts (``prompt_maker``): every template filled
    with every name of ``name_type``, synonym by synonym; or, with "dclip" / "cupl", the
    class's descriptor prompts / CuPL sentences with its name replaced by the chosen one."""
    names = table.names(name_type)
    if style == "templates":
        templates = load_templates(templates)
        return [[p for one in class_prompts(group, templates) for p in one] for group in names]
    match = match_descriptors(descriptors, table.classes)
    prompts = []
    for classname, items, (chosen,) in zip(match.classnames, match.descriptors, names):
        if not items:
            prompts.append([f"A photo of a {chosen}"])
            continue
        key = match.renamed.get(classname, classname)  # the name as the file writes it
        written = descriptor_prompts(key, items, "menon" if style == "dclip" else "sentences")
        prompts.append([p.replace(display_name(key), chosen) for p in written])
    return prompts


def _check_name_type(estimator) -> None:
    check_param(estimator, "name_type", estimator.name_type in NAME_TYPES,
                "'most_common_name', 'name' or 'alternates'")


def _synonym_table(estimator) -> SynonymTable:
    name = type(estimator).__name__
    if estimator.backbone is None:
        raise InputError(f"{name} needs a backbone to encode its prompts.")
    if estimator.synonyms is None:
        raise InputError(f"{name} needs synonyms: a REAL metrics file or a {{class: synonym}} map.")
    return load_synonyms(estimator.synonyms, estimator.classnames)


def warmup_cosine_lr(max_iter: int, lr: float, warmup_iter: int = 50) -> np.ndarray:
    """(max_iter,) learning rate of each step: step 0 at 1e-5 (5e-6 when lr <= 5e-5), then
    lr · t / warmup_iter for t < warmup_iter, then lr · (1 + cos(π (t − warmup_iter) / max_iter)) / 2."""
    t = np.arange(max_iter, dtype=np.float64)
    cosine = lr * (1 + np.cos(np.pi * (t - warmup_iter) / max(max_iter, 1))) / 2
    rates = np.where(t < warmup_iter, lr * t / max(warmup_iter, 1), cosine)
    if max_iter and warmup_iter:
        rates[0] = 1e-5 if lr > 5e-5 else 5e-6
    return rates


class RealLinearClassifier(Predictor):
    """REAL-Linear: a linear head on retrieved pool images, initialised at and WiSE-averaged
    with the REAL-Prompt head (see the module docstring for the algorithm).

    Parameters
    ----------
    backbone, classnames, synonyms, templates, cache : as in RealPromptClassifier. Retrieval
        uses every synonym of a class (a metrics file's ``alternates``, or the class name and
        its synonym).
    name_type : the names in W_zs's prompts and in the prompt samples (the reference's
        ``--prompt_name_type``), as in RealPromptClassifier; with "alternates" every
        (synonym, template) prompt is a sample.
    text_weights : a precomputed (C, D) zero-shot head W_zs instead of backbone + synonyms
        (``classnames`` optionally names its rows, else 0..C-1); its rows are then the prompt
        samples, and the pool must come labelled (``y``), as nothing encodes captions.
    n_samples : most pool images kept per class.
    max_iter : training steps; "auto" = int(min(32000, n_samples · C · 10 / 32)).
    lr, weight_decay, warmup_iter, batch_size : AdamW's learning rate and weight decay, the
        linear warm-up length, and the image and the prompt samples per step.
    wise_alpha : weight of the trained head in W_final = α W + (1 − α) W_zs.
    mention : "synonym" scores only pool captions that mention a synonym of the class;
        "any" scores every pool caption.
    logit_scale : multiplier of x̂ · Wᵀ in training and in ``logits``.
    random_state : seed of the sample order.

    Fitted attributes (rows and labels in ``classes_`` order): ``classes_``, ``classnames_``,
    ``text_head_`` (C, D) W_final, ``zeroshot_weights_`` (C, D) W_zs, ``linear_weights_``
    (C, D) the trained W, ``samples_`` (M,) pool rows used and ``sample_labels_`` (M,) their
    class indices, ``sample_counts_`` (C,), ``n_iter_``, ``loss_curve_`` (n_iter_,) training
    loss per step, ``learning_rates_`` (n_iter_,).
    """

    _required_fitted = Predictor._required_fitted | {
        "learning_rates_", "linear_weights_", "loss_curve_", "n_iter_", "sample_counts_",
        "sample_labels_", "samples_", "zeroshot_weights_"}

    def __init__(self, backbone=None, *, classnames=None, synonyms=None,
                 templates="openai_imagenet", name_type: str = "most_common_name",
                 text_weights=None, n_samples: int = 100,
                 max_iter="auto", lr: float = 1e-4, weight_decay: float = 0.01,
                 warmup_iter: int = 50, batch_size: int = 32, wise_alpha: float = 0.5,
                 mention: str = "synonym", logit_scale: float = 100.0, random_state=0,
                 cache=None):
        self.backbone = backbone
        self.classnames = classnames
        self.synonyms = synonyms
        self.templates = templates
        self.name_type = name_type
        self.text_weights = text_weights
        self.n_samples = n_samples
        self.max_iter = max_iter
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_iter = warmup_iter
        self.batch_size = batch_size
        self.wise_alpha = wise_alpha
        self.mention = mention
        self.logit_scale = logit_scale
        self.random_state = random_state
        self.cache = cache

    def fit(self, X, y=None, *, captions=None, caption_embeddings=None):
        """Train on a pool of image embeddings X (N, D): labelled by ``y`` (N,), or with
        ``captions`` (N,) from which each class retrieves its images (steps 1-3).

        caption_embeddings : (N, D) text embeddings of the captions, when already computed
        (otherwise ``backbone`` encodes them, cached in ``cache``).
        """
        self._check_params()
        name = type(self).__name__
        if y is None and captions is None:
            raise InputError(f"{name} requires y to be passed, but the target y is None; or "
                             f"pass captions to retrieve labelled images from.")
        if y is not None and captions is not None:
            raise InputError(f"{name}: fit takes labels y or captions to retrieve from, "
                             f"not both.")
        if y is None:
            X = self._validate_embeddings(X, reset=True)
        else:
            X, y = self._validate_embeddings(X, y, reset=True)
        W_zs, texts, text_labels, names, table = self._text_side()
        if W_zs.shape[1] != X.shape[1]:
            raise InputError(f"{name}: the pool embeddings have D={X.shape[1]} but the text "
                             f"side has D={W_zs.shape[1]}.")
        classes, self.classnames_, order = class_columns(names)
        if y is not None:
            samples = np.arange(len(X))
            labels = order[label_codes(y, classes, f"{name}: label")]
        elif table is None:
            raise InputError(f"{name}: retrieving from captions needs a backbone and synonyms, "
                             f"not text_weights; pass labels y instead.")
        else:
            samples, labels = self._retrieve(table, X, captions, caption_embeddings)
        n_classes = len(names)
        if not len(samples):
            raise InputError(f"{name}: no pool caption qualifies for any class (none mentions "
                             f"a synonym with a non-negative score); check the pool and synonyms.")
        max_iter = (int(min(32000, self.n_samples * n_classes * 10 / 32))
                    if self.max_iter == "auto" else int(self.max_iter))
        self.learning_rates_ = warmup_cosine_lr(max_iter, self.lr, self.warmup_iter)
        W, self.loss_curve_ = self._train(W_zs, X[samples], labels, texts, text_labels)
        self.n_iter_ = max_iter
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.zeroshot_weights_, self.linear_weights_ = W_zs[order], W[order]
        self.text_head_ = (self.wise_alpha * self.linear_weights_
                           + (1 - self.wise_alpha) * self.zeroshot_weights_)
        self.samples_, self.sample_labels_ = samples, np.argsort(order)[labels]
        self.sample_counts_ = np.bincount(self.sample_labels_, minlength=n_classes)
        return self

    def _text_side(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, SynonymTable | None]:
        """(W_zs (C, D), prompt samples (T, D), their class indices (T,), the class names,
        the synonym table or None), rows in the given class order."""
        if self.text_weights is not None:
            W_zs, names = given_text_weights(type(self).__name__, self.text_weights,
                                             self.classnames)
            return W_zs, W_zs, np.arange(len(W_zs)), names, None
        table = _synonym_table(self)
        prompts = _real_prompts(table, self.name_type, self.templates)
        W_zs = class_weights(self.backbone, prompts, cache=self.cache)
        texts = self.backbone.encode_texts([p for group in prompts for p in group],
                                           cache=self.cache)
        return (W_zs, texts, np.repeat(np.arange(len(prompts)), [len(p) for p in prompts]),
                table.classes, table)

    def _check_params(self) -> None:
        check_param(self, "mention", self.mention in ("synonym", "any"), "'synonym' or 'any'")
        _check_name_type(self)
        check_param(self, "max_iter", self.max_iter == "auto" or is_integer(self.max_iter, 0),
                    "'auto' or an integer >= 0")
        for param in ("n_samples", "batch_size"):
            check_param(self, param, is_integer(getattr(self, param), 1), "an integer >= 1")
        check_param(self, "logit_scale", is_number(self.logit_scale, 0), "a number >= 0")
        for param in ("lr", "weight_decay"):
            check_param(self, param, is_number(getattr(self, param), 0), "a number >= 0")
        check_param(self, "warmup_iter", is_integer(self.warmup_iter, 0), "an integer >= 0")
        check_param(self, "wise_alpha", is_number(self.wise_alpha, 0, 1), "a number in [0, 1]")

    def _retrieve(self, table: SynonymTable, X: np.ndarray, captions, caption_embeddings
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-3: per class, the best-scored candidate pool rows with r >= 0."""
        name = type(self).__name__
        captions = [str(c) for c in captions]
        if len(captions) != len(X):
            raise InputError(f"{name}: {len(X)} pool images but {len(captions)} captions.")
        if caption_embeddings is None:
            caption_embeddings = self.backbone.encode_texts(captions, cache=self.cache)
        caption_embeddings = l2_normalise(caption_embeddings)
        if caption_embeddings.shape != X.shape:
            raise InputError(f"{name}: caption_embeddings must have shape {X.shape}, "
                             f"got {caption_embeddings.shape}.")
        templates = load_templates(self.templates)
        per_synonym = class_weights(self.backbone, [
            p for synonyms in table.alternates for p in class_prompts(synonyms, templates)],
            cache=self.cache)                                       # (A, D) e_{c,a}
        centres = segment_mean(per_synonym, [len(a) for a in table.alternates])  # (C, D)
        index = None
        if self.mention == "synonym":
            index = CaptionIndex()
            index.add(captions)
        rows, labels = [], []
        for c, synonyms in enumerate(table.alternates):
            candidates = index.match(synonyms) if index is not None else np.arange(len(captions))
            scores = caption_embeddings[candidates] @ centres[c]    # r_i = mean_a cos
            order = np.argsort(-scores, kind="stable")
            kept = order[scores[order] >= 0][:self.n_samples]
            rows.append(candidates[kept])
            labels.append(np.full(len(kept), c))
        if index is not None:
            index.close()
        return np.concatenate(rows), np.concatenate(labels)

    def _train(self, W_zs: np.ndarray, images: np.ndarray, image_labels: np.ndarray,
               texts: np.ndarray, text_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step 4: AdamW on the cross-entropy of scaled cosine logits; returns (W, losses)."""
        seed = random_state_of(self.random_state, type(self).__name__).randint(np.iinfo(np.int32).max)
        generator = torch.Generator().manual_seed(int(seed))
        weight = torch.nn.Parameter(torch.from_numpy(W_zs.copy()))
        optimiser = torch.optim.AdamW([weight], lr=self.lr, betas=(0.9, 0.999),
                                      weight_decay=self.weight_decay)
        streams = [_Batches(torch.from_numpy(images), torch.from_numpy(image_labels),
                            self.batch_size, generator),
                   _Batches(torch.from_numpy(texts), torch.from_numpy(text_labels),
                            self.batch_size, generator)]
        losses = np.empty(len(self.learning_rates_))
        for step, rate in enumerate(self.learning_rates_):
            features, labels = zip(*(next(s) for s in streams))
            logits = self.logit_scale * torch.cat(features) @ weight.T
            loss = torch.nn.functional.cross_entropy(logits, torch.cat(labels))
            for group in optimiser.param_groups:
                group["lr"] = float(rate)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses[step] = loss.item()
        return weight.detach().numpy().copy(), losses

    def logits(self, X) -> np.ndarray:
        """(N, C) logits: logit_scale · x̂ · W_finalᵀ."""
        check_is_fitted(self)
        X = self._validate_embeddings(X, reset=False)
        return self.logit_scale * X @ self.text_head_.T


class _Batches:
    """Endless shuffled mini-batches (drop_last; reshuffled at each pass) of (rows, labels)."""

    def __init__(self, rows: torch.Tensor, labels: torch.Tensor, size: int,
                 generator: torch.Generator):
        self.rows, self.labels, self.generator = rows, labels.long(), generator
        self.size = min(size, len(rows))
        self.order, self.position = torch.empty(0, dtype=torch.long), 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.size > len(self.order):
            self.order, self.position = torch.randperm(len(self.rows), generator=self.generator), 0
        picked = self.order[self.position:self.position + self.size]
        self.position += self.size
        return self.rows[picked], self.labels[picked]
