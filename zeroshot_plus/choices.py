"""The values of the library's string options, in a module that imports nothing.

The modules that use them import them from here, and so does the command line, which offers
them as choices without loading torch, open_clip or scikit-learn.
"""

PRECISIONS = ("fp32", "fp16", "bf16")            # Backbone(precision=...)
COMPONENTS = ("entities", "relations")           # ComCLIPMatcher(components=...)
WEIGHTINGS = ("sum", "softmax")                  # ComCLIPMatcher(weighting=...)
MASK_MODES = ("blackout", "crop")                # ComCLIPMatcher(mask_mode=...)
EMBEDDING_FORMS = ("normalized", "raw")          # ComCLIPMatcher(embeddings=...)
GROUNDINGS = ("grid", "detector", "file")        # ComCLIPMatcher(grounding=...)
AUGMIX_MODES = ("torchvision", "reference")      # TPTClassifier(augmix=...)
CTX_COUNTS = ("tokens", "words")                 # TPTClassifier(ctx_count=...)
KERNELS = ("cosine", "gaussian")                 # sce_score(kernel=...)
ENTROPIES = ("reference", "normalized")          # sce_score(entropy=...)
