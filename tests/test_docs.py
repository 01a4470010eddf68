"""The docs say what the code does: docs/flags.md against the scripts' argparse parsers, and
every relative link between the README, CONTRIBUTING.md, SECURITY.md and docs/ pages (file
and heading) leads somewhere."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from common.cli import client_parser, server_parser
from common.auto import AUTO

ROOT = Path(__file__).resolve().parent.parent
FLAGS_PAGE = ROOT / "docs" / "flags.md"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "SECURITY.md"] + sorted(
    (ROOT / "docs").glob("*.md")
)

# docs/flags.md's sections, and the scripts whose parsers each one's table documents
SCRIPTS = {
    "Every script": ("server.py", "client.py", "client1.py", "client2.py"),
    "server.py": ("server.py",),
    "The clients: client.py, client1.py, client2.py": ("client.py", "client1.py", "client2.py"),
    "The attack lab: the clients": ("client.py", "client1.py", "client2.py"),
}
FLAG = re.compile(r"`(--[a-z0-9-]+)[^`]*`")


def parser_of(script: str) -> argparse.ArgumentParser:
    return server_parser() if script == "server.py" else client_parser(script.removesuffix(".py"))


def shown_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each long flag --help shows (hidden aliases, help=SUPPRESS, left out), with its action."""
    return {
        option: action
        for action in parser._actions
        if action.help is not argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
        if option.startswith("--")
    }


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def flag_rows() -> dict[str, list[tuple[list[str], str]]]:
    """docs/flags.md's tables by section: each row's flags and its default cell."""
    rows: dict[str, list[tuple[list[str], str]]] = {}
    section = None
    for line in FLAGS_PAGE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| `--") and section is not None:
            flag_cell, default, *_ = cells(line)
            rows.setdefault(section, []).append((FLAG.findall(flag_cell), default))
    return rows


def test_every_section_of_the_flag_page_is_known():
    assert set(flag_rows()) == set(SCRIPTS)


@pytest.mark.parametrize("script", ["server.py", "client.py", "client1.py", "client2.py"])
def test_the_flag_page_lists_every_flag_a_script_has_and_no_other(script):
    documented = {
        flag
        for section, rows in flag_rows().items()
        if script in SCRIPTS[section]
        for flags, _ in rows
        for flag in flags
    }
    shown = shown_flags(parser_of(script))
    assert set(shown) - documented == set(), f"flags of {script} missing from docs/flags.md"
    only_elsewhere = {"--name"}  # client.py's alone; its row says so
    unknown = documented - set(shown) - (only_elsewhere if script != "client.py" else set())
    assert unknown == set(), f"docs/flags.md lists flags {script} does not have"


def literal(text: str):
    """A default as the page writes it, read as a value: a number, none/off, or one word;
    anything else (a rule, a formula, 'the server's') is not a literal (``...``)."""
    text = text.strip().strip("`")
    word = text.split(" ")[0].strip("`")
    if re.fullmatch(r"-?[0-9][0-9,]*(\.[0-9]+)?", word):
        return float(word.replace(",", ""))
    if word in ("none", "off"):
        return None
    if " " not in text:
        return text
    return ...


def test_the_flag_pages_defaults_are_the_parsers():
    """A row's default cell holds one value per flag (split at '; ', else ', '); each value
    that is a literal is the parser's default. A flag whose parser default is unset (None, or
    AUTO: resolved later by the run) is checked only for none/off."""
    checked = 0
    for section, rows in flag_rows().items():
        for flags, default in rows:
            parts = default.split("; ") if "; " in default else default.split(", ")
            if len(parts) != len(flags):
                continue
            for flag, part in zip(flags, parts, strict=True):
                value = literal(part)
                if value is ...:
                    continue
                for script in SCRIPTS[section]:
                    action = shown_flags(parser_of(script)).get(flag)
                    if action is None:  # --name on client1.py: the flag test's concern
                        continue
                    actual = action.default
                    if value is None:
                        assert actual in (None, False), (flag, script, actual)
                    elif actual is None or actual is AUTO:
                        continue  # resolved later; the page states the resolved value
                    elif isinstance(value, float):
                        assert float(actual) == value, (flag, script, actual, part)
                    elif isinstance(actual, str):
                        assert actual == value, (flag, script, actual, part)
                    else:
                        continue
                    checked += 1
    assert checked >= 20  # the check is not vacuous


def test_each_setup_field_of_the_server_window_is_a_server_flag():
    """The Setup tab's fields are named as the settings they fill, and each is the flag of
    the same name: a setting renamed cannot leave a field (or its caption) behind."""
    from common.gui.setup_fields import SETUP_ORDER, fields_for
    from common.server_config import ServerConfig

    flags = shown_flags(server_parser())
    for field in fields_for(ServerConfig().settings()):
        flag = f"--{field.name.replace('_', '-')}"
        assert flag in flags, (field.name, field.caption)
        assert flags[flag].dest == field.name, (field.name, flags[flag].dest)
    assert len(SETUP_ORDER) == len(set(SETUP_ORDER))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped,
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            base = slug(line.lstrip("#"))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert broken == []
