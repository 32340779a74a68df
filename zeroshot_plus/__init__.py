"""zeroshot_plus: adapt frozen CLIP models to your task without training them."""

from .encoders.backbone import Backbone
from .encoders.pipeline import EncodeReport
from .encoders.embedder import ImageEmbedder
from .errors import InputError, ModelLoadError
from .data.images import ImageSet, read_image_source
from .methods.comclip import ComCLIPMatcher
from .methods.descriptions import DescriptionClassifier
from .methods.gda import GDAClassifier
from .methods.real import RealLinearClassifier, RealPromptClassifier
from .methods.schur import SCEResult, SchurEditor, sce_score
from .methods.tpt import TPTClassifier
from .methods.zeroshot import ZeroShotClassifier
from .methods.base import Predictor
from .data.support import AugmentedSupport, augmented_support, sample_shots

__all__ = [
    "Backbone", "EncodeReport", "GDAClassifier", "ImageEmbedder", "ImageSet", "InputError",
    "ModelLoadError", "Predictor", "ZeroShotClassifier", "AugmentedSupport", "augmented_support",
    "read_image_source", "sample_shots", "TPTClassifier", "DescriptionClassifier",
    "RealPromptClassifier", "RealLinearClassifier", "SCEResult", "SchurEditor", "sce_score",
    "ComCLIPMatcher",
]
__version__ = "0.1.0"
