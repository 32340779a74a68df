"""zeroshot_plus: adapt frozen CLIP models to your task without training them.

Names are imported on first use (PEP 562), so that importing the package, or a light module
of it such as the command-line parser, does not load torch, open_clip or scikit-learn.
"""

from __future__ import annotations

from importlib import import_module

_MODULES = {
    "Backbone": "encoders.backbone", "EncodeReport": "encoders.pipeline",
    "ImageEmbedder": "encoders.embedder",
    "InputError": "errors", "ModelLoadError": "errors",
    "ImageSet": "data.sources", "read_image_source": "data.sources",
    "AugmentedSupport": "data.support", "augmented_support": "data.support",
    "sample_shots": "data.support",
    "Embeddings": "data.embeddings", "load_embeddings": "data.embeddings",
    "save_embeddings": "data.embeddings",
    "Predictor": "methods.base",
    "ZeroShotClassifier": "methods.zeroshot",
    "GDAClassifier": "methods.gda", "fit_gda_from_support": "methods.gda",
    "DescriptionClassifier": "methods.descriptions",
    "RealPromptClassifier": "methods.real", "RealLinearClassifier": "methods.real",
    "TPTClassifier": "methods.tpt", "tpt_preset": "methods.tpt",
    "ComCLIPMatcher": "methods.comclip",
    "SCEResult": "methods.schur", "SchurEditor": "methods.schur", "sce_score": "methods.schur",
    "retrieval_recall": "evaluation.protocols", "rerank_recall": "evaluation.protocols",
}

__all__ = sorted(_MODULES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULES[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
