"""The text tower: full, truncated and prompt-learner forwards of a CLIP text transformer.

The standard CLIP text tower (causal mask, pooling at the end-of-text token) is run from
embedded tokens (B, L, W) by one function, ``encode_embedded``: under the causal mask no
position attends to a later one, so a batch runs only up to its longest text and the features
equal the full 77-token ones. ``encode_texts`` (class prompts, captions) and TPT's prompt
learner (learnable context vectors in place of some token embeddings) both go through it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.store import open_store
from ..errors import InputError
from .models import is_clip_tokenizer

if TYPE_CHECKING:
    from .backbone import Backbone


@dataclass
class TextTower:
    """The parts of a standard CLIP text transformer."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    ln_final: torch.nn.Module
    text_projection: torch.Tensor | torch.nn.Module | None
    attn_mask: torch.Tensor


def text_tower(model: torch.nn.Module) -> TextTower | None:
    """The standard CLIP text tower of an open_clip model (CLIP or CustomTextCLIP), or None
    when its text tower is another kind (no causal mask, other pooling, a class token)."""
    tower, pool = model, getattr(model, "text_pool_type", None)
    if hasattr(model, "text") and not hasattr(model, "token_embedding"):
        tower, pool = model.text, getattr(model.text, "pool_type", None)
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if (any(getattr(tower, p, None) is None for p in parts) or pool != "argmax"
            or getattr(tower, "cls_emb", None) is not None):
        return None
    return TextTower(tower.token_embedding, tower.positional_embedding, tower.transformer,
                     tower.ln_final, getattr(tower, "text_projection", None), tower.attn_mask)


def prompt_tower(backbone: Backbone) -> TextTower | None:
    """The text tower a prompt learner can run from token embeddings: the standard CLIP
    tower with open_clip's CLIP tokenizer (its end-of-text token has the largest id)."""
    tower = text_tower(backbone.model)
    return tower if is_clip_tokenizer(backbone.tokenizer) else None


def token_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """(B,) number of tokens up to and including the end-of-text token (the largest id)."""
    return tokens.argmax(dim=-1) + 1


def encode_embedded(tower: TextTower, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Text features (B, D) of embedded tokens x (B, L, W) whose end-of-text tokens sit at
    ``eot`` (B,) < L: positional embedding, transformer under the causal mask cut to L,
    final layer norm, the end-of-text position, projection."""
    length = x.shape[1]
    cast = tower.transformer.get_cast_dtype()
    x = x.to(cast) + tower.positional_embedding[:length].to(cast)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Module) else x @ projection


def encode_text_truncated(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip text features (B, D) of tokens (B, L), run only up to the longest text.

    Dropping the padding after the batch's last end-of-text token leaves the features of the
    standard CLIP text tower unchanged; the cost falls from L=77 positions to the prompt
    length. Other text towers go through ``model.encode_text`` unchanged.
    """
    tower = text_tower(model)
    if tower is None:
        return model.encode_text(tokens)
    tokens = tokens[:, :int(token_lengths(tokens).max())]
    return encode_embedded(tower, tower.token_embedding(tokens), tokens.argmax(dim=-1))


def encode_texts(backbone: Backbone, texts: Sequence[str], *,
                 cache: str | os.PathLike | None = None, progress: bool | None = None
                 ) -> np.ndarray:
    """Texts -> L2-normalised float32 embeddings (N, D). Repeated texts are encoded once.

    Texts are batched by token length, ``backbone.batch_size`` at a time, and each batch runs
    the text tower only up to its longest text. With ``cache`` the embeddings are kept in the
    embedding store under the texts' hashes.
    """
    texts = [str(t) for t in texts]
    if not texts:
        raise InputError("no texts to encode.")
    unique = list(dict.fromkeys(texts))
    keys = [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in unique]
    store = open_store(cache, backbone.fingerprint, "texts") if cache is not None else None
    missing = [i for i, k in enumerate(keys) if store is None or k not in store]
    if missing and store is not None and store.dim is not None \
            and store.expect(backbone.embed_dim):
        missing = [i for i, k in enumerate(keys) if k not in store]
    encoded: dict[int, np.ndarray] = {}
    if missing:
        tokens = backbone.tokenizer([unique[i] for i in missing])
        by_length = np.argsort(token_lengths(tokens).numpy(), kind="stable")
        size = backbone.batch_size
        show = backbone.progress if progress is None else progress
        with tqdm(total=len(missing), desc="encoding texts", unit="text",
                  disable=not show or len(missing) <= size, leave=False) as bar:
            for start in range(0, len(missing), size):
                rows = by_length[start:start + size]
                chunk = [missing[r] for r in rows]
                vectors = _encode_tokens(backbone, tokens[torch.from_numpy(rows)])
                if store is not None:
                    store.put([keys[i] for i in chunk], vectors)
                encoded.update(zip(chunk, vectors))
                bar.update(len(chunk))
    hits = [i for i in range(len(unique)) if i not in encoded]
    if hits:
        encoded.update(zip(hits, store.get([keys[i] for i in hits])))
    by_text = {text: encoded[i] for i, text in enumerate(unique)}
    return np.stack([by_text[t] for t in texts]).astype(np.float32, copy=False)


@torch.inference_mode()
def _encode_tokens(backbone: Backbone, tokens: torch.Tensor) -> np.ndarray:
    with backbone.autocast():
        features = encode_text_truncated(backbone.model, tokens.to(backbone.device))
    return F.normalize(features.float(), dim=-1).cpu().numpy()
