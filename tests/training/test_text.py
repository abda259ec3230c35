from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from soundguide.core.errors import ConfigError, DatasetError
from soundguide.evaluation.prompts import check_templates
from soundguide.training.text import TextTargets, text_problem, token_count

TEMPLATES = ["the sound of {label}", "a recording of {label}"]


def test_targets_are_computed_once_and_looked_up(text_encoder, monkeypatch):
    calls = []
    real = text_encoder.encode_text
    monkeypatch.setattr(text_encoder, "encode_text", lambda p: calls.append(list(p)) or real(p))
    targets = TextTargets(text_encoder, ["dog_bark", "rain"], ["waves on rocks"], TEMPLATES)
    assert calls == [
        [
            "the sound of dog bark",
            "the sound of rain",
            "a recording of dog bark",
            "a recording of rain",
        ],
        ["waves on rocks"],
    ]
    assert targets.label_embeddings.shape == (2, 2, 32) and targets.caption_embeddings.shape == (
        1,
        32,
    )
    expected = F.normalize(real(["a recording of rain"]), dim=-1)[0]
    assert torch.allclose(targets.label_embeddings[1, 1], expected, atol=1e-6)
    mean = F.normalize(targets.label_embeddings.mean(dim=0), dim=-1)
    assert torch.allclose(targets.class_embeddings, mean)
    got = targets.lookup(
        torch.tensor([1, -1, 0]), torch.tensor([-1, 0, -1]), torch.tensor([1, 0, 0])
    )
    assert torch.equal(got[0], targets.label_embeddings[1, 1])
    assert torch.equal(got[1], targets.caption_embeddings[0])  # a caption wins over templates
    assert torch.equal(got[2], targets.label_embeddings[0, 0])
    assert len(calls) == 2  # lookups encode nothing


def test_caption_only_stores_have_no_classes(text_encoder):
    targets = TextTargets(text_encoder, [], ["a", "b"], TEMPLATES)
    assert targets.class_embeddings.shape == (0, 32) and targets.label_embeddings.shape == (
        2,
        0,
        32,
    )


def test_token_limits():
    assert token_count("the sound of rain") == 6
    assert text_problem("the sound of rain") is None
    assert text_problem("  ") == "empty label and caption"
    assert "is 82 tokens long; CLIP takes at most 77" in text_problem(" ".join(["rain"] * 80))


def test_too_long_caption_at_training_time(text_encoder):
    with pytest.raises(DatasetError, match="caption 'rain rain"):
        TextTargets(text_encoder, [], [" ".join(["rain"] * 80)], TEMPLATES)


@pytest.mark.parametrize(
    "templates", [[], ["no placeholder"], ["{label} and {label}"], ["{label} {0}"]]
)
def test_bad_templates(templates):
    with pytest.raises(ConfigError):
        check_templates(templates)


def test_training_counts_tokens_as_the_encoder_tokenizes(text_encoder):
    fits = " ".join(["rain"] * 75)  # 75 words + start and end tokens
    too_long = fits + " rain"
    assert token_count(fits) == 77 and text_problem(fits) is None
    assert text_encoder.tokenize(fits).shape == (1, 77)
    assert text_problem(too_long) is not None
    with pytest.raises(ConfigError, match="is 78 tokens long"):
        text_encoder.tokenize(too_long)
