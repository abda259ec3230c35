"""A third-party audio guidance plugin whose evaluation embedder is the test oracle.

Usable with ``-p tests.evaluation.oracle_plugin``. Its weights file is a torch
file ``{"table": (K, D)}``: the embedding returned for each tone class. It is
found by path or under the known-weights name ``oracle-table``.
"""

from __future__ import annotations

from typing import Literal

import torch

import soundguide
from soundguide.core.files import sha256_file
from tests.evaluation.conftest import OracleEmbedder

INSTANCES: list[OracleEmbedder] = []
"""Every embedder built, so tests can count what was encoded."""

ORACLE_WEIGHTS = soundguide.KnownWeights(
    name="oracle-table",
    url=None,
    filename="oracle_table.pt",
    license="test",
    description="put the oracle's table here",
)


class OracleGuidance(soundguide.Guidance):
    class Config(soundguide.GuidanceConfig):
        type: Literal["oracle-audio"] = "oracle-audio"

    @property
    def space(self) -> str:
        return "oracle"

    def build_encoder(self):
        raise NotImplementedError("evaluation-only test plugin")

    def target(self, encoder):
        raise NotImplementedError("evaluation-only test plugin")

    @classmethod
    def audio_embedder(cls, encoder: str, context: soundguide.RunContext, crop: str):
        path = context.resolve_weights(encoder)
        table = torch.load(path, weights_only=True)["table"]
        embedder = OracleEmbedder(table, tag=f"{sha256_file(path)}:{crop}")
        INSTANCES.append(embedder)
        return embedder


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(OracleGuidance)


@soundguide.hookimpl
def register_weights(registry):
    registry.add(ORACLE_WEIGHTS)
