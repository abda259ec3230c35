from __future__ import annotations

import pytest
import torch

from soundguide.core.adam import LatentAdam


def test_bit_identical_to_torch_adam_with_a_changing_lr():
    torch.manual_seed(0)
    target = torch.randn(2, 14, 64)
    ours = torch.randn(2, 14, 64, requires_grad=True)
    theirs = ours.detach().clone().requires_grad_(True)
    opt_ours = LatentAdam(ours, lr=0.1)
    opt_theirs = torch.optim.Adam([theirs], lr=0.1)
    for step in range(12):
        lr = 0.1 * (step + 1) / 12
        opt_ours.lr = lr
        for group in opt_theirs.param_groups:
            group["lr"] = lr
        for w, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            ((w - target) ** 3).abs().sum().backward()
            opt.step()
        assert torch.equal(ours, theirs), step
    assert ours.grad is not None
    opt_ours.zero_grad()
    assert ours.grad is None


def test_no_gradient_no_update():
    w = torch.ones(3, requires_grad=True)
    opt = LatentAdam(w, lr=1.0)
    opt.step()
    assert torch.equal(w, torch.ones(3)) and opt.steps == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="requires grad"):
        LatentAdam(torch.ones(3), lr=0.1)
    with pytest.raises(ValueError, match="betas"):
        LatentAdam(torch.ones(3, requires_grad=True), lr=0.1, betas=(1.0, 0.9))


def test_an_edit_never_imports_dynamo():
    from tests.isolation import imported_by

    code = (
        "import torch\n"
        "from soundguide.core.adam import LatentAdam\n"
        "w = torch.zeros(4, requires_grad=True)\n"
        "opt = LatentAdam(w, lr=0.1)\n"
        "w.square().sum().backward(); opt.step()\n"
    )
    assert imported_by(code, ["torch._dynamo"]) == []
