"""How every ``recctl`` command's ``--help`` reads: defaults shown, descriptions kept, data default spelled out.

:class:`RecctlParser` is the root parser's class; ``add_subparsers`` creates
subcommands of the parser's own class, so every command group and action gets
the same formatter and behaviour without each module asking for it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from movierec.paths import DATA_ENV, default_ml1m_dir


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to an option's help when X says something and the help does not name it already.

    Unlike :class:`argparse.ArgumentDefaultsHelpFormatter` it leaves out
    ``default: None``/``False``/``[]`` (flags, "none given") and help texts
    that already describe their default in words; descriptions and epilogs keep
    their line breaks (examples).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        if _says_nothing(action.default):
            return text
        return f"{text} (default: %(default)s)"


def _says_nothing(default: Any) -> bool:
    """None, False (an unset flag) and empty lists or strings: "not given", not worth a "(default: ...)"."""
    return default is None or default is False or (isinstance(default, list | tuple | str) and not default)


class _Subcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose ``--help`` opens with their one-line ``help`` when they set no description."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if "help" in kwargs and "description" not in kwargs:
            kwargs["description"] = kwargs["help"]
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        return parser


class RecctlParser(argparse.ArgumentParser):
    """An ArgumentParser with :class:`HelpFormatter`, passed down to every subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)


def data_default_help() -> str:
    """The default of ``--data``, as it resolves on this machine right now (so the user sees the actual path)."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return f"default: ${DATA_ENV} = {configured}"
    found = default_ml1m_dir()
    if found is not None:
        return f"default: ${DATA_ENV} (unset), else the shared MovieLens-1M copy at {found}"
    return (
        f"default: ${DATA_ENV} (unset), else a shared MovieLens-1M copy, none here: "
        "pass --data or fetch it with 'recctl data download ml-1m'"
    )
