from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_core import ModeConfig, ModeDescriptor, hookimpl
from modeopt_core.searcher import BaseSearcher
from tests.core.search.search_toys import BATCH, IN_FEATURES, RandomChoiceSearcher, ScoreOnData, make_net


class ChoiceSearchMode(ModeDescriptor):
    """A searchable mode over ChoiceNet whose searcher is the toy random searcher."""

    name = "toy_choice_search"  # type: ignore[assignment]
    config_class = ModeConfig  # type: ignore[assignment]

    @property
    def search_algorithm(self) -> type[BaseSearcher]:
        return RandomChoiceSearcher

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return model, {}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        return model


class ChoiceSearchPlugin:
    @hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(ChoiceSearchMode())


@pytest.fixture
def choice_mode() -> Iterator[str]:
    name = mo.register_plugin(ChoiceSearchPlugin(), name="toy-choice-search")
    yield name
    mo.unregister_plugin(name)


def test_core_search_runs_the_mode_searcher(choice_mode: str) -> None:
    model = mo.apply_mode(make_net(), "toy_choice_search")
    dummy = torch.randn(BATCH, IN_FEATURES)
    config = {"score_func": ScoreOnData(), "num_iters": 8, "verbose": False}
    searched, results = mo.search(model, {"flops": "70%"}, dummy, config)
    assert searched is model and results["searcher"] == "RandomChoiceSearcher"
    assert results["iterations"] == 8 and results["satisfied"]
    assert [b.active for b in model.blocks] == list(results["best"]["config"].values())
    with pytest.raises(mo.ConfigError, match="accepted keys"):
        mo.search(model, {"flops": "70%"}, dummy, {"population_size": 3})
