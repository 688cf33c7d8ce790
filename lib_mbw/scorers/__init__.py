"""Image scorers: the Scorer protocol, its implementations and the registry that builds them by name.

ImageReward (default), the image-reward package's aesthetic/CLIP/BLIP scores,
reference similarity, human ratings and weighted combinations. Importing this
package loads no model and no torch; models load on the first ``score``.
"""

from .base import ModelScorer, Scorer
from .combined import CombinedScorer
from .human import ConsoleRater, HumanScorer, HumanSettings, RatingRequest
from .imagereward import ImageRewardScorer, ImageRewardSettings
from .package_scores import AestheticScorer, BLIPScorer, CLIPScorer, PackageScoreSettings
from .reference import ReferenceScorer, ReferenceSettings, load_references, references_from_images, save_references
from .registry import available_scorers, make_scorer, register_scorer

__all__ = [
    "AestheticScorer",
    "BLIPScorer",
    "CLIPScorer",
    "CombinedScorer",
    "ConsoleRater",
    "HumanScorer",
    "HumanSettings",
    "ImageRewardScorer",
    "ImageRewardSettings",
    "ModelScorer",
    "PackageScoreSettings",
    "RatingRequest",
    "ReferenceScorer",
    "ReferenceSettings",
    "Scorer",
    "available_scorers",
    "load_references",
    "make_scorer",
    "references_from_images",
    "register_scorer",
    "save_references",
]
