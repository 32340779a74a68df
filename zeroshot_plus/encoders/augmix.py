"""TPT's AugMix: the reference's nine operations at its strength, mixed as normalised tensors.

TPT's code (``data/augmix_ops.py`` and ``augmix`` in ``data/datautils.py``) augments a random
view x (RandomResizedCrop + flip of the raw image, S x S pixels) as

    view = m · pre(x) + (1 − m) · Σ_{i=1..3} w_i · pre(chain_i(x)),
    w ~ Dirichlet(1, 1, 1),  m ~ Beta(1, 1),

where ``pre`` is ToTensor + Normalize (float32 tensors) and each chain applies 1 to 3 operations
(depth uniform in {1, 2, 3}), each drawn uniformly from the nine below, at a level
l ~ U(0.1, severity) on the reference's 0-10 scale (TPT: severity 1, so l in [0.1, 1)):

    operation        its parameter at level l
    autocontrast     -
    equalize         -
    posterize        keep 4 − ⌊0.4·l⌋ bits
    rotate           ±⌊3·l⌋ degrees, bilinear
    solarize         invert pixels >= 256 − ⌊25.6·l⌋
    shear_x/_y       ±0.03·l, affine, bilinear
    translate_x/_y   ±⌊l·(S/3)/10⌋ pixels, affine, bilinear

The sign of a geometric operation is drawn with probability 1/2 each. The reference fixes S at
224; here S is the crop's own size. torchvision's ``AugMix(severity=1)`` differs: it takes the
first magnitude bin, which is zero for the geometric operations (an identity), and mixes
8-bit images.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

OPERATIONS = ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x",
              "shear_y", "translate_x", "translate_y")
_LEVELLED = frozenset(OPERATIONS[2:])                          # draw a level
_SIGNED = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
MIN_LEVEL = 0.1


class Operation(NamedTuple):
    """One drawn operation of a chain: its name, level (None: it has none) and sign."""

    name: str
    level: float | None
    negative: bool


def operation_parameter(name: str, level: float, size: int) -> float:
    """The reference's parameter of operation ``name`` at ``level`` on an image of side
    ``size``: bits kept, degrees, solarize threshold, shear factor or pixels (see the table)."""
    if name == "posterize":
        return 4 - int(level * 4 / 10)
    if name == "rotate":
        return int(level * 30 / 10)
    if name == "solarize":
        return 256 - int(level * 256 / 10)
    if name in ("shear_x", "shear_y"):
        return float(level) * 0.3 / 10
    if name in ("translate_x", "translate_y"):
        return int(level * (size / 3) / 10)
    raise ValueError(f"operation {name!r} has no parameter")


def apply_operation(image: Image.Image, operation: Operation) -> Image.Image:
    """Apply one drawn operation to an RGB image (the output has the same size)."""
    name = operation.name
    if name == "autocontrast":
        return ImageOps.autocontrast(image)
    if name == "equalize":
        return ImageOps.equalize(image)
    size = image.size[0]
    value = operation_parameter(name, operation.level, size)
    if name == "posterize":
        return ImageOps.posterize(image, value)
    if name == "solarize":
        return ImageOps.solarize(image, value)
    value = -value if operation.negative else value
    if name == "rotate":
        return image.rotate(value, resample=Image.Resampling.BILINEAR)
    coefficients = {"shear_x": (1, value, 0, 0, 1, 0), "shear_y": (1, 0, 0, value, 1, 0),
                    "translate_x": (1, 0, value, 0, 1, 0),
                    "translate_y": (1, 0, 0, 0, 1, value)}[name]
    return image.transform(image.size, Image.Transform.AFFINE, coefficients,
                           resample=Image.Resampling.BILINEAR)


def sample_chain(rng: np.random.Generator, severity: float = 1.0,
                 max_depth: int = 3) -> list[Operation]:
    """One chain: 1..max_depth operations, each uniform among OPERATIONS, with a level
    U(MIN_LEVEL, severity) where it has one and a sign where it is geometric (drawn in the
    reference's order: depth, then per operation its choice, level and sign)."""
    chain = []
    for _ in range(int(rng.integers(1, max_depth + 1))):
        name = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
        level = float(rng.uniform(MIN_LEVEL, severity)) if name in _LEVELLED else None
        negative = bool(rng.uniform() > 0.5) if name in _SIGNED else False
        chain.append(Operation(name, level, negative))
    return chain


class AugMix:
    """The reference's AugMix of an already cropped view; ``pre`` is ToTensor + Normalize.

    ``augmix(image, rng)`` -> (3, S, S) float32; ``parts`` gives what it mixes.
    """

    def __init__(self, pre: Callable[[Image.Image], torch.Tensor], severity: float = 1.0,
                 width: int = 3, max_depth: int = 3):
        self.pre, self.severity = pre, severity
        self.width, self.max_depth = width, max_depth

    def parts(self, image: Image.Image, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, float]:
        """(pre(x) (3, S, S), pre(chain_i(x)) (width, 3, S, S), w (width,), m)."""
        w = rng.dirichlet(np.ones(self.width)).astype(np.float32)
        m = np.float32(rng.beta(1.0, 1.0))
        chains = []
        for _ in range(self.width):
            augmented = image
            for operation in sample_chain(rng, self.severity, self.max_depth):
                augmented = apply_operation(augmented, operation)
            chains.append(self.pre(augmented))
        return self.pre(image), torch.stack(chains), w, float(m)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        original, chains, w, m = self.parts(image, rng)
        mix = torch.einsum("k,kchw->chw", torch.from_numpy(w), chains)
        return m * original + (1 - m) * mix
