"""Real modes and command plugins used by the CLI tests (registered explicitly, never via entry points)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from pydantic import Field
from torch import nn

from modeopt_core import ModeConfig, ModeDescriptor, ModeoptError, hookimpl
from modeopt_core.progress import progress

SUBNET = {"0.out_features": 6, "2.in_features": 6, "stage.1.kernel": 3}


class PickConfig(ModeConfig):
    ratios: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 11)])
    divisor: int = 2


class PickMode(ModeDescriptor):
    """Shrinks the first Linear's output (and the next one's input) and records the chosen subnet."""

    name = "cli_pick"  # type: ignore[assignment]
    config_class = PickConfig  # type: ignore[assignment]

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return self.restore(model, config, {"subnet": dict(SUBNET)}), {
            "subnet": dict(SUBNET), "order": torch.arange(8)
        }

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        width = metadata["subnet"]["0.out_features"]
        first, last = model[0], model[2]
        model[0] = nn.Linear(first.in_features, width)
        model[2] = nn.Linear(width, last.out_features)
        return model


class ModesPlugin:
    @hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(PickMode())


_log = logging.getLogger("modeopt_clitest")


def _configure_hello(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="world")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fail", choices=["modeopt", "bug"])


def _run_hello(args: argparse.Namespace) -> int:
    if args.fail == "modeopt":
        raise ModeoptError("the hello command was asked to fail")
    if args.fail == "bug":
        raise ValueError("a plugin bug")
    _log.info("greeting %s", args.name)
    for _ in progress(range(args.steps), desc="hello steps", log_interval=0):
        pass
    print(f"hello {args.name}")
    return 7 if args.name == "seven" else 0


def _configure_clashing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quick", action="store_true")


def _configure_bad_help(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flops", help="prune to 50% FLOPs")


class CommandsPlugin:
    """Contributes ``hello`` and tries to take the built-in ``inspect``."""

    @hookimpl
    def modeopt_register_commands(self, register: Any) -> None:
        register("hello", "say hello to 100% of the world", _configure_hello, _run_hello)
        register("inspect", "shadow the built-in", None, _run_hello)
        register("Bad_Name", "not a valid name", None, _run_hello)
        register("not-runnable", "run is not callable", None, "nope")
        register("clashing-flag", "adds the global -q again", _configure_clashing, _run_hello)
        register("bad-help", "an argument help argparse cannot format", _configure_bad_help, _run_hello)


class RivalPlugin:
    """Also wants ``hello``; registered after CommandsPlugin, so it is refused."""

    @hookimpl
    def modeopt_register_commands(self, register: Any) -> None:
        register("hello", "another hello", None, lambda args: 0)
        register("rival-only", "a command only the rival has", None, lambda args: 3)


class ExplodingCommandsPlugin:
    @hookimpl
    def modeopt_register_commands(self, register: Any) -> None:
        raise RuntimeError("command registration exploded")
