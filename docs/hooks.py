"""mkdocs hooks: keep the pages true to the code and the repository (`mkdocs build --strict` fails on a
warning).

1. Option tables. A line `<!-- options: RULE [RULE...] -->` is followed by a markdown table whose first column
   is an option name in backticks and whose second is its default as a Python literal in backticks. The names
   must be exactly the options `nowt.rules.rule_class(RULE)` declares for each RULE named and each default
   equal to the code's (`Rule.defaults()`); a mismatch is a warning, so a changed default or new option fails
   the docs build until the page says so. A marker with no table after it says the rule takes no options.
2. Rule flags. `<!-- rule-flags -->` becomes the list of the rule options that are `nowt train` flags, each
   with the rules that declare it, read from the registry (`nowt.rules.config_options`): a new rule's flags
   are listed with no edit to the page.
3. Repository paths. A backticked path that starts with one of `REPO_DIRS` (`results/akrout2019/RESULTS.md`)
   must exist in the repository (glob characters and trailing `...` are left alone); the site cannot link
   outside `docs/`, so pages state such paths, and this check keeps them from going stale.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.nowt")

ROOT = Path(__file__).resolve().parent.parent
REPO_DIRS = ("results/", "benchmarks/", "src/", "tests/", "scripts/", ".ci/")
OPTIONS = re.compile(r"^<!-- options: ([\w\s-]+?) -->\s*$")
CELL = re.compile(r"^`(.*)`$")
PATH = re.compile(r"`((?:{})[^`\s]*)`".format("|".join(re.escape(d) for d in REPO_DIRS)))


def _normal(value):
    """Lists and tuples compare equal (a TOML list is a tuple in the code)."""
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    return value


def _check_options(rule: str, rows: list[str], page: str) -> None:
    from nowt.rules import rule_class  # imported here: only pages with an options table need nowt

    try:
        declared = rule_class(rule).defaults()
    except ValueError as e:
        log.warning(f"{page}: options table for {rule!r}: {e}")
        return
    seen = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        name, default = (CELL.match(c) for c in cells[:2])
        if not (name and default):
            log.warning(f"{page}: options table for {rule!r}: row {row.strip()!r} needs `name` | `default`")
            continue
        try:
            seen[name.group(1)] = ast.literal_eval(default.group(1))
        except (ValueError, SyntaxError):
            log.warning(f"{page}: option {name.group(1)!r} of {rule!r}: default {default.group(1)!r} is not "
                        f"a Python literal")
    for key in sorted(set(declared) | set(seen)):
        if key not in seen:
            log.warning(f"{page}: option {key!r} of {rule!r} (default {declared[key]!r}) is missing from its "
                        f"table")
        elif key not in declared:
            log.warning(f"{page}: option {key!r} is in the table but {rule!r} does not declare it")
        elif _normal(seen[key]) != _normal(declared[key]):
            log.warning(f"{page}: option {key!r} of {rule!r}: the table says {seen[key]!r}, the code "
                        f"{declared[key]!r}")


RULE_FLAGS = "<!-- rule-flags -->"


def _rule_flags(page: str) -> str:
    """The rule options' flags grouped by the rules that declare them, each rule linked to its page if any."""
    import os

    from nowt.rules import config_options, list_rules, rule_class

    groups: dict[tuple[str, ...], list[str]] = {}
    for name, option in config_options().items():
        declaring = tuple(r for r in list_rules() if name in rule_class(r).options)
        groups.setdefault(declaring, []).append(f"`{option.flag or '--' + name.replace('_', '-')}`")
    here = os.path.dirname(page)

    def link(rule: str) -> str:
        target = f"rules/{rule}.md"
        exists = (ROOT / "docs" / target).exists()
        return f"[{rule}]({os.path.relpath(target, here or '.')})" if exists else rule

    return "; ".join(f"{', '.join(flags)} ({', '.join(map(link, declaring))})"
                     for declaring, flags in groups.items())


def on_page_markdown(markdown: str, page, config, files) -> str:
    name = page.file.src_uri
    if RULE_FLAGS in markdown:
        markdown = markdown.replace(RULE_FLAGS, _rule_flags(name))
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        match = OPTIONS.match(line)
        if not match:
            continue
        table = []
        for row in lines[i + 1:]:
            if not row.strip() and not table:
                continue
            if not row.lstrip().startswith("|"):
                break
            table.append(row)
        for rule in match.group(1).split():  # no table: the rules take no options
            _check_options(rule, table[2:], name)
    for path in PATH.findall(markdown):
        if any(ch in path for ch in "*?[{<") or path.endswith("..."):
            continue
        if not (ROOT / path.rstrip("/")).exists():
            log.warning(f"{name}: `{path}` does not exist in the repository")
    return markdown
