"""``clipdistill config [SECTION]``: every config key with its default and its comment, read from the schema.

The comments are the ones written next to the fields in :mod:`clipdistill.config`, so this listing
cannot drift from the code. The output is YAML: copy a section into an experiment file and edit it.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import re
import tokenize

import yaml

from clipdistill import config as config_lib
from clipdistill.errors import UserError


def sections() -> dict[str, object]:
    """Section name -> its dataclass (or, for ``losses``, its default mapping)."""
    defaults = config_lib.Config()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(config_lib.Config)}


def field_comments(cls) -> dict[str, str]:
    """Each field's comment: the comment lines right above it, then the one at the end of its line."""
    lines = inspect.getsource(cls).splitlines()
    on_line = {}  # line index -> comment text (tokenize: a '#' inside a string is not a comment)
    for token in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
        if token.type == tokenize.COMMENT:
            on_line[token.start[0] - 1] = token.string.lstrip("#").strip()
    comments = {}
    for number, line in enumerate(lines):
        match = re.match(r"\s+(\w+)\s*:", line)
        if not match or line.lstrip().startswith("#"):
            continue
        above, index = [], number - 1
        while index >= 0 and lines[index].lstrip().startswith("#"):
            above.insert(0, on_line.get(index, ""))
            index -= 1
        comments[match.group(1)] = " -- ".join(part for part in (" ".join(above), on_line.get(number, "")) if part)
    return comments


def _yaml_value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text.removesuffix("...").strip()  # a plain scalar is dumped as a document: "auto\n..."


# Commented out, so that the listing stays loadable as the defaults (teacher: and teachers: exclude each other).
TEACHERS_EXAMPLE = """teachers: null  # several teachers (an ensemble) instead of teacher:, each a section with teacher:'s keys, e.g.
#  - {source: cache, path: CACHE_OF_TEACHER_1, weight: 1.0}
#  - {source: checkpoint, model: ARCH, path: TEACHER_2.pt, weight: 1.0, temperature: 50.0}
"""


def section_text(name: str, value) -> str:
    if name == "teachers":
        return TEACHERS_EXAMPLE
    if not dataclasses.is_dataclass(value):  # losses: a free mapping of loss name -> weight and options
        from clipdistill.losses import names

        return (f"{name}: {_yaml_value(value)}  # loss name (or module:Class) -> {{weight: W, option: value}}; "
                f"names: {', '.join(names())}\n")
    comments = field_comments(type(value))
    lines = [f"{name}:"]
    for field in dataclasses.fields(value):
        comment = comments.get(field.name, "")
        lines.append(f"  {field.name}: {_yaml_value(getattr(value, field.name))}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


def schema_text(section: str = "") -> str:
    known = sections()
    if section and section not in known:
        raise UserError(f"no config section '{section}' (sections: {', '.join(known)})")
    chosen = {section: known[section]} if section else known
    return "\n".join(section_text(name, value) for name, value in chosen.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clipdistill config", description="Print the config keys with their defaults and meaning (YAML). "
        "Set any of them in an experiment file or on the command line as SECTION.KEY=VALUE.")
    parser.add_argument("section", nargs="?", default="", help=f"one section ({', '.join(sections())}); default: all")
    args = parser.parse_args(argv)
    print(schema_text(args.section), end="")
    return 0
