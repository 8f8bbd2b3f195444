"""Pins the public face of ``modeopt_fastnas`` (ModelOpt's FastNAS names included)."""

from __future__ import annotations

import modeopt_fastnas
from tests._public import assert_face

FASTNAS = {
    "AccuracyScore", "BatchScore", "BN_CALIBRATION_MODES", "DEFAULT_RATIOS", "BinarySearcher", "LossScore", "FastNASChannelRule", "FastNASConfig",
    "FastNASFeatureRule", "FastNASMode", "FastNASModeDescriptor", "FastNASPatchManager", "OutputAgreement",
    "LanguageModelScore", "convert_fastnas_searchspace", "prune", "random_inputs", "random_tokens",
    "restore_fastnas_searchspace",
}


def test_fastnas_face_is_pinned() -> None:
    assert_face(modeopt_fastnas, FASTNAS)
