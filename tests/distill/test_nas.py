"""kd_loss on search-space models: FastNAS (prune, distil, export both) and AutoNAS supernet training,
where each training forward samples a subnet that is distilled from the full model (sandwich rule)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modeopt_autonas as mtn
import modeopt_core as mo
import modeopt_distill as md
from modeopt_fastnas.digits import DigitsResNet

WIDTHS = (8, 16, 16)
DUMMY = torch.zeros(2, 1, 8, 8)


def _batch(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _digits(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return DigitsResNet(WIDTHS)


def test_fastnas_kd_loss_export_student_export_nas() -> None:
    model = _digits()
    teacher = copy.deepcopy(model).eval()
    model = mo.apply_mode(model, ["fastnas"])
    mtn.sample(model, "min")  # the pruned subnet (a search would pick it)
    subnet = mtn.get_subnet_config(model)
    model = mo.apply_mode(model, [("kd_loss", {"pairs": [{}, {"student": "layer3", "loss": "mse", "adapter": True}]})],
                          mode_kwargs={"teacher": teacher, "dummy_input": DUMMY})
    assert mo.applied_modes(model) == ["fastnas", "kd_loss"] and mtn.has_search_space(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for step in range(3):
        x, y = _batch(step)
        opt.zero_grad()
        model.compute_kd_loss(student_loss=F.cross_entropy(model(x), y)).backward()
        opt.step()
    assert mtn.get_subnet_config(model) == subnet  # distillation trained the selected subnet
    model = mo.export(model)  # export_student
    assert mo.applied_modes(model)[-1] == "export_student" and mtn.has_search_space(model)
    model.eval()
    x, _ = _batch(9)
    at_subnet = model(x)
    model = mo.export(model)  # export_nas: still possible, the search space was left intact
    assert mo.applied_modes(model) == ["fastnas", "kd_loss", "export_student", "export_nas"]
    assert not mtn.has_search_space(model) and type(model.layer3[0].conv1) is nn.Conv2d
    assert model.layer3[0].conv1.out_channels < WIDTHS[2]
    assert torch.allclose(model(x), at_subnet, atol=1e-5)


@pytest.mark.parametrize(("chain", "message"), [
    (["fastnas", "kd_loss", "export_nas"], "cannot apply export mode 'export_nas' now: the pending export mode is "
                                           "'export_student'"),
    (["fastnas", "export_nas", "export_student"], "cannot apply export mode 'export_student' now: no mode is waiting"),
    (["kd_loss", "fastnas"], "cannot apply 'fastnas' after 'kd_loss': only ['export_student'] may follow it"),
    (["autonas", "kd_loss", "autonas"], "cannot apply 'autonas' after 'kd_loss'"),
])
def test_invalid_nas_chains_are_typed(chain: list[str], message: str) -> None:
    model = _digits()
    with pytest.raises(mo.ModeChainError) as info:
        mo.apply_mode(model, chain, mode_kwargs={"teacher": copy.deepcopy(model)})
    assert message in str(info.value) and mo.applied_modes(model) == []


def test_kd_loss_is_listed_after_the_nas_modes_through_their_hook() -> None:
    assert "kd_loss" in mo.get_mode("fastnas").next_modes and "kd_loss" in mo.get_mode("autonas").next_modes
    from modeopt_distill import plugin

    assert plugin.modeopt_autonas_next_modes() == ["kd_loss"]


def _supernet(sampling: str = "sandwich") -> nn.Module:
    return mo.apply_mode(_digits(), [("autonas", {"sampling": sampling, "seed": 3})])


def _sampled_configs(model: nn.Module, steps: int, distil: bool) -> tuple[list[dict[str, int]], list[dict]]:
    """The subnet of each training forward and, when distilling, the loss terms of that step."""
    space = mtn.get_search_space(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    configs, terms = [], []
    model.train()
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        out = model(x)
        configs.append(space.config())
        if distil:
            loss, t = md.compute_kd_loss(model, F.cross_entropy(out, y), return_terms=True)
            assert space.config() == configs[-1]  # the teacher pass put the sampled subnet back
            terms.append({k: float(v.detach()) for k, v in t.items()})
        else:
            loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
    return configs, terms


def test_sandwich_in_place_distillation_from_the_largest_subnet() -> None:
    plain = _supernet()
    reference, _ = _sampled_configs(plain, 6, distil=False)

    model = mo.apply_mode(_supernet(), [("kd_loss", {"teacher_subnet": "max", "temperature": 2.0})])
    space = mtn.get_search_space(model)
    largest = {n: hp.max for n, hp in space.named_hparams(True)}
    smallest = {n: hp.min for n, hp in space.named_hparams(True)}
    configs, terms = _sampled_configs(model, 6, distil=True)
    assert configs == reference  # the sampler's rotation is not disturbed by the teacher passes
    assert configs[0] == configs[3] == largest and configs[1] == configs[4] == smallest
    for config, term in zip(configs, terms):
        kl = term["output kl_div"]
        if config == largest:  # the largest subnet distils from itself: nothing to learn from the teacher
            assert abs(kl) < 1e-6
        else:
            assert kl > 1e-4
    assert mtn.get_subnet_config(model) == largest  # the user's selection


def test_in_place_teacher_output_is_the_largest_subnet_on_the_same_batch() -> None:
    model = mo.apply_mode(_supernet("random"), [("kd_loss", {"teacher_subnet": "max", "teacher_no_grad": True})])
    twin = copy.deepcopy(model)
    x, _ = _batch(1)
    model.train()
    out = model(x)
    sampled = mtn.get_search_space(model).config()
    loss = model.compute_kd_loss()
    twin.train()
    mtn.sample(twin, "max")
    with torch.no_grad(), mtn.pause_sampling(twin):
        teacher_out = twin(x)
    assert torch.allclose(loss, md.losses.kd_term("kl_div", out, teacher_out, temperature=1.0, dim=1), atol=1e-6)
    loss.backward()
    assert mtn.get_search_space(model).config() == sampled


def test_each_sampled_subnet_distils_from_an_external_full_model() -> None:
    teacher = _digits().eval()  # the unpruned model, as a separate teacher
    model = mo.apply_mode(_supernet(), [("kd_loss", {"pairs": [{}, {"student": "layer2", "loss": "mse",
                                                                     "adapter": True}]})],
                          mode_kwargs={"teacher": teacher, "dummy_input": DUMMY})
    configs, terms = _sampled_configs(model, 3, distil=True)
    assert len({tuple(c.values()) for c in configs}) == 3  # max, min, random
    assert all(t["output kl_div"] > 0 and t["layer2 mse"] > 0 for t in terms)
    model = mo.export(model)
    assert mo.applied_modes(model) == ["autonas", "kd_loss", "export_student"]
    model = mo.export(model)
    assert mo.applied_modes(model)[-1] == "export_nas"


def test_in_place_distillation_survives_a_checkpoint(tmp_path: object) -> None:
    from pathlib import Path

    model = mo.apply_mode(_supernet(), [("kd_loss", {"teacher_subnet": "max"})])
    _sampled_configs(model, 2, distil=True)
    path = Path(str(tmp_path)) / "supernet.safetensors"
    mo.save(model, path)
    restored = mo.restore(_digits(5), path)
    assert mo.applied_modes(restored) == ["autonas", "kd_loss"]
    with pytest.raises(md.DistillError, match="distils from its own subnet"):
        md.attach_teacher(restored, _digits())
    saved, now = model.state_dict(), restored.state_dict()
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)
    # the in-place teacher needs nothing else; AutoNAS starts a restored sampler afresh (max, min, ...)
    _, terms = _sampled_configs(restored, 2, distil=True)
    assert abs(terms[0]["output kl_div"]) < 1e-6 and terms[1]["output kl_div"] > 1e-4
