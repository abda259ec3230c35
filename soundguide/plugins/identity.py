"""Regularizer ``identity``: keep the edited face recognisably the same person.

``weight * (1 - cos(ArcFace(edited), ArcFace(reference)))`` per item, with the
ArcFace IR-SE50 network and the face crop of the original code (see
:mod:`soundguide.encoders.arcface`). The reference is the start image
(``reference = "source"``, as StyleCLIP) or, for an edit that starts from a
photo (``optimization.image``), the aligned photo itself (``"photo"``), which
keeps a real person's identity where the inversion drifted. The reference
features are computed once, before the loop; each step embeds the edited
image once.

Faces only: the crop and the network assume aligned FFHQ faces (StyleGAN2
FFHQ). For landscapes, cars, churches and other domains the term measures
nothing useful; leave it out there (the paper's landscape runs use
``--lambda_identity 0``).

Differences from the original code, on purpose:

- a weight of 0 never loads the network (the original builds and runs it even
  at ``lambda_identity 0``);
- the gradient pulls the *edited* image's features towards the source's, as
  StyleCLIP does. The original passes its arguments in the other order, so its
  term compares a detached edited embedding with the source embedding made
  without gradient, and never moves the latent.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

import soundguide
from soundguide import Regularizer, RegularizerConfig, WeightsRef


class FaceIdentity(Regularizer):
    class Config(RegularizerConfig):
        type: Literal["identity"] = "identity"
        weight: float = Field(
            0.005,
            ge=0,
            allow_inf_nan=False,
            description="lambda_identity (0.005 is the original code's default); faces only "
            "(FFHQ): meaningless for landscapes, cars, etc.",
        )
        weights: WeightsRef = Field(
            "arcface-ir-se50",
            description="ArcFace IR-SE50 weights: a known-weights name or a model_ir_se50.pth "
            "file. Faces only (aligned FFHQ crops).",
        )
        reference: Literal["source", "photo"] = Field(
            "source",
            description="Compare the edit with the start image ('source'), or with the aligned "
            "photo of an edit that starts from one (optimization.image): 'photo'.",
        )

    config: Config
    needs_image: ClassVar[bool] = True

    def __init__(self, config: Config, context) -> None:
        super().__init__(config, context)
        from soundguide.encoders.arcface import load_arcface

        self.path = context.resolve_weights(config.weights)
        self.network = load_arcface(self.path, trust=context.trust_checkpoint).to(context.device)
        self.source_features: torch.Tensor | None = None

    def setup(self, w0: torch.Tensor, image0: torch.Tensor | None) -> None:
        from soundguide.encoders.arcface import face_features

        reference = image0
        if self.config.reference == "photo":
            reference = self.context.photo
            if reference is None:
                from soundguide.core.errors import ConfigError

                raise ConfigError(
                    "identity: reference = 'photo' needs a run that starts from a photo",
                    hint="set optimization.image = 'photo.jpg', or reference = 'source'",
                )
        with torch.no_grad():
            self.source_features = face_features(self.network, reference).detach()

    def loss(self, w, w0, image, image0) -> torch.Tensor:
        from soundguide.encoders.arcface import face_features, identity_loss

        if self.source_features is None:
            self.setup(w0, image0)
        return identity_loss(face_features(self.network, image), self.source_features)

    def files(self) -> list[Path]:
        return [self.path]


@soundguide.hookimpl
def register_regularizers(registry):
    registry.add(FaceIdentity)


@soundguide.hookimpl
def register_weights(registry):
    from soundguide.encoders.arcface import ARCFACE_IR_SE50

    registry.add(ARCFACE_IR_SE50)
