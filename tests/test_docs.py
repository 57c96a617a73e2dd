"""The user docs stay true to the repository.

Every relative link and image of README.md and docs/*.md resolves to a file of the repository (and a
``#fragment`` into a page to one of its headings); every ``arcface ...`` command in their bash blocks
parses with the real command-line parser; each verb of the README's quickstart answers ``--help``;
and the README's install commands are the ones `.ci/run` runs. The checkers are also run on broken
input, so a dead link or a renamed flag is reported, not passed over.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from arcface.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
BASH_BLOCK = re.compile(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def _prose(markdown: str) -> str:
    """The text outside code: fenced blocks and inline code spans removed (links there are examples)."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lowercase, punctuation removed, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a page offers, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path, markdown: str, root: Path = REPO_ROOT) -> list[str]:
    """'page: target (why)' for each relative link or image that does not resolve inside ``root``."""
    problems = []
    for target in LINK.findall(_prose(markdown)):
        if target.startswith(EXTERNAL):
            continue
        path_part, _, fragment = target.partition("#")
        where = f"{page.name}: {target}"
        if not path_part:  # a link into the page itself
            resolved, text = page, markdown
        else:
            resolved = (page.parent / path_part).resolve()
            try:
                resolved.relative_to(root.resolve())
            except ValueError:
                problems.append(f"{where} (outside the repository)")
                continue
            if not resolved.is_file():
                problems.append(f"{where} (no such file)")
                continue
            text = resolved.read_text(encoding="utf-8") if resolved.suffix == ".md" else None
        if fragment and text is not None and fragment not in anchors(text):
            problems.append(f"{where} (no heading #{fragment} in {resolved.name})")
    return problems


def arcface_commands(markdown: str) -> list[tuple[int, list[str]]]:
    """(line number, argv after `arcface`) of every arcface command in the page's bash blocks."""
    commands = []
    for block in BASH_BLOCK.finditer(markdown):
        first_line = markdown.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).split("\n")
        index = 0
        while index < len(lines):
            start = index
            command = lines[index]
            while command.endswith("\\") and index + 1 < len(lines):  # continuation lines
                index += 1
                command = command[:-1] + " " + lines[index]
            index += 1
            for segment in re.split(r"&&|\|\||;|\|", command):
                try:
                    tokens = shlex.split(segment, comments=True)
                except ValueError as error:  # a quoted `|` of another tool's line (awk) splits badly: not ours
                    if segment.split() and Path(segment.split()[0]).name == "arcface":
                        raise AssertionError(f"line {first_line + start}: cannot split {segment!r} ({error})") from error
                    continue
                if tokens and Path(tokens[0]).name == "arcface":
                    commands.append((first_line + start, tokens[1:]))
    return commands


def unparsable(page_name: str, markdown: str) -> list[str]:
    """'page:line: command (argparse's message)' for each arcface command the real parser refuses."""
    problems = []
    for line, argv in arcface_commands(markdown):
        parser = build_parser()
        messages: list[str] = []
        _record_errors(parser, messages)
        try:
            parser.parse_args(argv)
        except SystemExit as stop:
            if stop.code not in (0, None):
                problems.append(f"{page_name}:{line}: arcface {shlex.join(argv)} ({'; '.join(messages)})")
    return problems


def _record_errors(parser, messages: list[str]) -> None:
    """Make a parser and its verbs' parsers record their message and exit 2, without printing usage."""

    def error(message: str) -> None:
        messages.append(message)
        raise SystemExit(2)

    parser.error = error
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for sub in action.choices.values():
            _record_errors(sub, messages)


def quickstart_block(readme: str) -> str:
    """The first bash block under the README's Quickstart heading."""
    section = re.search(r"^## Quickstart.*?(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Quickstart' section"
    block = BASH_BLOCK.search(section.group(0))
    assert block, "the Quickstart section has no bash block"
    return block.group(0)


def verb_words(argv: list[str]) -> list[str]:
    """The verb (and sub-verb, as in `data download`) at the start of an argv."""
    words = []
    for token in argv[:2]:
        if not re.fullmatch(r"[a-z][a-z-]*", token):
            break
        words.append(token)
    return words


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_images_resolve(page):
    assert broken_links(page, page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_arcface_commands_parse(page):
    assert unparsable(page.name, page.read_text(encoding="utf-8")) == []


def test_quickstart_verbs_answer_help(capsys):
    commands = arcface_commands(quickstart_block((REPO_ROOT / "README.md").read_text(encoding="utf-8")))
    verbs = [verb_words(argv) for _, argv in commands]
    # the quickstart registers a model, then walks through these four, in this order
    assert [words[0] for words in verbs] == ["models", "verify", "embed", "train", "lfw"]
    for words in verbs:
        with pytest.raises(SystemExit) as stop:
            main([*words, "--help"])
        assert stop.value.code == 0, words
        assert capsys.readouterr().out.startswith(f"usage: arcface {' '.join(words)}"), words


def test_install_commands_match_ci():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_test_command = re.search(r"readme_test_command\(\) \{\n\s*(.+?)\n\}", ci).group(1).strip()
    assert f"\n{ci_test_command}\n" in readme
    assert "\npython3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e . && .venv/bin/arcface lfw\n" in readme


# --- the checkers themselves catch what they are for ---


def test_checker_reports_a_broken_link_image_and_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A section\n")
    (tmp_path / "docs" / "figure.png").write_bytes(b"png")
    markdown = (
        "# Page\n\n[ok](other.md) [ok too](other.md#a-section) ![ok](figure.png) [web](https://example.org/x)\n"
        "[self](#page) `[in code](missing_in_code.md)`\n\n"
        "```bash\ncat [not a link](missing_in_block.md)\n```\n\n"
        "[gone](missing.md) ![gone](lost.png) [bad anchor](other.md#no-such-section) [up](../../outside.md)\n"
    )
    page.write_text(markdown)
    problems = broken_links(page, markdown, root=tmp_path)
    assert problems == [
        "page.md: missing.md (no such file)",
        "page.md: lost.png (no such file)",
        "page.md: other.md#no-such-section (no heading #no-such-section in other.md)",
        "page.md: ../../outside.md (outside the repository)",
    ]


def test_checker_reports_commands_that_do_not_parse():
    markdown = (
        "```bash\n"
        "arcface train configs/smoke.yaml --out runs/smoke   # fine\n"
        "arcface verify a.jpg b.jpg --modle m.onnx\n"
        "arcface data download lfw --out data/lfw && arcface data download mnist --out data/x\n"
        "arcface embed a.jpg \\\n    --model m.onnx --no-such-flag\n"
        "torchrun --nproc_per_node 2 train.py   # not ours\n"
        "```\n"
    )
    problems = unparsable("page.md", markdown)
    assert len(problems) == 3, problems
    assert problems[0].startswith("page.md:3: arcface verify") and "--modle" in problems[0]
    assert problems[1].startswith("page.md:4: arcface data download mnist") and "mnist" in problems[1]
    assert problems[2].startswith("page.md:5: arcface embed") and "--no-such-flag" in problems[2]


def test_slug_follows_github():
    assert slug("CPU reference recipe on LFW (`arcface lfw`)") == "cpu-reference-recipe-on-lfw-arcface-lfw"
    assert slug("Quickstart (5 minutes)") == "quickstart-5-minutes"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
