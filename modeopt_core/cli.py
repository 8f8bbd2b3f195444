"""The ``modeopt`` command line (also ``python -m modeopt_core``).

Built-in commands are ``plugins`` and ``inspect``; plugins add their own (FastNAS adds ``prune`` and
``demo``) through the ``modeopt_register_commands(register)`` hook, calling
``register(name, help, configure, run)``: ``configure(parser)`` adds arguments to an argparse
sub-parser and ``run(args)`` returns the exit status.

Why argparse rather than click or typer: it ships with Python, so the core gains no dependency, and
plugins get a plain ``argparse.ArgumentParser`` to configure, an API every Python developer knows and
that does not change under them.

Exit status: 0 success, 1 failure (the reason is one ``error:`` line on stderr, never a traceback
unless ``-v`` is given), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from . import __version__, _cli_inspect, _cli_plugins
from .errors import ModeoptError
from .plugins import get_plugin_manager
from .progress import set_progress_mode

__all__ = ["Command", "main", "plugin_commands"]

_log = logging.getLogger(__name__)

_CORE = "modeopt-core"
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")
_ENVIRONMENT_HELP = """\
environment:
  MODEOPT_DISABLE_PLUGIN_AUTOLOAD=1  load no plugin from entry points
  MODEOPT_PLUGINS=a,b                load only these plugins (entry-point or distribution names)
  MODEOPT_PROGRESS=auto|bar|log|off  progress display (auto: a bar on a terminal, log lines otherwise)
  NO_COLOR=1                         no colours in terminal messages
"""


@dataclass(frozen=True)
class Command:
    """One ``modeopt`` subcommand and where it comes from."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int | None]
    plugin: str = _CORE


def _builtin_commands() -> list[Command]:
    return [
        Command("plugins", "list plugins, their modes, hooks and commands, and plugins that failed to load",
                _cli_plugins.configure, _cli_plugins.run),
        Command("inspect", "describe a checkpoint (format, versions, modes, subnet, tensors) and check it",
                _cli_inspect.configure, _cli_inspect.run),
    ]


def plugin_commands(reserved: Collection[str]) -> tuple[list[Command], list[str]]:
    """Commands contributed by plugins, and one message per refused registration.

    A command is refused (the plugin's others still register) when its name is not lowercase
    ``[a-z][a-z0-9-]*``, is in ``reserved`` (the built-ins) or was taken by another plugin, when
    ``run``/``configure`` are not callable, or when ``configure`` fails on a scratch parser (e.g. it
    adds ``-q``). A plugin whose hook raises is reported and skipped.
    """
    pm = get_plugin_manager()
    taken: dict[str, Command] = {}
    problems: list[str] = []
    # Called one plugin at a time (in registration order) so that one broken plugin cannot hide the others.
    for impl in pm.hook.modeopt_register_commands.get_hookimpls():
        plugin = pm.get_name(impl.plugin) or repr(impl.plugin)

        def register(name: str, help: str, configure: Callable[..., None] | None,
                     run: Callable[..., int | None], *, _plugin: str = plugin) -> None:
            problem = _refusal(name, configure, run, reserved, taken) or _configure_fails(name, configure)
            if problem:
                problems.append(f"plugin {_plugin!r}: command {name!r} refused: {problem}")
            else:
                taken[name] = Command(name, str(help), configure, run, _plugin)

        try:
            impl.function(register=register)
        except Exception as exc:
            problems.append(f"plugin {plugin!r} failed to register its commands: {type(exc).__name__}: {exc}")
    return list(taken.values()), problems


def _refusal(name: object, configure: object, run: object, reserved: Collection[str],
             taken: dict[str, Command]) -> str | None:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        return "a command name must be lowercase letters, digits and '-', starting with a letter"
    if name in reserved:
        return f"{name!r} is a built-in modeopt command; rename the plugin's command"
    if name in taken:
        return f"plugin {taken[name].plugin!r} already provides {name!r}; uninstall or disable one of them"
    if not callable(run):
        return "run must be a callable taking the parsed arguments and returning an exit status"
    if configure is not None and not callable(configure):
        return "configure must be None or a callable taking an argparse parser"
    return None


def _configure_fails(name: str, configure: Callable[..., None] | None) -> str | None:
    """Try ``configure`` on a scratch parser, so a plugin's bad arguments cannot break the whole CLI."""
    if configure is None:
        return None
    try:
        probe = argparse.ArgumentParser(prog=f"modeopt {name}", parents=[_global_flags()])
        configure(probe)
        probe.format_help()  # argparse %-formats help texts: a bare "50%" fails only when --help is asked
    except Exception as exc:
        return f"configure(parser) failed: {type(exc).__name__}: {exc} (-q/--quiet and -v/--verbose are global)"
    return None


def _global_flags() -> argparse.ArgumentParser:
    """-q/-v, accepted before or after the command name (values are read by a pre-parse)."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="only warnings and errors on stderr; no progress bars")
    flags.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug messages, and tracebacks for unexpected errors")
    return flags


def _build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    flags = _global_flags()
    parser = argparse.ArgumentParser(
        prog="modeopt", parents=[flags], epilog=_ENVIRONMENT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plugin-based model optimization for PyTorch: inspect checkpoints, list plugins, and run "
                    "the commands plugins add.",
    )
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in commands:
        origin = "" if command.plugin == _CORE else f" [plugin {command.plugin}]"
        # argparse %-formats help strings ("%(default)s"); a plugin's "50% FLOPs" must stay literal.
        child = sub.add_parser(command.name, parents=[flags], help=(command.help + origin).replace("%", "%%"),
                               description=command.help + origin)
        if command.configure is not None:
            command.configure(child)
    return parser


def _version_line() -> str:
    import torch

    return f"modeopt-core {__version__} (Python {platform.python_version()}, torch {torch.__version__})"


class _StderrHandler(logging.Handler):
    """Writes records to stderr: via ``tqdm.write`` on a terminal (bars stay intact), plain lines otherwise."""

    def __init__(self, stream: object, terminal: bool) -> None:
        super().__init__()
        self.stream = stream
        self.terminal = terminal

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if self.terminal:
                from tqdm import tqdm

                tqdm.write(message, file=self.stream)
            else:
                self.stream.write(message + "\n")  # type: ignore[attr-defined]
                self.stream.flush()  # type: ignore[attr-defined]
        except Exception:
            self.handleError(record)


class _TerminalFormatter(logging.Formatter):
    _COLOURS = {logging.WARNING: "\033[33m", logging.ERROR: "\033[31m", logging.CRITICAL: "\033[31m"}

    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno < logging.INFO:
            return f"debug: {record.name}: {text}"
        if record.levelno == logging.INFO:
            return text
        label = "warning" if record.levelno == logging.WARNING else "error"
        if self.colour:
            label = f"{self._COLOURS.get(record.levelno, '')}{label}\033[0m"
        return f"{label}: {text}"


def _ours_or_important(record: logging.LogRecord) -> bool:
    return record.name.startswith("modeopt") or record.levelno >= logging.WARNING


@contextmanager
def _cli_logging(level: int) -> Iterator[None]:
    """Route log records to stderr for the duration of one command; leave logging as it was afterwards."""
    stream = sys.stderr
    terminal = hasattr(stream, "isatty") and stream.isatty()
    handler = _StderrHandler(stream, terminal)
    if terminal:
        handler.setFormatter(_TerminalFormatter(colour=not os.environ.get("NO_COLOR")))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_ours_or_important)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextmanager
def _progress_off(quiet: bool) -> Iterator[None]:
    previous = set_progress_mode("off") if quiet else None
    try:
        yield
    finally:
        if quiet:
            set_progress_mode(previous)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def _run(command: Command, args: argparse.Namespace, verbose: bool) -> int:
    where = f"modeopt {command.name}"
    try:
        return _exit_status(command.run(args))
    except ModeoptError as exc:
        sys.stderr.write(f"{where}: error: {exc}\n")
    except KeyboardInterrupt:
        sys.stderr.write(f"{where}: interrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `modeopt plugins | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        origin = "" if command.plugin == _CORE else f" (plugin {command.plugin!r})"
        if verbose:
            _log.error("unexpected error in %s%s", where, origin, exc_info=True)
        hint = "" if verbose else "; rerun with -v for the traceback"
        sys.stderr.write(f"{where}: internal error{origin}: {type(exc).__name__}: {exc}{hint}\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``modeopt`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    pre_parser = _global_flags()
    pre_parser.allow_abbrev = False  # "--qu" must not be taken for --quiet before the real parse
    pre, _ = pre_parser.parse_known_args(args_in)
    quiet, verbose = getattr(pre, "quiet", False), getattr(pre, "verbose", False)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    before_command = args_in[: next((i for i, a in enumerate(args_in) if not a.startswith("-")), len(args_in))]
    if "--version" in before_command:  # answer without loading plugins
        sys.stdout.write(_version_line() + "\n")
        return 0
    with _cli_logging(level), _progress_off(quiet):
        builtins = _builtin_commands()
        extra, problems = plugin_commands({c.name for c in builtins})
        for problem in problems:
            _log.warning("%s", problem)
        commands = {c.name: c for c in [*builtins, *extra]}
        parser = _build_parser(list(commands.values()))
        try:
            args = parser.parse_args(args_in)
        except SystemExit as exc:  # --help, --version and usage errors: argparse has printed already
            return _exit_status(exc.code)
        if args.command is None:
            parser.print_help()
            return 0
        by_plugin: dict[str, list[str]] = {}
        for command in commands.values():
            by_plugin.setdefault(command.plugin, []).append(command.name)
        args._commands_by_plugin = by_plugin
        return _run(commands[args.command], args, verbose)
