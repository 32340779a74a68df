"""The values of the library's string options, in a module that imports nothing.

The modules that use them import them from here, and so does the command line, which offers
them as choices without loading torch, open_clip or scikit-learn.
"""

PRECISIONS = ("fp32", "fp16", "bf16")            # Backbone(precision=...)
RUNTIMES = ("torch", "openvino", "onnxruntime", "onnxruntime-int8")  # Backbone(runtime=...)
INEXACT_RUNTIMES = ("onnxruntime-int8",)        # runtimes whose embeddings are stored apart
COMPONENTS = ("entities", "relations")           # ComCLIPMatcher(components=...)
WEIGHTINGS = ("sum", "softmax")                  # ComCLIPMatcher(weighting=...)
MASK_MODES = ("blackout", "crop")                # ComCLIPMatcher(mask_mode=...)
EMBEDDING_FORMS = ("normalized", "raw")          # ComCLIPMatcher(embeddings=...)
GROUNDINGS = ("grid", "detector", "file")        # ComCLIPMatcher(grounding=...)
AUGMIX_MODES = ("torchvision", "reference")      # TPTClassifier(augmix=...)
CTX_COUNTS = ("tokens", "words")                 # TPTClassifier(ctx_count=...)
KERNELS = ("cosine", "gaussian")                 # sce_score(kernel=...)
ENTROPIES = ("reference", "normalized")          # sce_score(entropy=...)


def saved_runtime(backbone: dict) -> str:
    """The runtime to rebuild a saved backbone (``Backbone.describe()``) with: its own when its
    embeddings are not torch's (its fingerprint names it), else torch, which every machine has."""
    runtime = backbone.get("runtime", "torch")
    return runtime if runtime in INEXACT_RUNTIMES else "torch"
