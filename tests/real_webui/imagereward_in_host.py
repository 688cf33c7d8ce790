"""Run with a WebUI's python (PYTHONPATH = the installed extension): ImageReward imports and scores there.

Builds the package's ``ImageReward`` model with random weights offline (``lib_mbw.scorers.offline``, as the
scorer tests do), scores two images with auto-MBW's batched scorer and with the package's own ``score()``,
and prints one JSON line: the scores and the versions of the packages the import pulled in.
"""

from __future__ import annotations

import json
import sys
import tempfile
from importlib.metadata import version


def main() -> int:
    import ImageReward  # noqa: F401  the import a WebUI user's search needs
    import numpy as np
    from PIL import Image

    from lib_mbw.generators.base import GeneratedImage
    from lib_mbw.payloads import Payload
    from lib_mbw.scorers.imagereward import ImageRewardScorer
    from lib_mbw.scorers.offline import build_imagereward

    rng = np.random.default_rng(0)
    payload = Payload(name="fox", prompt="a red fox in the snow", width=64, height=64, batch_size=2)
    images = [
        GeneratedImage(image=Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB"), payload=payload,
                       prompt=payload.prompt, negative_prompt="", seed=i, index=i)
        for i in range(2)
    ]
    with tempfile.TemporaryDirectory() as folder:
        model = build_imagereward(folder, "tiny", seed=0)
        scores = list(ImageRewardScorer(model=model).score(images))
        package = [float(model.score(payload.prompt, item.image)) for item in images]
    names = ("image-reward", "transformers", "diffusers", "datasets", "pyarrow", "numpy", "timm", "tqdm", "huggingface-hub")
    print(json.dumps({"scores": scores, "package_scores": package, "versions": {n: version(n) for n in names}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
