"""TPT: test-time prompt tuning, with DiffTPT's generated views.

Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models"
(NeurIPS 2022); Feng et al., "Diverse Data Augmentation with Diffusions for Effective
Test-time Prompt Tuning" (ICCV 2023). For each test image x, with the context ctx ∈ R^{n×W}
(n learnable token embeddings shared by all classes, initialised from "a photo of a"):

    1. views v_0 = preprocess(x), v_1..v_V = RandomResizedCrop + flip (+ AugMix) of raw x
       (DiffTPT: + the generated images of x, resized and centre-cropped)
    2. f_i = image features of v_i                      encoded once, by the image pipeline
    3. z_i = s · f_i · T(ctx_0)ᵀ,  H_i = −Σ_c p_ic log p_ic     per-view logits and entropy
    4. S = the ⌊ρ·V'⌋ views of lowest entropy                    confidence selection
       (DiffTPT: first keep the ⌊ρ_cos·(V'−1)⌋ views whose logits are most cosine-similar
        to z_0, prepend v_0, then select by entropy among those)
    5. L(ctx) = −Σ_c p̄_c log p̄_c,   p̄ = mean_{i∈S} softmax(z_i(ctx))   marginal entropy
    6. ctx ← AdamW(ctx, ∇L), ``steps`` times (selection fixed after step 1)
    7. predict argmax_c s · f_0 · T(ctx)_cᵀ, then reset ctx ← ctx_0 for the next image

T(ctx) (C, D) runs the frozen text tower on [SOS] ctx [class name] "." [EOS]. Exact
shortcuts make it fast on a CPU: the text tower runs only up to the longest class prompt
(causal mask, end-of-text pooling); the first AdamW step is applied in closed form; several
images are tuned together: at step 1 they share ctx_0, so one text pass with gradients serves
all of them (one backward pass each), and later passes carry a batch dimension on the context;
more prompts than fit in memory go through the text tower in chunks, with the gradient
accumulated chunk by chunk.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from pathlib import Path
from typing import Callable, Container, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from ..choices import AUGMIX_MODES, CTX_COUNTS
from ..data.images import pil_key
from ..data.sources import (IMAGE_EXTENSIONS, ImageInput, ImageSource, read_image_source,
                            takes_images)
from ..encoders.augmix import AugMix
from ..encoders.backbone import Backbone
from ..encoders.pipeline import (EncodeReport, Picture, View, ViewMaker, encode_views,
                                 seeded_torch_rng)
from ..encoders.text_tower import TextTower, encode_embedded, prompt_tower
from ..errors import InputError
from .base import Predictor, check_param, class_columns, is_integer, is_number, seed_of
from ..text.classnames import display_name, parse_classnames
from ..text.templates import load_templates

log = logging.getLogger(__name__)

BETAS = (0.9, 0.999)  # torch.optim.AdamW defaults, as the reference uses them
EPS = 1e-8
WEIGHT_DECAY = 0.01

DiffusionViews = str | os.PathLike | Callable[[Image.Image], Sequence[Image.Image]]
ContextInit = str | os.PathLike | np.ndarray | torch.Tensor
DIFFTPT_GENERATED = 63  # the generated views DiffTPT reads per image: its batch size 64 - 1


class TPTClassifier(Predictor):
    """Zero-shot classifier that tunes its prompt context on each test image (TPT / DiffTPT).

    Parameters
    ----------
    backbone : Backbone whose text tower is open_clip's standard CLIP transformer.
    classnames : class names (list, comma string or file); they become ``classes_``, sorted.
    prompt_names : the names the prompts use, one per class name (e.g. REAL's most frequent
        synonyms); default: ``classnames``.
    n_ctx : number of context vectors when ``ctx_init`` is None (random N(0, 0.02²) init).
    ctx_init : the initial context: words, e.g. "a photo of a" ('_' read as a space), or one
        template with "{}" where the class name goes: the words before it are the context,
        the text after it a fixed suffix ("a photo of a" means "a photo of a {}."); or a
        learned context (n_ctx, W), e.g. CoOp's: an array, or the path of a CoOp checkpoint
        (``load_coop_context``; a numpy array or a path can be saved with the classifier).
        A learned context is followed by the class name and ".".
    ctx_count : how many context vectors words give: "tokens" (default: every BPE token of
        the words is tuned) or "words" (the reference's count, one per space-separated word:
        a word of several tokens leaves the last ones of the context fixed, in the suffix).
    n_views : augmented views per image besides the original (the paper: 63).
    augmix : AugMix on top of the crop + flip (the paper: for fine-grained data sets only):
        False; "reference" (TPT's own operations, levels U(0.1, 1), mixed as normalised
        float tensors: ``encoders.augmix``); or "torchvision" / True (torchvision's
        AugMix(severity=1), which leaves the geometric operations at magnitude 0).
    selection_p : fraction ρ of views kept by confidence selection, ⌊ρ·V'⌋ views.
    lr : AdamW learning rate.
    steps : AdamW steps per image; the first is applied in closed form when it is the only one.
    batch_images : images tuned together in one batched pass (separate contexts).
    text_batch : prompts (image, class pairs) per text-tower pass; more go in chunks.
    random_state : None, int, RandomState or Generator; with the image content it fixes the views of
        each image.
    diffusion_views : DiffTPT's generated variations per image: a folder of files
        ``{stem}_{i}.{ext}`` for an image file ``.../{class}/{stem}.*``, either flat in the
        folder or, as DiffTPT writes them, in its sub-folder ``{class}`` (the name of the
        image's own folder; used when it exists); or a callable image -> images (called
        where the images are decoded: threads, or worker processes with
        ``backbone.num_workers`` > 0). None: plain TPT.
    diffusion_count : at most this many generated views per image, the first by i (DiffTPT
        reads i = 0..62, its batch size - 1); None: all there are.
    cosine_p : DiffTPT: fraction of the non-original views kept by the logit-cosine filter.

    DiffTPT's own setting is ``n_views=64, selection_p=0.3, steps=4, diffusion_count=63``
    with ``diffusion_views``.
    ``fit(X=None, y=None)`` builds the prompt learner; X are images (paths or PIL images).
    Fitted attributes: ``classes_``, ``classnames_`` (C,), ``n_ctx_``.
    """

    _required_fitted = frozenset({"classes_", "classnames_", "n_ctx_"})
    _learns_from_y = False

    def __init__(self, backbone: Backbone | None = None, *, classnames=None, prompt_names=None,
                 n_ctx: int = 4, ctx_init: ContextInit | None = "a photo of a",
                 ctx_count: str = "tokens", n_views: int = 63, augmix: bool | str = False,
                 selection_p: float = 0.1, lr: float = 5e-3, steps: int = 1,
                 batch_images: int = 4, text_batch: int = 256, random_state=0,
                 diffusion_views: DiffusionViews | None = None,
                 diffusion_count: int | None = None, cosine_p: float = 0.8):
        self.backbone = backbone
        self.classnames = classnames
        self.prompt_names = prompt_names
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.ctx_count = ctx_count
        self.n_views = n_views
        self.augmix = augmix
        self.selection_p = selection_p
        self.lr = lr
        self.steps = steps
        self.batch_images = batch_images
        self.text_batch = text_batch
        self.random_state = random_state
        self.diffusion_views = diffusion_views
        self.diffusion_count = diffusion_count
        self.cosine_p = cosine_p

    # ------------------------------------------------------------------ fit

    def fit(self, X=None, y=None):
        """Build the prompt learner and the initial class weights; learns nothing from X."""
        owner = type(self).__name__
        if not isinstance(self.backbone, Backbone):
            raise InputError(f"{owner} needs a Backbone, got {type(self.backbone).__name__}.")
        if self.classnames is None:
            raise InputError(f"{owner} needs classnames.")
        for name, low in (("n_views", 0), ("steps", 1), ("batch_images", 1), ("text_batch", 1)):
            check_param(self, name, is_integer(getattr(self, name), low), f"an integer >= {low}")
        for name in ("selection_p", "cosine_p"):
            value = getattr(self, name)
            check_param(self, name, is_number(value, 0, 1) and value > 0, "in (0, 1]")
        check_param(self, "lr", is_number(self.lr, 0), "a number >= 0")  # 0: no tuning
        check_param(self, "ctx_count", self.ctx_count in CTX_COUNTS, f"one of {CTX_COUNTS}")
        augmix_mode(self.augmix)
        check_param(self, "diffusion_count", self.diffusion_count is None
                    or is_integer(self.diffusion_count, 1), "None or an integer >= 1")
        if self.diffusion_views is not None and not callable(self.diffusion_views) \
                and not Path(self.diffusion_views).is_dir():
            raise InputError(f"diffusion views folder '{self.diffusion_views}' does not exist.")
        names = parse_classnames(self.classnames, repeats=True)
        prompt_names = names if self.prompt_names is None else [str(n) for n in self.prompt_names]
        if len(prompt_names) != len(names):
            raise InputError(f"{owner}: {len(prompt_names)} prompt names for {len(names)} classes.")
        self.classes_, self.classnames_, order = class_columns(names)
        self._seed = seed_of(self.random_state, type(self).__name__)
        self._learner = PromptLearner(self.backbone, [prompt_names[i] for i in order],
                                      self.ctx_init, self.n_ctx, self._seed, self.ctx_count)
        with torch.no_grad():
            self._init_weights = self._learner.text_features(self._learner.ctx_init[None],
                                                             self.text_batch)[0]
        self.n_ctx_ = self._learner.n_ctx
        return self

    def __sklearn_tags__(self) -> Tags:
        return takes_images(super().__sklearn_tags__())

    # ------------------------------------------------------------------ predict

    def logits(self, X) -> np.ndarray:
        """(N, C) logits of the original view of each image, after tuning on that image.

        Raises InputError naming the first image that cannot be read.
        """
        parts = [logits for _, logits in self.iter_decision_function(X, on_error="raise")]
        return np.concatenate(parts)

    def iter_decision_function(self, X: ImageSource, *,
                               on_error: str = "raise", report: EncodeReport | None = None,
                               progress: bool | None = None,
                               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(positions, logits (B, C))`` in input order, ``batch_images`` at a time.

        With ``on_error="skip"`` unreadable images are left out and listed in
        ``report.failures``; with "raise" the first one raises InputError.
        """
        check_is_fitted(self)
        if not hasattr(self, "_learner"):  # loaded from a file: fit learns nothing from data
            self.fit()
        image_set = read_image_source(X)
        views = AugmentedViews(self.backbone, self.n_views, self.augmix, self._seed,
                               self.diffusion_views, image_set.items, self.diffusion_count)
        device, size = self._learner.device, self.batch_images
        show = self.backbone.progress if progress is None else progress
        # Images are tuned ``batch_images`` positions at a time; an unreadable one is left out.
        window: list[tuple[int, torch.Tensor]] = []
        with tqdm(total=len(image_set), desc="test-time prompt tuning", unit="img",
                  disable=not show or len(image_set) <= size) as bar:
            for encoded in encode_views(self.backbone, image_set, views, on_error=on_error,
                                        report=report, batch_size=size, progress=False):
                for image in encoded:
                    if window and image.position // size != window[0][0] // size:
                        yield self._predict_window(window)
                        bar.update(len(window))
                        window = []
                    window.append((image.position, torch.from_numpy(image.embeddings).to(device)))
            if window:
                yield self._predict_window(window)

    def _predict_window(self, window: list[tuple[int, torch.Tensor]]
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(positions, logits) of the images of one window, from their view features (V', D)."""
        positions = np.array([position for position, _ in window], dtype=np.int64)
        return positions, self._tune_and_predict([f for _, f in window]).cpu().numpy()

    # ------------------------------------------------------------------ the algorithm

    def _tune_and_predict(self, features: list[torch.Tensor]) -> torch.Tensor:
        """View features of B images, original view first -> (B, C) logits after tuning."""
        learner, scale = self._learner, self._learner.logit_scale
        selected = [f[self._select(scale * f @ self._init_weights.T)] for f in features]
        ctx = learner.ctx_init.expand(len(features), -1, -1).clone()  # reset: one ctx per image
        grad = self._first_gradient(selected)
        if self.steps == 1:
            ctx = adamw_first_step(ctx, grad, self.lr)
        else:
            ctx.requires_grad_(True)
            optimiser = torch.optim.AdamW([ctx], lr=self.lr, betas=BETAS, eps=EPS,
                                          weight_decay=WEIGHT_DECAY)
            for step in range(self.steps):
                ctx.grad = grad if step == 0 else self._loss_and_grad(ctx.detach(), selected)[1]
                optimiser.step()
            ctx = ctx.detach()
        with torch.no_grad():
            weights = learner.text_features(ctx, self.text_batch)  # (B, C, D)
        originals = torch.stack([f[0] for f in features])  # (B, D)
        return scale * torch.einsum("bd,bcd->bc", originals, weights)

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Indices of the selected views, given the logits (V', C) of all views."""
        if self.diffusion_views is None:
            return confident_views(logits, self.selection_p)
        return cosine_confident_views(logits, self.cosine_p, self.selection_p)

    def _first_gradient(self, selected: list[torch.Tensor]) -> torch.Tensor:
        """∇L_b at ctx_0 for each of B images (B, n, W).

        Every image starts from ctx_0, so one text pass with gradients serves them all:
        dL_b/dT at T(ctx_0) is cheap, then one backward pass per image through that pass.
        """
        learner, scale = self._learner, self._learner.logit_scale
        weights = self._init_weights.clone().requires_grad_(True)  # T(ctx_0) (C, D)
        upstream = [torch.autograd.grad(marginal_entropy(scale * s @ weights.T), weights)[0]
                    for s in selected]
        ctx = learner.ctx_init[None].clone().requires_grad_(True)
        grads = torch.zeros(len(selected), *learner.ctx_init.shape, device=ctx.device)
        classes = torch.arange(len(self.classes_), device=ctx.device)
        for rows in classes.split(self.text_batch):
            chunk = learner.encode(ctx, torch.zeros_like(rows), rows)
            for b, u in enumerate(upstream):
                grads[b] += torch.autograd.grad(chunk, ctx, grad_outputs=u[rows],
                                                retain_graph=b < len(upstream) - 1)[0][0]
        return grads

    def _loss_and_grad(self, ctx: torch.Tensor, selected: list[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_b L_b(ctx_b) and its gradient (B, n, W); each L_b depends on ctx_b alone."""
        learner, scale = self._learner, self._learner.logit_scale
        n_images, n_classes = ctx.shape[0], len(self.classes_)
        ctx = ctx.detach().requires_grad_(True)

        def loss_of(weights: torch.Tensor) -> torch.Tensor:  # weights (B, C, D)
            return sum(marginal_entropy(scale * s @ w.T) for s, w in zip(selected, weights))

        if n_images * n_classes <= self.text_batch:  # one pass with gradients
            loss = loss_of(learner.text_features(ctx, self.text_batch))
            return loss.detach(), torch.autograd.grad(loss, ctx)[0]
        # Too many prompts for one pass: dL/dT first, then the text tower's vector-Jacobian
        # product chunk by chunk, so that only one chunk's activations are held at a time.
        with torch.no_grad():
            weights = learner.text_features(ctx, self.text_batch)
        weights.requires_grad_(True)
        loss = loss_of(weights)
        upstream = torch.autograd.grad(loss, weights)[0].reshape(n_images * n_classes, -1)
        grad = torch.zeros_like(ctx)
        prompts = torch.arange(n_images * n_classes, device=ctx.device)
        for rows in prompts.split(self.text_batch):
            chunk = learner.encode(ctx, rows // n_classes, rows % n_classes)
            grad += torch.autograd.grad(chunk, ctx, grad_outputs=upstream[rows])[0]
        return loss.detach(), grad


# ---------------------------------------------------------------------- the maths


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., C) logits -> (...) entropy of their softmax, −Σ_c p_c log p_c."""
    log_p = logits.log_softmax(dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def confident_views(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The ⌊p·V⌋ (at least one) views of lowest entropy among the logits (V, C)."""
    keep = max(1, int(p * logits.shape[0]))
    return torch.argsort(entropy(logits), stable=True)[:keep]


def cosine_confident_views(logits: torch.Tensor, cosine_p: float, p: float) -> torch.Tensor:
    """DiffTPT's joint selection among the logits (V, C) of the original view and the others.

    Keep the ⌊cosine_p·(V−1)⌋ other views whose logits are most cosine-similar to the
    original's, prepend the original, then the ⌊p·kept⌋ of lowest entropy among them.
    """
    similarity = F.cosine_similarity(logits[1:], logits[:1], dim=-1)
    n_similar = int(cosine_p * (logits.shape[0] - 1))
    similar = torch.argsort(similarity, descending=True, stable=True)[:n_similar] + 1
    candidates = torch.cat([similar.new_zeros(1), similar])
    return candidates[confident_views(logits[candidates], p)]


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean of the softmaxes of the logits (k, C): TPT's loss."""
    log_p = logits.log_softmax(dim=-1)
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(logits.shape[0])
    log_mean = log_mean.clamp(min=torch.finfo(log_mean.dtype).min)
    return -(log_mean.exp() * log_mean).sum()


def adamw_first_step(param: torch.Tensor, grad: torch.Tensor, lr: float,
                     betas: tuple[float, float] = BETAS, eps: float = EPS,
                     weight_decay: float = WEIGHT_DECAY) -> torch.Tensor:
    """The first step of a fresh AdamW, in closed form.

    At step 1, m = (1−β₁)g and v = (1−β₂)g², so the bias-corrected moments are m̂ = g and
    v̂ = g², and  p ← p·(1 − lr·wd) − lr · g / (|g| + eps)  elementwise: a sign step. The
    moments are formed as torch.optim.AdamW forms them, so the result agrees to rounding.
    """
    beta1, beta2 = betas
    m = grad * (1 - beta1)
    v = grad * grad * (1 - beta2)
    denominator = v.sqrt() / math.sqrt(1 - beta2) + eps
    return param * (1 - lr * weight_decay) - (lr / (1 - beta1)) * m / denominator


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def augmix_mode(augmix) -> str | None:
    """TPTClassifier's ``augmix`` -> None (off), "torchvision" (also True) or "reference"."""
    if augmix is False or augmix is None:
        return None
    if augmix is True:
        return "torchvision"
    if isinstance(augmix, str) and augmix in AUGMIX_MODES:
        return augmix
    raise InputError(f"TPTClassifier parameter augmix must be False, True or one of "
                     f"{AUGMIX_MODES}, got {augmix!r}.")


# ---------------------------------------------------------------------- learned contexts

_CHECKPOINT_NAME = re.compile(r"\.(pt|pth|tar|ckpt|bin)(-\d+)?$", re.IGNORECASE)


def learned_context(ctx_init) -> torch.Tensor | None:
    """The context (n_ctx, W) that ``ctx_init`` gives as numbers: an array or tensor, or a
    CoOp checkpoint named by a path (a path object, or a string naming a file or looking like
    one); None for context words or None."""
    if isinstance(ctx_init, (np.ndarray, torch.Tensor)):
        ctx = torch.as_tensor(ctx_init).detach().float().cpu()
        what = "ctx_init"
    elif isinstance(ctx_init, os.PathLike) or isinstance(ctx_init, str) and (
            os.path.isfile(ctx_init) or "/" in ctx_init or os.sep in ctx_init
            or _CHECKPOINT_NAME.search(ctx_init)):
        ctx, what = load_coop_context(ctx_init), f"the context in '{ctx_init}'"
    else:
        return None
    if ctx.ndim == 3:
        raise InputError(f"{what} holds one context per class {tuple(ctx.shape)} (CoOp's "
                         f"class-specific contexts); TPT tunes one context shared by all "
                         f"classes, (n_ctx, width).")
    if ctx.ndim != 2 or not len(ctx) or not torch.isfinite(ctx).all():
        raise InputError(f"{what} must be a finite (n_ctx, width) array, got shape "
                         f"{tuple(ctx.shape)}.")
    return ctx


def load_coop_context(path: str | os.PathLike) -> torch.Tensor:
    """The learned context of a CoOp checkpoint (a ``torch.save`` file): its
    ``state_dict["ctx"]``, where CoOp's prompt-learner checkpoints keep it and TPT's ``--load``
    reads it; also a state dict with "ctx" or "prompt_learner.ctx", or the tensor itself.
    No pickled code is run (``weights_only``)."""
    if not os.path.isfile(path):
        raise InputError(f"CoOp checkpoint '{path}' does not exist.")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not its own
        cause = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
        raise InputError(f"cannot read CoOp checkpoint '{path}': {cause}.") from None
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        saved = saved["state_dict"]
    if isinstance(saved, dict):
        key = next((k for k in ("ctx", "prompt_learner.ctx") if k in saved), None)
        if key is None:
            raise InputError(f"CoOp checkpoint '{path}' has no learned context: no key 'ctx' "
                             f"or 'prompt_learner.ctx' in its state dict.")
        saved = saved[key]
    if not isinstance(saved, torch.Tensor):
        raise InputError(f"CoOp checkpoint '{path}' holds a {type(saved).__name__}, not a "
                         f"context tensor.")
    return saved.detach().float()


# ---------------------------------------------------------------------- the prompt learner


def _prompt_tower(backbone: Backbone) -> TextTower:
    """The backbone's text tower for the prompt learner, or InputError naming the model."""
    tower = prompt_tower(backbone)
    if tower is None:
        model = backbone.model
        raise InputError(
            f"TPT needs open_clip's standard CLIP text transformer (causal mask, end-of-text "
            f"pooling, CLIP tokenizer); model '{backbone.model_name}' has a "
            f"{type(getattr(model, 'text', model)).__name__} text tower, which is not supported.")
    return tower


_MIN_POSITIONS = 512  # (prompts x tokens) per text-tower pass before a piece may end


class PromptLearner:
    """Class prompts ``[SOS] ctx_1..ctx_n [name tokens] [suffix] [EOS]`` with a learnable ctx.

    Only the tokens up to the longest prompt's end-of-text token are kept: under the causal
    mask no position attends to a later one, so the features equal the full 77-token ones.
    """

    def __init__(self, backbone: Backbone, classnames: Sequence[str],
                 ctx_init: ContextInit | None, n_ctx: int, random_state: int,
                 ctx_count: str = "tokens"):
        self.backbone = backbone
        self.tower = _prompt_tower(backbone)
        self.device = backbone.device
        tokenizer = backbone.tokenizer
        learned = learned_context(ctx_init)
        if learned is not None:
            n_ctx = learned.shape[0]
        if ctx_init is None or learned is not None:
            if not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1:
                raise InputError(f"n_ctx must be an integer >= 1, got {n_ctx!r}.")
            template = " ".join(["X"] * n_ctx) + " {}."
        else:
            template = display_name(str(ctx_init)).strip()
            template = template if "{}" in template else template + " {}."
            if template.count("{}") != 1 or not template.split("{}")[0].strip():
                raise InputError(f"ctx_init '{ctx_init}' must be context words, or one template "
                                 f"with words before a single '{{}}'.")
        context = template.split("{}")[0].strip()
        context_tokens = tokenizer([context])[0]
        self.n_ctx = int(context_tokens.argmax()) - 1
        if ctx_count == "words" and ctx_init is not None and learned is None:
            n_words = len(context.split(" "))  # the reference's count
            if n_words > self.n_ctx:
                raise InputError(f"ctx_init '{ctx_init}' has {n_words} words but "
                                 f"{self.n_ctx} tokens; ctx_count='words' needs at least one "
                                 f"token per word.")
            self.n_ctx = n_words
        tokens = tokenizer([template.replace("{}", name) for name in classnames])
        eot = tokens.argmax(dim=-1)
        n_positions = tokens.shape[1]
        if (eot >= n_positions - 1).any() or (tokens[:, 1:1 + self.n_ctx]
                                              != context_tokens[1:1 + self.n_ctx]).any():
            bad = int(((eot >= n_positions - 1)
                       | (tokens[:, 1:1 + self.n_ctx] != context_tokens[1:1 + self.n_ctx]).any(1))
                      .int().argmax())
            raise InputError(f"the prompt for class '{classnames[bad]}' is too long for the "
                             f"{n_positions}-token text context or does not start with the "
                             f"context '{context}'.")
        length = int(eot.max()) + 1
        tokens = tokens[:, :length].to(self.device)
        with torch.no_grad():
            embedded = self.tower.token_embedding(tokens).float()  # (C, L, W)
        self.prefix = embedded[:, :1]                    # [SOS]
        self.suffix = embedded[:, 1 + self.n_ctx:]       # name, suffix, [EOS], padding
        self.eot = eot.to(self.device)
        self.n_classes = len(classnames)
        if learned is not None:
            if learned.shape[1] != embedded.shape[-1]:
                raise InputError(f"the learned context has width {learned.shape[1]}, but the "
                                 f"text tower of '{backbone.model_name}' takes token "
                                 f"embeddings of width {embedded.shape[-1]}.")
            self.ctx_init = learned.to(self.device)
        elif ctx_init is None:  # the reference's random init
            generator = torch.Generator().manual_seed(int(random_state))
            ctx = torch.randn(self.n_ctx, embedded.shape[-1], generator=generator) * 0.02
            self.ctx_init = ctx.to(self.device)
        else:
            self.ctx_init = embedded[0, 1:1 + self.n_ctx].clone()  # (n, W)
        self.lengths = self.eot + 1  # (C,) positions each prompt needs
        self.logit_scale = float(backbone.model.logit_scale.exp())

    def encode(self, ctx: torch.Tensor, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Contexts (B, n, W) and R (image, class) index pairs -> unit text features (R, D).

        The pairs go through the tower sorted by prompt length, in pieces that each run only up
        to their own longest prompt; a piece ends where the length grows once it holds
        ``_MIN_POSITIONS`` positions (smaller matrix products waste a CPU's time). For
        ImageNet's class names this saves a quarter to a third of the positions.
        """
        lengths = self.lengths[classes]
        order = torch.argsort(lengths, stable=True)
        values, counts = torch.unique_consecutive(lengths[order], return_counts=True)
        sizes, rows, positions = [], 0, 0
        for length, count in zip(values.tolist(), counts.tolist()):
            if positions >= _MIN_POSITIONS:  # big enough: end the piece before a longer length
                sizes.append(rows)
                rows = 0
            rows += count
            positions = rows * length
        sizes.append(rows)
        parts = [self._encode_piece(ctx, images[piece], classes[piece]) for piece in order.split(sizes)]
        return torch.cat(parts)[torch.argsort(order)]

    def _encode_piece(self, ctx: torch.Tensor, images: torch.Tensor, classes: torch.Tensor
                      ) -> torch.Tensor:
        length = int(self.lengths[classes].max())
        x = torch.cat([self.prefix[classes], ctx[images], self.suffix[classes]], dim=1)[:, :length]
        with self.backbone.autocast():
            x = encode_embedded(self.tower, x, self.eot[classes])
        return F.normalize(x.float(), dim=-1)

    def text_features(self, ctx: torch.Tensor, chunk: int) -> torch.Tensor:
        """Contexts (B, n, W) -> class weights (B, C, D), ``chunk`` prompts per pass."""
        rows = torch.arange(len(ctx) * self.n_classes, device=ctx.device)
        parts = [self.encode(ctx, r // self.n_classes, r % self.n_classes) for r in rows.split(chunk)]
        return torch.cat(parts).reshape(len(ctx), self.n_classes, -1)


class AugmentedViews(ViewMaker):
    """TPT's views of an image: the preprocessed original, then its random views, then
    DiffTPT's generated images (not stored).

    Each random view is RandomResizedCrop(S) (torchvision defaults: scale (0.08, 1), bilinear) +
    horizontal flip of the raw image (+ AugMix: torchvision's at severity 1, or the reference's
    ``encoders.augmix.AugMix``), normalised like the original. The randomness is seeded by the
    image content and ``random_state``, so the views do not depend on the order of the images.
    The generated images come from ``diffusion_views`` (see TPTClassifier), resized and
    centre-cropped by the preprocessing; a callable is called from the decoding threads (or
    worker processes).
    """

    def __init__(self, backbone: Backbone, n_views: int, augmix: bool | str, random_state: int,
                 diffusion_views: DiffusionViews | None = None, items: Sequence[ImageInput] = (),
                 diffusion_count: int | None = None):
        from torchvision import transforms  # deferred: a heavy import the command line rarely needs

        self.preprocess = backbone.preprocess
        self.n_views = n_views
        self.random_state = int(random_state)
        self.diffusion_views, self.items = diffusion_views, items  # items: a folder's stems
        self.diffusion_count = diffusion_count
        steps = [transforms.RandomResizedCrop(backbone.image_size), transforms.RandomHorizontalFlip()]
        mode = augmix_mode(augmix)
        finish = transforms.Compose([transforms.ToTensor(), backbone.normalize])
        self.augmix = AugMix(finish) if mode == "reference" else None
        if mode == "torchvision":
            steps.append(transforms.AugMix(severity=1, all_ops=False))
        self.augment = transforms.Compose(steps if self.augmix else [*steps, finish])

    def seed(self, image: Image.Image) -> int:
        digest = hashlib.blake2b(f"{pil_key(image)}/{self.random_state}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "little")

    def render(self, image: Image.Image, generated: Sequence[Image.Image] = ()) -> torch.Tensor:
        """Upright RGB image (and its generated images) -> (1 + n_views + G, 3, S, S)."""
        views, seed = [self.preprocess(image)], self.seed(image)
        with seeded_torch_rng(seed):
            views.extend(self.augment(image) for _ in range(self.n_views))
        if self.augmix is not None:  # the crops above, mixed with draws of their own
            rng = np.random.default_rng(seed)
            views[1:] = [self.augmix(crop, rng) for crop in views[1:]]
        views.extend(self.preprocess(g) for g in generated)
        return torch.stack(views)

    def companions(self, image: Image.Image, position: int) -> list[ImageInput]:
        if self.diffusion_views is None:
            return []
        return generated_images(self.diffusion_views, self.items[position], image,
                                self.diffusion_count)

    def __call__(self, picture: Picture, known: Container[str]) -> list[View]:
        pixels = self.render(picture.image, picture.companions)
        return [View(f"{picture.position}/{v}", p) for v, p in enumerate(pixels)]


def generated_images(diffusion_views: DiffusionViews, item: ImageInput,
                     image: Image.Image, count: int | None = None) -> list[ImageInput]:
    """DiffTPT's generated images of one test image: ``diffusion_views(image)`` for a
    callable, else the files ``{stem}_{i}.{ext}`` of the folder, or of its sub-folder named
    like the image's own folder when there is one (DiffTPT's ``root/{class}/``), in the order
    of i; at most ``count`` of them (None: all)."""
    if callable(diffusion_views):
        generated = list(diffusion_views(image))
        if not all(isinstance(g, Image.Image) for g in generated):
            raise InputError("diffusion_views callable must return a list of PIL images.")
        return generated[:count]
    if isinstance(item, Image.Image):
        raise InputError("diffusion_views as a folder needs image files, not PIL images; "
                         "pass a callable instead.")
    folder, stem = Path(diffusion_views), Path(item).stem
    by_class = folder / Path(item).parent.name
    if Path(item).parent.name and by_class.is_dir():
        folder = by_class
    pattern = re.compile(rf"{re.escape(stem)}_(\d+)\.\w+$")
    found = []
    for path in folder.glob(f"{glob_escape(stem)}_*"):
        match = pattern.fullmatch(path.name)
        if match and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append((int(match.group(1)), path))
    if not found:
        log.warning("no generated views %s_<i>.* in %s for %s", stem, folder, item)
    elif count is not None and len(found) < count:
        log.warning("%d generated views %s_<i>.* in %s for %s, fewer than %d", len(found),
                    stem, folder, item, count)
    return [path for _, path in sorted(found)][:count]


def tpt_preset(backbone: Backbone | None = None, classnames=None, *, templates=None,
               diffusion_views: DiffusionViews | None = None, **params) -> TPTClassifier:
    """An unfitted TPTClassifier with the papers' settings.

    TPT: 63 views, 1 step, the 10% most confident views kept; with ``diffusion_views``,
    DiffTPT: 64 views, 4 steps, 30%, the first 63 generated views of each image. The context
    starts from "a photo of a", or from the one template of ``templates`` (a set name, a file
    or a list holding exactly one template).
    ``params``: any other TPTClassifier parameter, or one of these settings overridden.
    """
    diffusion = diffusion_views is not None
    settings = {"n_views": 64 if diffusion else 63, "steps": 4 if diffusion else 1,
                "selection_p": 0.3 if diffusion else 0.1, "ctx_init": "a photo of a",
                "diffusion_count": DIFFTPT_GENERATED if diffusion else None}
    if templates is not None:
        loaded = load_templates(templates)
        if len(loaded) != 1:
            raise InputError(f"TPT tunes one prompt, but the templates '{templates}' hold "
                             f"{len(loaded)}; give one template (e.g. photo).")
        settings["ctx_init"] = loaded[0]
    return TPTClassifier(backbone, classnames=classnames, diffusion_views=diffusion_views,
                         **{**settings, **params})
