"""The ``autocompress`` command: thin commands over library calls, one error boundary.

Domain errors (bad study file, unknown study, unreachable storage) print one line and exit 2.
The commands live in ``cli.search``, ``cli.read`` and ``cli.bundle``; each imports the
engine inside its body: the engine pulls in torch, Optuna, pandas and NNI (about 4 s on this
machine), which ``autocompress --help`` and a mistyped option should not wait for.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import sys
import typing
import warnings
from typing import Annotated, Any, Callable, Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from autocompress.errors import AutocompressError, ConfigError


class _OneLineUsageErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option, a value of the wrong type) as one line, exit code 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except Exception as exc:  # typer ships its own copy of click: match its classes by name
            names = {c.__name__ for c in type(exc).__mro__}
            if "UsageError" in names:
                ctx = getattr(exc, "ctx", None)
                where = ctx.command_path if ctx is not None else "autocompress"
                console.print(f"[bold red]error:[/] {escape(f'{where}: {exc.format_message()}')}", highlight=False,
                              soft_wrap=True)
                sys.exit(2)
            if "Abort" in names:
                sys.exit(130)
            raise
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Search compression policies (pruning, quantization, distillation) with Optuna.")
# Piped or captured output has no terminal width; rich would wrap lines and tables at 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out_console = Console(width=None if sys.stdout.isatty() else 160)

Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs (-v info, -vv debug).")]
StorageOpt = Annotated[Optional[str], typer.Option(help="Storage URL, when the study is not in a local run directory.")]
StudyArg = Annotated[str, typer.Argument(help="Study name (runs/<name>) or run directory.")]


def setup_logging(verbose: int) -> None:
    import optuna  # the engine's import cost (see the module docstring)

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("autocompress").setLevel(level)
    # Optuna logs every failed trial with a traceback at WARNING; we print one line per failure.
    optuna.logging.set_verbosity(optuna.logging.ERROR if verbose == 0 else optuna.logging.INFO)
    for noisy in ("nni", "nni.compression"):
        logging.getLogger(noisy).setLevel(logging.ERROR if verbose < 2 else logging.INFO)
    if verbose == 0:
        warnings.filterwarnings("ignore")


def command(options: type, name: str | None = None) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register ``fn(opts)`` as a command whose arguments and options are the fields of the
    dataclass ``options`` (typer metadata in ``Annotated``). Domain errors become one line and
    exit code 2 here, the CLI's one error boundary; Ctrl-C says how to resume."""
    hints = typing.get_type_hints(options, include_extras=True)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(options)]

    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        def run(**kwargs: Any) -> None:
            try:
                check_finite(kwargs)
                fn(options(**kwargs))
            except AutocompressError as exc:
                fail(str(exc))
            except KeyboardInterrupt:
                console.print("\ninterrupted: the study is saved; run the same command to resume")
                raise typer.Exit(code=130) from None

        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        functools.update_wrapper(run, fn, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        app.command(name)(run)
        return fn

    return register


def check_finite(values: dict[str, Any]) -> None:
    """A number option that is not finite (``--min-accuracy inf``, ``nan``: click parses both) is
    refused before the command starts, naming the option."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(None, f"--{name.replace('_', '-')}", f"expected a finite number, got {value}")


def fail(message: str) -> None:
    # escaped: a message quoting YAML ("{knob: [values]}") must not be read as rich markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def say(message: str) -> None:
    console.print(escape(message), highlight=False)


def duration(value: Optional[str], option: str) -> Optional[float]:
    """``--timeout 20m`` in seconds; a bad value is a one-line error naming the option."""
    from autocompress.spec.fields import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(None, option, str(exc)) from None


def print_artifacts(artifacts: dict) -> None:
    for name, status in artifacts.items():
        if not str(status).startswith("ok"):
            console.print(f"note: {name} {status}", highlight=False)
