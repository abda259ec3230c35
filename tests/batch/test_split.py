from __future__ import annotations

from pathlib import Path

import torch

from soundguide.batch.split import item_event, item_result
from soundguide.core.engine import RunResult, StepEvent


def record(step, totals):
    return {
        "step": step,
        "lr": 0.1,
        "total": totals,
        "total_sum": sum(totals),
        "terms": {"audio": [t / 2 for t in totals]},
    }


def test_an_item_of_a_batch_result_looks_like_a_run_alone(tmp_path):
    latents = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)
    images = torch.zeros(3, 3, 8, 8)
    files = [tmp_path / "g.pt", tmp_path / "rain.wav", tmp_path / "fire.wav"]
    result = RunResult(
        status="finished",
        message="finished 1 steps",
        steps_done=1,
        source_latent=latents,
        edited_latent=latents + 1,
        source_image=images,
        edited_image=images + 1,
        history=[record(0, [1.0, 2.0, 3.0]), record(1, [0.5, 1.5, 2.5])],
        seeds=[4, 5, 6],
        files=files,
        final_losses=record(1, [0.5, 1.5, 2.5]),
    )
    # rows 1 and 3 share rain.wav; row 2 has fire.wav
    one = item_result(result, 0, own=[files[1]], others=[files[2], files[1]])
    assert torch.equal(one.edited_latent, latents[:1] + 1) and one.seeds == [4]
    assert one.files == [files[0], files[1]]
    assert one.final_losses["total"] == [0.5] and one.final_losses["total_sum"] == 0.5
    assert one.history[0]["terms"] == {"audio": [0.5]}
    two = item_result(result, 1, own=[files[2]], others=[files[1], files[1]])
    assert two.files == [files[0], files[2]] and two.edited_image.shape == (1, 3, 8, 8)
    assert Path(two.files[1]).name == "fire.wav"


def test_an_item_of_a_step_event():
    event = StepEvent(
        3,
        10,
        torch.randn(2, 2, 4),
        torch.randn(2, 3, 8, 8),
        {"total": torch.tensor([1.0, 2.0])},
        0.1,
    )
    second = item_event(event, 1)
    assert torch.equal(second.latent, event.latent[1:]) and second.losses["total"].tolist() == [2.0]
    assert second.step == 3 and second.lr == 0.1
