"""The ``emostream`` command: worker, ui, chaos, train, evaluate, cv, schemas (the service's, in
:mod:`streams.commands`) and feed, subscribe, demo (the tools', in :mod:`tools.commands`).

Each subcommand builds the one :class:`~streams.settings.Settings` object from ``--config`` and
the ``EMOSTREAM_*`` environment, then calls into the module that does the work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: the commands that read the service's settings (--config FILE and EMOSTREAM_*); the others take
#: their own flags (a model, a recipe, a folder) and start what they need themselves
USES_SETTINGS = ("worker", "ui", "feed", "subscribe", "demo")


def _settings(ns: argparse.Namespace, **overrides: Any) -> Any:
    from streams.settings import load_settings

    return load_settings(getattr(ns, "config", None), **overrides)


def cmd_schemas(ns: argparse.Namespace) -> int:
    from streams.schemas import json_schemas

    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(json_schemas())} JSON Schema files to {out}")
    return 0


def cmd_rules(ns: argparse.Namespace) -> int:
    """Check an escalation rules file as the worker will read it, without starting one."""
    from engines.interface import EMOTIONS
    from streams.rules import load_rules

    book = load_rules(ns.file)  # a bad file: ConfigError, one error line (main)
    labels = [x.strip() for x in ns.labels.split(",") if x.strip()] if ns.labels else list(EMOTIONS)
    print(f"{ns.file or 'the shipped rules'}: {len(book.rule)} rules; roles: "
          + "; ".join(f"{role} = {', '.join(globs)}" for role, globs in book.roles.items()))  # fmt: skip
    for r in book.rule:
        print(f"  {r.name}: {r.kind}, role {r.role}, {r.severity}, clear_after {r.clear_after}")
    said = book.unread(labels)
    for line in said:
        print(f"warning: {line}")
    return 1 if said else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emostream",
        description="Real-time emotion recognition for call-center streams. Settings come from --config FILE "
        "(TOML or JSON) and EMOSTREAM_* variables; README.md lists them. 'emostream COMMAND --help' for each command.",
    )
    parser.add_argument("--config", help="TOML or JSON settings file (EMOSTREAM_* variables win over it)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("schemas", help="write the JSON Schema files of every message")
    p.add_argument("--out", default="schemas", help="the folder to write them to (default: schemas)")
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("rules", help="check an escalation rules file as the worker reads it, without starting one")
    p.add_argument("file", nargs="?", default=None, help="the rules file (TOML; default: the shipped rules)")
    p.add_argument(
        "--labels",
        default=None,
        help="the model's labels, comma-separated (default: the shipped model's seven, MELD's)",
    )
    p.set_defaults(func=cmd_rules)

    _add_optional_commands(sub)
    for name, command in sub.choices.items():  # `emostream worker --config f.toml` reads as `emostream --config ...`
        if "--config" not in command._option_string_actions:  # (the others: parsed, to be refused by name in main)
            uses = name in USES_SETTINGS
            command.add_argument(
                "--config",
                default=argparse.SUPPRESS,
                help="as `emostream --config FILE`" if uses else argparse.SUPPRESS,
            )
    return parser


def _add_optional_commands(sub: Any) -> None:
    """Subcommands whose modules pull in heavy dependencies are registered lazily."""
    from streams import commands
    from tools import commands as tool_commands

    commands.register(sub)
    tool_commands.register(sub)


#: options whose value may start with '-' (argparse takes "--call-suffix -p2" for two options)
DASHED_VALUES = ("--call-suffix",)


def joined_dashed_values(argv: list[str]) -> list[str]:
    """``--call-suffix -p2`` as ``--call-suffix=-p2``: a value after the option that starts with one
    '-' is its value (one that starts with '--' is the next option, as before; nothing after '--')."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return out + argv[i:]
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if word in DASHED_VALUES and value.startswith("-") and not value.startswith("--"):
            out.append(f"{word}={value}")
            i += 2
        else:
            out.append(word)
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(joined_dashed_values(list(sys.argv[1:] if argv is None else argv)))
    if ns.config is not None and ns.command not in USES_SETTINGS:  # read by nothing: say so, do not ignore it
        parser.error(
            f"--config does not apply to `emostream {ns.command}`: only {', '.join(USES_SETTINGS)} read settings "
            f"(see `emostream {ns.command} --help` for its own options)"
        )
    ns.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that read their words again (train)
    from streams.errors import EmostreamError

    try:
        return int(ns.func(ns) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EmostreamError as exc:  # bad settings, a dialogue file, services that cannot be reached: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
