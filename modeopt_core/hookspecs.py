"""Hook specifications: the contract between the core and its plugins.

Every hook is called by the core's single :class:`pluggy.PluginManager` (see ``plugins``). Plugins
implement hooks with ``modeopt_core.hookimpl``. The entry-point hooks (convert, restore, save and
new-mode updates) have a built-in implementation that calls the mode descriptor; other plugins wrap
them with ``@hookimpl(wrapper=True)`` to observe, time or veto (raise) a mode's work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from .config import ModeConfig
    from .mode import Metadata, ModeDescriptor

__all__ = ["hookimpl", "hookspec"]

PROJECT_NAME = "modeopt"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def modeopt_register_modes(register: Callable[[ModeDescriptor], None]) -> None:
    """Contribute modes by calling ``register(descriptor)`` once per mode.

    Called once per plugin when the mode registry is built. Registering a name that another plugin
    already registered raises ``ModeRegistrationError`` naming both providers. Registration by callback
    keeps this signature stable as the registry grows options.
    """


@hookspec
def modeopt_plugin_requires() -> list[str]:
    """Names of the plugins this plugin needs registered first (entry-point names, e.g. ``["autonas"]``).

    Called once, when the plugin is registered. Autoload then loads those plugins too, even when
    ``MODEOPT_PLUGINS`` does not name them; a required plugin that is not installed (or fails to load,
    or, with autoload off, was not registered first) makes this plugin fail to register with a
    ``PluginError`` naming it, instead of failing later on a missing mode.
    """


@hookspec
def modeopt_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add a plugin's own hook specifications (``pluginmanager.add_hookspecs(module)``).

    Lets a plugin such as AutoNAS open extension points (e.g. custom dynamic layers) that other
    plugins implement. Called right after the plugin is registered.
    """


@hookspec(firstresult=True)
def modeopt_convert(
    mode: ModeDescriptor, model: nn.Module, config: ModeConfig, mode_kwargs: dict[str, Any]
) -> tuple[nn.Module, Metadata]:
    """Apply ``mode`` to ``model``; return ``(model, metadata)``.

    The built-in implementation calls ``mode.convert(model, config, **mode_kwargs)``. Wrappers see the
    result via ``result = yield`` and may raise to veto; the core then rolls the model back.
    """


@hookspec(firstresult=True)
def modeopt_restore(
    mode: ModeDescriptor, model: nn.Module, config: ModeConfig, metadata: Metadata, dry_run: bool
) -> nn.Module:
    """Re-apply ``mode`` on a fresh model from recorded config and metadata; return the model.

    ``modeopt_core.restore`` replays the recorded modes twice: first with ``dry_run=True`` on a
    data-less copy of the model (parameters on the ``meta`` device), to check that the checkpoint fits
    before the real model is touched, then with ``dry_run=False`` on the model itself. Wrappers that
    count, log or time restores should act on the real pass only. A mode whose restore needs real
    tensor data declares ``ModeDescriptor.supports_meta_restore = False``; the dry run is then skipped.
    """


@hookspec(firstresult=True)
def modeopt_summarize_metadata(mode: ModeDescriptor, config: dict[str, Any], metadata: Metadata) -> str | None:
    """A one-line summary of a recorded mode for ``modeopt inspect`` (None: let another plugin answer).

    ``config`` is the recorded (JSON) config; ``metadata`` the decoded metadata (may hold tensors).
    Called only for modes whose plugin is installed.
    """


@hookspec(firstresult=True)
def modeopt_update_for_save(
    mode: ModeDescriptor, model: nn.Module, config: ModeConfig, metadata: Metadata
) -> bool:
    """Let the last mode update its ``metadata`` in place before the state is taken; return True."""


@hookspec(firstresult=True)
def modeopt_update_for_new_mode(
    mode: ModeDescriptor, model: nn.Module, config: ModeConfig, metadata: Metadata
) -> bool:
    """Let the last mode update its ``metadata`` in place before a new mode is applied; return True."""


@hookspec
def modeopt_register_commands(register: Callable[..., None]) -> None:
    """Contribute ``modeopt`` CLI subcommands: ``register(name, help, configure, run)``.

    ``configure(parser)`` adds arguments to an ``argparse`` sub-parser; ``run(args) -> int`` executes
    the command and returns the exit code.
    """
