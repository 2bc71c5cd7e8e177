"""openSMILE eGeMAPS (v02) functionals: 88 hand-crafted parameters per utterance (L = 1).

Optional extra (`pip install 'emodebias[opensmile]'`). LICENCE: openSMILE is free for private,
research and educational use only (audEERING's research licence); commercial use needs a licence
from audEERING. emodebias never requires it; the default `acoustic` encoder covers similar ground.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emodebias.features.encoders.base import Encoder, EncoderError, check_waves

FEATURE_SETS = ("eGeMAPSv02", "GeMAPSv01b", "ComParE_2016")


class OpenSmileEncoder(Encoder):
    """openSMILE functionals of a feature set (default eGeMAPSv02, 88-d)."""

    multithreaded = False  # openSMILE processes one signal on one thread

    def __init__(self, feature_set: str = "eGeMAPSv02") -> None:
        try:
            import opensmile
        except ImportError as exc:
            raise EncoderError(
                "the 'egemaps' encoder needs the optional extra: "
                "pip install 'emodebias[opensmile]' "
                "(openSMILE is licensed for research/education only)"
            ) from exc
        if feature_set not in FEATURE_SETS:
            raise EncoderError(f"feature_set must be one of {FEATURE_SETS}, got {feature_set!r}")
        self.feature_set = feature_set
        self.id = "egemaps" if feature_set == "eGeMAPSv02" else f"opensmile-{feature_set}"
        self._version = opensmile.__version__
        self.smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                                     feature_level=opensmile.FeatureLevel.Functionals)

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": "opensmile", "feature_set": self.feature_set, "version": self._version}

    @property
    def info(self) -> dict[str, Any]:
        return {"layer_names": [self.feature_set], "feature_names": list(self.smile.feature_names),
                "licence": "openSMILE research/education-only licence (audEERING)"}

    @property
    def n_layers(self) -> int:
        return 1

    @property
    def dim(self) -> int:
        return len(self.smile.feature_names)

    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        waves = check_waves(waves, min_samples=1)
        rows = [self.smile.process_signal(w, self.sample_rate).to_numpy()[0] for w in waves]
        return np.stack(rows)[:, None, :].astype(np.float32)
