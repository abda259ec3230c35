from __future__ import annotations

import importlib.metadata
import json
import math
from typing import Literal

import pytest
import torch

import soundguide
from soundguide.core.config import config_from_dict, load_config
from soundguide.core.engine import Editor
from soundguide.core.errors import ConfigError
from soundguide.core.interfaces import Regularizer, RegularizerConfig
from soundguide.core.losses import cosine_ramp_lr
from tests import toy_plugins
from tests.conftest import TOY_CONFIG
from tests.toy_plugins import CALLS


def make_config(registries, *, guidance=None, regularizer=None, **optimization):
    data = {
        "generator": {"type": "toy"},
        "guidance": guidance
        if guidance is not None
        else [
            {"type": "toy-target", "weight": 1.0},
            {"type": "toy-target", "weight": 0.5, "seed": 3, "space_name": "other"},
        ],
        "regularizer": regularizer
        if regularizer is not None
        else [{"type": "latent_l2", "weight": 0.01}],
        "optimization": {"steps": 10, "seed": 7, **optimization},
    }
    return config_from_dict(data, registries)


def run(registries, **kwargs):
    return Editor(make_config(registries, **kwargs), registries, progress=False).run()


def test_run_moves_towards_the_targets(registries):
    result = run(registries, steps=40, lr=0.05)
    assert result.ok and result.steps_done == 40
    first, last = result.history[0], result.history[-1]
    assert len(result.history) == 41  # one record per latent: 0..40 updates
    assert last["step"] == 40 and last["lr"] is None
    for label in ("toy-target[0]", "toy-target[1]"):
        assert last["terms"][label][0] < first["terms"][label][0]
    assert result.edited_latent.shape == result.source_latent.shape == (1, 4, 8)
    assert result.edited_image.shape == (1, 3, 8, 8)


def test_same_config_and_seed_give_bit_identical_latents(registries):
    a = run(registries, seed=3)
    b = run(registries, seed=3)
    c = run(registries, seed=4)
    assert torch.equal(a.edited_latent, b.edited_latent)
    assert torch.equal(a.source_latent, b.source_latent)
    assert not torch.equal(a.source_latent, c.source_latent)


def test_weight_zero_terms_are_never_built_nor_called(registries):
    guidance = [
        {"type": "toy-target", "weight": 1.0},
        {"type": "toy-target", "weight": 0.0, "space_name": "unused"},
    ]
    regularizer = [{"type": "counting", "weight": 0.0}]
    run(registries, guidance=guidance, regularizer=regularizer, steps=5)
    assert CALLS["guidance.build.toy"] == 1
    assert CALLS["guidance.build.unused"] == 0
    assert CALLS["encoder.build.toy:unused"] == 0
    assert CALLS["counting.build"] == 0 and CALLS["counting.loss"] == 0
    assert CALLS["guidance.target"] == 1  # computed once, before the loop


def test_weight_zero_source_gives_exactly_the_result_without_it(registries):
    alone = run(registries, guidance=[{"type": "toy-target", "weight": 1.0}])
    with_zero = run(
        registries,
        guidance=[
            {"type": "toy-target", "weight": 1.0},
            {"type": "toy-target", "weight": 0.0, "seed": 9},
        ],
    )
    assert torch.equal(alone.edited_latent, with_zero.edited_latent)


def test_a_space_shares_one_encoder_and_is_encoded_once_per_step(registries):
    guidance = [
        {"type": "toy-target", "weight": 1.0, "seed": 1},
        {"type": "toy-target", "weight": 1.0, "seed": 2},
        {"type": "toy-target", "weight": 1.0, "seed": 3, "space_name": "b"},
    ]
    editor = Editor(make_config(registries, guidance=guidance, steps=6), registries, progress=False)
    editor.prepare()
    assert CALLS["encoder.build.toy:toy"] == 1 and CALLS["encoder.build.toy:b"] == 1
    assert CALLS["encoder.after_targets"] == 2  # once per encoder, after all targets
    assert set(editor.encoders) == {"toy:toy", "toy:b"}
    assert all(not p.requires_grad for p in editor.encoders["toy:toy"].parameters())
    CALLS.clear()
    editor.run()
    # 6 steps + the final evaluation, two spaces each
    assert CALLS["encoder.encode_image"] == 2 * 7
    assert CALLS["guidance.loss"] == 3 * 7
    assert CALLS["guidance.target"] == 0


def _grad(registries, guidance, regularizer=()):
    editor = Editor(
        make_config(registries, guidance=guidance, regularizer=list(regularizer)),
        registries,
        progress=False,
    )
    editor.prepare()
    w = editor.w0.clone().requires_grad_(True)
    total = torch.stack(list(editor.losses(w).values())).sum()
    (grad,) = torch.autograd.grad(total, w)
    return grad


def test_mixing_is_linear_in_the_weights(registries):
    a = {"type": "toy-target", "seed": 1}
    b = {"type": "toy-target", "seed": 2, "space_name": "b"}
    only_b = _grad(registries, [{**a, "weight": 0.0}, {**b, "weight": 0.5}])
    one = _grad(registries, [{**a, "weight": 1.0}, {**b, "weight": 0.5}])
    two = _grad(registries, [{**a, "weight": 2.0}, {**b, "weight": 0.5}])
    negative = _grad(registries, [{**a, "weight": -1.0}, {**b, "weight": 0.5}])
    contribution = one - only_b
    assert contribution.abs().max() > 1e-4
    torch.testing.assert_close(two - only_b, 2 * contribution)
    torch.testing.assert_close(negative - only_b, -contribution)


def test_non_finite_loss_stops_and_keeps_the_last_good_latent(registries):
    guidance = [{"type": "toy-target", "weight": 1.0, "nan_after": 4}]
    editor = Editor(
        make_config(registries, guidance=guidance, steps=10), registries, progress=False
    )
    events = []
    editor.subscribe(events.append)
    result = editor.run()
    assert result.status == "nonfinite" and not result.ok
    assert "non-finite after 4 updates" in result.message and "toy-target" in result.message
    assert result.steps_done == 4
    assert [e.step for e in events] == [0, 1, 2, 3]
    assert torch.equal(result.edited_latent, events[3].latent)
    assert torch.isfinite(result.edited_image).all()
    assert math.isnan(result.history[-1]["total_sum"])


def test_ctrl_c_keeps_what_was_done(registries, tmp_path):
    cfg = make_config(registries, steps=10)

    def interrupt(event):
        if event.step == 3 and not event.final:
            raise KeyboardInterrupt

    editor = Editor(cfg, registries, progress=False)
    editor.subscribe(interrupt)
    result = editor.run()
    assert result.status == "interrupted" and result.steps_done == 3
    assert "interrupted after 3 of 10 updates" in result.message


def test_ctrl_c_still_writes_the_outputs(registries, tmp_path, monkeypatch):
    cfg = make_config(registries, steps=10)
    original = toy_plugins.ToyGenerator.synthesize
    calls = {"n": 0}

    def synthesize(self, latent):
        calls["n"] += 1
        if calls["n"] == 5 and latent.requires_grad:  # inside the loop
            raise KeyboardInterrupt
        return original(self, latent)

    monkeypatch.setattr(toy_plugins.ToyGenerator, "synthesize", synthesize)
    result = soundguide.edit(cfg, out=tmp_path / "out", registries=registries, progress=False)
    assert result.status == "interrupted"
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["steps_done"] == result.steps_done
    assert (tmp_path / "out" / "edited.png").exists()


def test_learning_rate_schedule_and_events(registries):
    editor = Editor(make_config(registries, steps=20, lr=0.2), registries, progress=False)
    events = []
    editor.subscribe(events.append)
    result = editor.run()
    lrs = [e.lr for e in events[:-1]]
    assert lrs[0] == 0.0  # the first update has lr 0, as in the original code
    assert lrs == pytest.approx([cosine_ramp_lr(k / 20, 0.2) for k in range(20)])
    assert max(lrs) == pytest.approx(0.2)
    assert events[-1].final and events[-1].step == 20 and events[-1].lr is None
    # a zero-lr first update leaves the latent unchanged
    assert torch.equal(events[1].latent, events[0].latent)
    assert torch.equal(events[0].latent.cpu(), result.source_latent)
    assert set(events[5].losses) == {"toy-target[0]", "toy-target[1]", "latent_l2", "total"}


def test_constant_schedule(registries):
    editor = Editor(
        make_config(registries, steps=5, lr=0.3, schedule="constant"), registries, progress=False
    )
    events = []
    editor.subscribe(events.append)
    editor.run()
    assert [e.lr for e in events[:-1]] == [0.3] * 5


class TestBatches:
    def test_batch_items_equal_their_runs_alone(self, registries):
        batch = run(registries, seed=[3, 5, 8], steps=8)
        assert batch.edited_latent.shape[0] == 3
        for i, seed in enumerate([3, 5, 8]):
            alone = run(registries, seed=seed, steps=8)
            torch.testing.assert_close(
                batch.edited_latent[i : i + 1], alone.edited_latent, rtol=1e-5, atol=1e-6
            )

    def test_integer_seed_with_batch_uses_consecutive_seeds(self, registries):
        batch = run(registries, seed=10, batch=2, steps=2)
        assert batch.seeds == [10, 11]

    def test_per_item_targets(self, registries):
        guidance = [{"type": "toy-target", "weight": 1.0, "items": 3}]
        editor = Editor(
            make_config(registries, guidance=guidance, steps=4), registries, progress=False
        )
        result = editor.run()
        assert result.edited_latent.shape[0] == 3
        assert editor.targets["toy-target"].shape == (3, 16)

    def test_disagreeing_batch_sizes(self, registries):
        guidance = [{"type": "toy-target", "weight": 1.0, "items": 3}]
        with pytest.raises(
            ConfigError,
            match=r"batch size disagrees: optimization.batch says 2, guidance.0 \(toy-target\) says 3",
        ):
            run(registries, guidance=guidance, batch=2)

    @pytest.mark.parametrize(
        ("claim", "says"),
        [({"batch": 1}, "optimization.batch says 1"), ({"seed": [5]}, "optimization.seed says 1")],
    )
    def test_a_batch_or_seed_list_of_one_does_not_broadcast(self, registries, claim, says):
        guidance = [{"type": "toy-target", "items": 3}]
        with pytest.raises(ConfigError) as info:
            run(registries, guidance=guidance, **claim)
        assert info.value.message == f"batch size disagrees: {says}, guidance.0 (toy-target) says 3"

    def test_one_guidance_target_broadcasts_to_the_batch(self, registries):
        guidance = [{"type": "toy-target", "items": 1}]
        editor = Editor(
            make_config(registries, guidance=guidance, seed=[1, 2, 3]), registries, progress=False
        )
        editor.prepare()
        assert editor.w0.shape[0] == 3 and editor.targets["toy-target"].shape == (16,)


def test_generate_mode_starts_from_the_mean(registries):
    editor = Editor(make_config(registries, mode="generate", steps=1), registries, progress=False)
    editor.prepare()
    torch.testing.assert_close(editor.w0, editor.generator.mean_latent())
    assert editor.seeds is None  # no seed was used


def test_start_from_a_latent_file(registries, tmp_path):
    latent = torch.randn(2, 4, 8)
    torch.save(latent, tmp_path / "w.pt")
    cfg = make_config(registries, latent=str(tmp_path / "w.pt"), steps=2)
    editor = Editor(cfg, registries, progress=False)
    editor.prepare()
    torch.testing.assert_close(editor.w0, latent)
    cfg = make_config(registries, latent=str(tmp_path / "w.pt"), latent_index=1, steps=2)
    editor = Editor(cfg, registries, progress=False)
    editor.prepare()
    torch.testing.assert_close(editor.w0, latent[1:])


def test_edit_from_a_toml_file_writes_every_output(registries, write_config, tmp_path):
    path = write_config(
        TOY_CONFIG.replace('dir = "out"', 'dir = "out"\nsave_every = 4\ngif = true')
    )
    cfg = load_config(path, registries)
    result = soundguide.edit(cfg, registries=registries, progress=False)
    out = tmp_path / "out"
    assert result.ok
    for name in (
        "source.png",
        "edited.png",
        "comparison.png",
        "latent_source.pt",
        "latent_edited.pt",
        "run.json",
        "trajectory.gif",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "steps").iterdir()) == [
        f"{k:05d}.{ext}" for k in (0, 4, 8, 12) for ext in ("png", "pt")
    ]
    edited = torch.load(out / "latent_edited.pt", weights_only=True)
    assert torch.equal(edited, result.edited_latent)
    step8 = torch.load(out / "steps" / "00008.pt", weights_only=True)
    assert step8.shape == (1, 4, 8)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["seeds"] == [7]
    assert manifest["config"]["guidance"][1]["weight"] == 0.5
    assert manifest["versions"]["torch"] == importlib.metadata.version("torch")
    assert manifest["losses"]["final"]["step"] == 12
    assert "latent_l2" in manifest["losses"]["first"]["terms"]
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,item,lr,total,toy-target[0],toy-target[1],latent_l2"
    assert len(rows) == 1 + 13  # one row per latent: 0..12 updates, one batch item
    assert manifest["seconds_per_step"] > 0


def test_saved_images_are_cropped_to_the_content_box(registries, tmp_path):
    cfg = config_from_dict(
        {
            "generator": {"type": "toy", "box": [2, 0, 4, 8]},
            "guidance": [{"type": "toy-target"}],
            "optimization": {"steps": 2},
        },
        registries,
    )
    result = soundguide.edit(cfg, out=tmp_path / "o", registries=registries, progress=False)
    assert result.edited_image.shape == (1, 3, 4, 8)
    from PIL import Image

    assert Image.open(tmp_path / "o" / "edited.png").size == (8, 4)


def test_view_is_exactly_the_content_box(registries):
    cfg = config_from_dict(
        {
            "generator": {"type": "toy", "box": [1, 2, 3, 5]},  # top, left, height, width
            "guidance": [{"type": "toy-target"}],
            "optimization": {"steps": 1},
        },
        registries,
    )
    editor = Editor(cfg, registries, progress=False)
    editor.prepare()
    image = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.testing.assert_close(editor.view(image), image[:, :, 1:4, 2:7])


def test_progress_bar_counts_updates_and_can_be_off():
    from soundguide.core.engine import _postfix, _progress

    bar = _progress(7, True)
    try:
        assert (bar.total, bar.desc, bar.unit, bar.disable) == (7, "optimizing", "step", False)
        assert bar.dynamic_ncols  # follows the terminal's width
    finally:
        bar.close()
    assert _progress(7, False).disable
    record = {"terms": {"a": [0.5, 1.5], "b": [2.0, 2.0]}, "total_sum": 6.0}
    assert _postfix(record) == "a=1.0000 b=2.0000 total=6.0000"  # the mean over items


def test_a_target_outside_its_space_is_refused_before_the_loop(registries):
    from soundguide.core.errors import PluginError

    guidance = [{"type": "toy-target", "vector": [1.0, 2.0, 3.0]}]  # the toy space has 16 values
    editor = Editor(make_config(registries, guidance=guidance), registries, progress=False)
    with pytest.raises(
        PluginError, match="target has 3 values but the images' embeddings .* 16"
    ) as info:
        editor.prepare()
    assert info.value.hint == (
        "the source's model and the image encoder must share one embedding space "
        "(e.g. SoundCLIP weights trained for this CLIP model)"
    )


def test_stop_request_ends_the_run_after_the_step_in_progress(registries):
    from soundguide.core.engine import Stop

    stop = Stop()
    phases = []

    def ask(event):
        phases.append(stop.phase)
        if event.step == 3 and not event.final:
            stop.request("stopped by the test")

    editor = Editor(make_config(registries, steps=10), registries, progress=False, stop=stop)
    editor.subscribe(ask)
    assert stop.phase == "preparing" and not stop.requested
    result = editor.run()
    assert result.status == "interrupted" and result.steps_done == 4  # step 3 completed
    assert result.message.startswith("stopped by the test: stopped after 4 of 10 updates")
    assert result.edited_step == 4 and len(result.history) == 4 + 1  # steps 0-3, the final
    assert phases[:-1] == ["running"] * 4 and phases[-1] == "finishing"
    stop.request("again", status="failed")  # a later request changes nothing
    assert stop.message == "stopped by the test" and stop.status == "interrupted"


def test_failed_step_keeps_what_was_done(registries, monkeypatch):
    original = toy_plugins.ToyGenerator.synthesize
    calls = {"n": 0}

    def synthesize(self, latent):
        calls["n"] += 1
        if calls["n"] == 6 and latent.requires_grad:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, latent)

    monkeypatch.setattr(toy_plugins.ToyGenerator, "synthesize", synthesize)
    editor = Editor(make_config(registries, steps=10), registries, progress=False)
    result = editor.run()
    assert result.status == "failed" and isinstance(result.error, RuntimeError)
    assert result.steps_done == 4 and result.edited_step == 4
    assert "failed after 4 of 10 updates (RuntimeError: CUDA out of memory" in result.message
    assert torch.isfinite(result.edited_image).all()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("out of memory\n  while allocating", "out of memory while allocating"),
        ("x" * 160, "x" * 160),
        ("x" * 161, "x" * 157 + "..."),
    ],
)
def test_a_failure_message_is_one_line_of_at_most_160_characters(
    registries, monkeypatch, text, shown
):
    def synthesize(self, latent):
        if latent.requires_grad:
            raise RuntimeError(text)
        return original(self, latent)

    original = toy_plugins.ToyGenerator.synthesize
    monkeypatch.setattr(toy_plugins.ToyGenerator, "synthesize", synthesize)
    result = Editor(make_config(registries, steps=3), registries, progress=False).run()
    assert (
        result.message == f"failed after 0 of 3 updates (RuntimeError: {shown}); kept what was done"
    )


def test_a_stop_request_without_words_reads_stopped(registries):
    from soundguide.core.engine import Stop

    stop = Stop()
    editor = Editor(make_config(registries, steps=5), registries, progress=False, stop=stop)
    editor.subscribe(lambda event: stop.request() if event.step == 1 else None)
    result = editor.run()
    assert result.status == "interrupted"
    assert result.message == "stopped after 2 of 5 updates; kept what was done"


# -- guards: each test fails when the check it names is removed or inverted ------------


def test_a_non_finite_target_is_refused(registries):
    from soundguide.core.errors import PluginError

    guidance = [{"type": "toy-target", "vector": [float("nan")] + [0.0] * 15}]
    editor = Editor(make_config(registries, guidance=guidance), registries, progress=False)
    with pytest.raises(
        PluginError, match="guidance 'toy-target': its target embedding is not finite"
    ):
        editor.prepare()


def test_a_target_that_is_not_a_tensor_is_refused(registries, monkeypatch):
    from soundguide.core.errors import PluginError

    monkeypatch.setattr(toy_plugins.ToyGuidance, "target", lambda self, encoder: [0.0] * 16)
    editor = Editor(make_config(registries, guidance=[{"type": "toy-target"}]), registries)
    with pytest.raises(PluginError, match=r"target\(\) must return \(D,\) or \(n, D\), got list"):
        editor.prepare()


def test_per_item_targets_must_match_the_batch(registries, monkeypatch):
    monkeypatch.setattr(toy_plugins.ToyGuidance, "target", lambda self, encoder: torch.randn(2, 16))
    config = make_config(registries, guidance=[{"type": "toy-target"}], seed=[1, 2, 3])
    with pytest.raises(ConfigError, match="gives 2 targets but the batch has 3 items"):
        Editor(config, registries, progress=False).prepare()


def test_batch_claims_must_agree_unless_one_broadcasts(registries, tmp_path):
    torch.save(torch.randn(2, 4, 8), tmp_path / "two.pt")
    config = make_config(registries, seed=[1, 2, 3], latent=str(tmp_path / "two.pt"))
    with pytest.raises(ConfigError) as info:
        Editor(config, registries, progress=False).prepare()
    assert info.value.message == (
        "batch size disagrees: optimization.seed says 3, optimization.latent says 2"
    )
    torch.save(torch.randn(1, 4, 8), tmp_path / "one.pt")
    config = make_config(registries, seed=[1, 2, 3], latent=str(tmp_path / "one.pt"))
    editor = Editor(config, registries, progress=False)
    editor.prepare()
    assert editor.w0.shape == (3, 4, 8)  # one latent, broadcast to the three items


def test_max_batch_is_inclusive_and_names_who_asks(registries):
    editor = Editor(make_config(registries, seed=[1, 2], max_batch=2), registries, progress=False)
    editor.prepare()
    assert editor.w0.shape[0] == 2
    guidance = [{"type": "toy-target", "items": 3}]
    config = make_config(registries, guidance=guidance, max_batch=2)
    with pytest.raises(
        ConfigError, match=r"guidance\.0 \(toy-target\) makes a batch of 3 items"
    ) as info:
        Editor(config, registries, progress=False).prepare()
    assert info.value.hint == (
        "split it into several runs, or raise optimization.max_batch if your device has the memory"
    )


def test_trust_reaches_the_latent_file(registries, tmp_path):
    from pathlib import PurePosixPath

    from soundguide.core.errors import LatentError

    meta = PurePosixPath("/made/by/a/script")  # not a plain container: needs trust
    torch.save({"latent": torch.randn(1, 4, 8), "meta": meta}, tmp_path / "w.pt")
    config = make_config(registries, latent=str(tmp_path / "w.pt"))
    with pytest.raises(LatentError, match="could run arbitrary code"):
        Editor(config, registries, progress=False).prepare()
    editor = Editor(config, registries, progress=False, trust_checkpoint=True)
    editor.prepare()
    assert editor.w0.shape == (1, 4, 8)


def test_regularizers_get_images_only_when_they_ask(registries):
    regularizer = [{"type": "counting", "weight": 0.1}, {"type": "image-mse", "weight": 1.0}]
    result = run(registries, regularizer=regularizer, steps=3)
    assert result.ok and result.history[-1]["terms"]["image-mse"][0] > 0


def test_nonfinite_message_names_the_last_good_update(registries):
    guidance = [{"type": "toy-target", "nan_after": 2}]
    result = run(registries, guidance=guidance, steps=5)
    assert "non-finite after 2 updates" in result.message and "(after 1 updates)" in result.message
    guidance = [{"type": "toy-target", "nan_after": 1}]
    result = run(registries, guidance=guidance, steps=5)
    assert "(after 0 updates)" in result.message


def test_a_non_finite_final_loss_keeps_the_last_finite_latent(registries):
    guidance = [{"type": "toy-target", "nan_after": 5}]  # the 6th loss: the final evaluation
    editor = Editor(make_config(registries, guidance=guidance, steps=5), registries, progress=False)
    events = []
    editor.subscribe(events.append)
    result = editor.run()
    assert result.status == "nonfinite" and result.steps_done == 5 and result.edited_step == 4
    assert torch.equal(result.edited_latent, events[4].latent)


def test_a_non_finite_final_image_keeps_the_last_finite_latent(registries):
    # synthesis calls: 1 the source, 2-6 the five steps, 7 the final latent
    generator = {"type": "toy", "nan_images_at": [7]}
    data = {
        "generator": generator,
        "guidance": [{"type": "toy-target"}],
        "optimization": {"steps": 5, "seed": 7},
    }
    result = Editor(config_from_dict(data, registries), registries, progress=False).run()
    assert result.status == "nonfinite" and result.edited_step == 4
    assert torch.isfinite(result.edited_image).all()


def test_when_no_later_image_is_finite_the_source_is_kept(registries):
    data = {
        "generator": {"type": "toy", "nan_images_at": [7, 8]},
        "guidance": [{"type": "toy-target"}],
        "optimization": {"steps": 5, "seed": 7},
    }
    editor = Editor(config_from_dict(data, registries), registries, progress=False)
    result = editor.run()
    assert result.status == "nonfinite" and result.edited_step == 0
    assert torch.equal(result.edited_latent, result.source_latent)
    assert torch.isfinite(result.edited_image).all()


def _final_render_raises(monkeypatch) -> None:
    """The toy generator fails with "out of memory" outside autograd from its 4th call:
    the render of the final latent after three updates."""
    original = toy_plugins.ToyGenerator.synthesize

    def synthesize(self, latent):
        if not torch.is_grad_enabled() and getattr(self, "calls", 0) >= 4:
            raise RuntimeError("out of memory (simulated)")
        return original(self, latent)

    monkeypatch.setattr(toy_plugins.ToyGenerator, "synthesize", synthesize)


def test_a_final_render_that_raises_keeps_the_latent(registries, tmp_path, monkeypatch):
    _final_render_raises(monkeypatch)
    cfg = make_config(registries, steps=3)
    with pytest.raises(RuntimeError, match="out of memory"):
        soundguide.edit(cfg, out=tmp_path / "out", registries=registries, progress=False)
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (
        manifest["status"] == "failed"
        and "could not render the edited latent" in manifest["message"]
    )
    assert (tmp_path / "out" / "latent_edited.pt").is_file()
    assert (tmp_path / "out" / "source.png").is_file() and not (
        tmp_path / "out" / "edited.png"
    ).exists()


# -- what the mutation run asked for: each test names the behaviour it pins ------------


class ModuleGenerator(toy_plugins.ToyGenerator, torch.nn.Module):
    """The toy generator as a torch module with a parameter (real generators are modules)."""

    class Config(toy_plugins.ToyGenerator.Config):
        type: Literal["toy-module"] = "toy-module"

    def __init__(self, config, context) -> None:
        torch.nn.Module.__init__(self)
        toy_plugins.ToyGenerator.__init__(self, config, context)
        self.gain = torch.nn.Parameter(torch.ones(()))


class ModuleRegularizer(Regularizer, torch.nn.Module):
    """A regularizer that is a torch module with a parameter (e.g. a perceptual loss)."""

    class Config(RegularizerConfig):
        type: Literal["toy-module"] = "toy-module"

    def __init__(self, config, context) -> None:
        torch.nn.Module.__init__(self)
        Regularizer.__init__(self, config, context)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def loss(self, w, w0, image, image0):
        return self.scale * (w - w0).pow(2).flatten(1).sum(1)


def test_the_generator_and_the_regularizers_are_frozen(registries):
    registries.generators.add(ModuleGenerator)
    registries.regularizers.add(ModuleRegularizer)
    data = {
        "generator": {"type": "toy-module"},
        "guidance": [{"type": "toy-target"}],
        "regularizer": [{"type": "toy-module", "weight": 0.1}],
        "optimization": {"steps": 2},
    }
    editor = Editor(config_from_dict(data, registries), registries, progress=False)
    editor.prepare()
    for module in (editor.generator, editor.regularizers[0].plugin):
        assert not module.training
        assert [p.requires_grad for p in module.parameters()] == [False]


def test_without_registries_the_editor_loads_the_plugins_it_is_given(registries):
    config = make_config(registries, steps=2)
    result = Editor(config, plugins=[toy_plugins], progress=False).run()
    assert result.ok and result.steps_done == 2


def test_plugins_share_the_run_context(registries):
    assert Editor(
        make_config(registries), registries, device=torch.device("meta")
    ).context.device == torch.device("meta")
    editor = Editor(make_config(registries, seed=[1, 2, 3]), registries, progress=False)
    editor.prepare()
    context = editor.context
    assert context.batch_size == 3 and context.weights is registries.weights
    assert editor.generator.context is context
    assert all(t.plugin.context is context for t in editor.guidances + editor.regularizers)


@pytest.mark.parametrize("progress", [True, False])
def test_the_progress_flag_reaches_the_bar_the_downloads_and_the_plugins(
    registries, monkeypatch, capsys, progress
):
    from soundguide.core import engine

    asked = []
    check_inputs = engine.check_inputs

    def spy(*args, **kwargs):
        asked.append(kwargs.get("progress", True))  # check_inputs' own default
        return check_inputs(*args, **kwargs)

    monkeypatch.setattr(engine, "check_inputs", spy)
    editor = Editor(make_config(registries, steps=3), registries, progress=progress)
    editor.run()
    assert [bool(p) for p in asked] == [progress]
    assert editor.generator.context.progress is progress
    err = capsys.readouterr().err
    assert ("optimizing" in err and "3/3" in err) if progress else "optimizing" not in err


def test_the_stop_phase_reads_preparing_while_the_run_loads(registries, monkeypatch):
    from soundguide.core.engine import Stop

    stop = Stop()
    phases = []
    target = toy_plugins.ToyGuidance.target

    def recording(self, encoder):
        phases.append(stop.phase)
        return target(self, encoder)

    monkeypatch.setattr(toy_plugins.ToyGuidance, "target", recording)
    Editor(make_config(registries, steps=1), registries, progress=False, stop=stop).run()
    assert phases == ["preparing", "preparing"] and stop.phase == "finishing"


@pytest.mark.parametrize(("name", "value"), [("num_layers", 0), ("latent_dim", 8.0)])
def test_generator_sizes_must_be_positive_ints(registries, monkeypatch, name, value):
    from soundguide.core.errors import PluginError

    monkeypatch.setattr(toy_plugins.ToyGenerator, name, property(lambda self: value))
    editor = Editor(make_config(registries), registries, progress=False)
    with pytest.raises(PluginError) as info:
        editor.prepare()
    assert info.value.message == f"generator 'toy': {name} must be a positive int, got {value!r}"


def test_generator_sizes_of_one_are_fine(registries):
    data = {
        "generator": {"type": "toy", "layers": 1, "dim": 1, "size": 1},
        "guidance": [{"type": "toy-target"}],
        "optimization": {"steps": 2},
    }
    result = Editor(config_from_dict(data, registries), registries, progress=False).run()
    assert result.ok and result.edited_latent.shape == (1, 1, 1)


def test_an_encoder_without_encode_image_is_a_plugin_error(registries, monkeypatch):
    from soundguide.core.errors import PluginError

    monkeypatch.setattr(toy_plugins.ToyGuidance, "build_encoder", lambda self: object())
    editor = Editor(make_config(registries, guidance=[{"type": "toy-target"}]), registries)
    with pytest.raises(PluginError) as info:
        editor.prepare()
    assert info.value.message == "guidance 'toy-target': build_encoder() returned no encode_image"


def test_an_encoder_without_after_targets_works(registries, monkeypatch):
    class Plain:  # only what the protocol asks for
        def __init__(self, inner):
            self.inner = inner

        def encode_image(self, image):
            return self.inner.encode_image(image)

    build = toy_plugins.ToyGuidance.build_encoder
    monkeypatch.setattr(toy_plugins.ToyGuidance, "build_encoder", lambda self: Plain(build(self)))
    result = run(registries, steps=2)
    assert result.ok and CALLS["encoder.after_targets"] == 0


def test_a_target_of_the_wrong_rank_is_named_by_its_shape(registries, monkeypatch):
    from soundguide.core.errors import PluginError

    monkeypatch.setattr(toy_plugins.ToyGuidance, "target", lambda self, enc: torch.zeros(1, 2, 16))
    editor = Editor(make_config(registries, guidance=[{"type": "toy-target"}]), registries)
    with pytest.raises(PluginError, match=r"must return \(D,\) or \(n, D\), got \(1, 2, 16\)$"):
        editor.prepare()


def test_a_non_finite_source_image_is_refused(registries):
    from soundguide.core.errors import PluginError

    data = {
        "generator": {"type": "toy", "nan_images_at": [1]},
        "guidance": [{"type": "toy-target"}],
        "optimization": {"steps": 2},
    }
    editor = Editor(config_from_dict(data, registries), registries, progress=False)
    with pytest.raises(PluginError) as info:
        editor.prepare()
    assert info.value.message == "the generator produced a non-finite image from the source latent"
    assert info.value.hint == (
        'the generator\'s checkpoint may be damaged; try precision = "fp32" or another start latent'
    )


def test_regularizers_are_set_up_with_the_source_and_told_of_each_update(registries, monkeypatch):
    setups, updates = [], []
    for cls in (toy_plugins.CountingRegularizer, toy_plugins.ImageRegularizer):
        monkeypatch.setattr(cls, "setup", lambda self, w0, image0: setups.append((w0, image0)))
    monkeypatch.setattr(
        toy_plugins.CountingRegularizer, "after_step", lambda self, w, w0: updates.append((w, w0))
    )
    regularizer = [{"type": "counting", "weight": 0.1}, {"type": "image-mse", "weight": 1.0}]
    editor = Editor(
        make_config(registries, regularizer=regularizer, steps=3), registries, progress=False
    )
    editor.run()
    (counting_w0, counting_image0), (image_w0, image_image0) = setups
    assert counting_w0 is editor.w0 and counting_image0 is None  # needs_image is False
    assert image_w0 is editor.w0 and image_image0 is editor.image0
    assert len(updates) == 3
    assert all(w.requires_grad and w0 is editor.w0 for w, w0 in updates)


def test_a_latent_stack_above_max_batch_is_refused_before_it_is_read(registries, tmp_path):
    from soundguide.core.errors import LatentError

    torch.save(torch.randn(3, 4, 8), tmp_path / "three.pt")
    config = make_config(registries, latent=str(tmp_path / "three.pt"), max_batch=2)
    with pytest.raises(
        LatentError, match=r"holds 3 latents .* at most 2 \(optimization.max_batch\)"
    ):
        Editor(config, registries, progress=False).prepare()


def test_a_term_weight_multiplies_its_loss(registries):
    guidance = [{"type": "toy-target", "weight": 0.5}]
    editor = Editor(make_config(registries, guidance=guidance), registries, progress=False)
    editor.prepare()
    plugin = editor.guidances[0].plugin
    embedding = editor.encoders[plugin.space].encode_image(editor.image0)
    unweighted = plugin.loss(embedding, editor.targets["toy-target"])
    assert unweighted.abs().min() > 1e-3
    torch.testing.assert_close(editor.losses(editor.w0)["toy-target"], 0.5 * unweighted)


def test_rampup_and_rampdown_reach_the_schedule_and_the_history(registries):
    config = make_config(registries, steps=20, lr=0.2, rampup=0.5, rampdown=0.5)
    editor = Editor(config, registries, progress=False)
    events = []
    editor.subscribe(events.append)
    result = editor.run()
    lrs = [e.lr for e in events[:-1]]
    expected = [cosine_ramp_lr(k / 20, 0.2, rampup=0.5, rampdown=0.5) for k in range(20)]
    assert lrs == pytest.approx(expected)
    assert [r["lr"] for r in result.history] == [*lrs, None]
    assert all(e.steps == 20 for e in events)


def test_a_record_holds_the_total_of_each_item(registries):
    result = run(registries, seed=[1, 2], steps=2)
    for record in result.history:
        assert len(record["total"]) == 2
        sums = [sum(values[i] for values in record["terms"].values()) for i in range(2)]
        assert record["total"] == pytest.approx(sums)
        assert record["total_sum"] == pytest.approx(sum(sums))


def test_step_seconds_time_each_update(registries):
    import time

    started = time.perf_counter()
    result = run(registries, steps=5)
    elapsed = time.perf_counter() - started
    assert len(result.step_seconds) == 5
    assert all(s > 0 for s in result.step_seconds) and sum(result.step_seconds) <= elapsed


def test_a_non_finite_first_loss_keeps_the_source_latent(registries):
    guidance = [{"type": "toy-target", "nan_after": 0}]
    result = run(registries, guidance=guidance, steps=5)
    assert result.status == "nonfinite" and result.steps_done == 0 and result.edited_step == 0
    assert torch.equal(result.edited_latent, result.source_latent)
    assert result.message == (
        "loss became non-finite after 0 updates (term toy-target); "
        "stopped and kept the last latent with a finite loss (the source latent)"
    )
    assert result.final_losses is result.history[0]


def test_the_nonfinite_message_names_every_bad_term_or_else_the_total(registries, monkeypatch):
    guidance = [
        {"type": "toy-target", "nan_after": 0},
        {"type": "toy-target", "nan_after": 0, "space_name": "b"},
    ]
    result = run(registries, guidance=guidance, steps=3)
    assert "(term toy-target[0], toy-target[1]);" in result.message
    # each term finite, their sum too large for float32
    monkeypatch.setattr(
        toy_plugins.ToyGuidance, "loss", lambda self, emb, target: torch.full((1,), 3e38)
    )
    result = run(registries, guidance=[{**g, "nan_after": None} for g in guidance], steps=3)
    assert result.status == "nonfinite" and "after 0 updates (term total);" in result.message


def test_a_zero_step_run_whose_latent_renders_non_finite_keeps_the_source(registries):
    data = {
        "generator": {"type": "toy", "nan_images_at": [2]},  # 1: the source, 2: the final
        "guidance": [{"type": "toy-target"}],
        "optimization": {"steps": 0},
    }
    result = Editor(config_from_dict(data, registries), registries, progress=False).run()
    assert result.status == "nonfinite" and result.edited_step == 0
    assert result.history == [] and result.final_losses is None
    assert torch.equal(result.edited_latent, result.source_latent)


def test_when_nothing_renders_finite_again_the_source_and_its_image_are_kept(registries):
    data = {
        "generator": {"type": "toy", "nan_images_at": [7, 8, 9]},  # final, last good, source
        "guidance": [{"type": "toy-target"}],
        "optimization": {"steps": 5, "seed": 7},
    }
    result = Editor(config_from_dict(data, registries), registries, progress=False).run()
    assert result.status == "nonfinite" and result.edited_step == 0
    assert result.final_losses is result.history[0]
    assert torch.equal(result.edited_latent, result.source_latent)
    assert torch.equal(result.edited_image, result.source_image)


def test_a_non_finite_latent_is_never_kept_even_with_a_finite_image(registries, monkeypatch):
    # a generator that maps NaN to 0: the image and the losses stay finite
    synthesize = toy_plugins.ToyGenerator.synthesize
    monkeypatch.setattr(
        toy_plugins.ToyGenerator,
        "synthesize",
        lambda self, latent: synthesize(self, torch.nan_to_num(latent)),
    )
    regularizer = [{"type": "poison", "at": 2}]  # the latent is NaN from update 2 on
    result = run(registries, regularizer=regularizer, steps=5)
    assert result.status == "nonfinite" and result.steps_done == 5
    assert result.edited_step == 0  # the later "good" latents are NaN: the source
    assert torch.equal(result.edited_latent, result.source_latent)


def test_a_non_finite_image_is_never_kept_even_with_a_finite_loss(registries, monkeypatch):
    encode = toy_plugins.ToyEncoder.encode_image
    monkeypatch.setattr(
        toy_plugins.ToyEncoder, "encode_image", lambda self, image: encode(self, image.nan_to_num())
    )
    data = {
        "generator": {"type": "toy", "nan_images_at": [7]},  # the final image
        "guidance": [{"type": "toy-target"}],
        "optimization": {"steps": 5, "seed": 7},
    }
    result = Editor(config_from_dict(data, registries), registries, progress=False).run()
    assert result.status == "nonfinite" and result.edited_step == 4
    assert torch.isfinite(result.edited_image).all()


def _failing_step_then(monkeypatch, final):
    """Synthesis fails at update 4 (call 6); then the final render ``raise``s or is ``nan``."""
    original = toy_plugins.ToyGenerator.synthesize
    calls = {"n": 0}

    def synthesize(self, latent):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("step failed")
        if calls["n"] == 7:
            if final == "raise":
                raise RuntimeError("render failed")
            return original(self, latent) * float("nan")
        return original(self, latent)

    monkeypatch.setattr(toy_plugins.ToyGenerator, "synthesize", synthesize)


@pytest.mark.parametrize("final", ["raise", "nan"])
def test_a_failed_step_keeps_its_message_when_the_final_render_fails_too(
    registries, monkeypatch, final
):
    _failing_step_then(monkeypatch, final)
    result = run(registries, steps=10)
    assert result.status == "failed" and str(result.error) == "step failed"
    assert result.message == (
        "failed after 4 of 10 updates (RuntimeError: step failed); kept what was done"
    )
    if final == "raise":  # the latent is kept, without an image
        assert result.edited_step == 4 and result.edited_image is None
    else:  # the last latent with a finite loss and image
        assert result.edited_step == 3 and torch.isfinite(result.edited_image).all()


def test_a_final_render_that_raises_says_why(registries, monkeypatch):
    _final_render_raises(monkeypatch)
    result = run(registries, steps=3)
    assert result.status == "failed" and result.edited_step == 3
    assert result.message == (
        "could not render the edited latent after 3 updates "
        "(RuntimeError: out of memory (simulated)); kept the latent"
    )
