"""The docs hold together: every relative link and image in the top-level Markdown files
(README.md, CHANGELOG.md) and docs/*.md resolves to a file of the repository, and a link to
a heading of a Markdown page names a heading that exists (GitHub's anchor for it); every
`make <target>` they name is a target of the Makefile; `make help` gives every .PHONY
target a line; the README stays within 200 lines. External links are not followed.

Each checker returns its problems as lines; the tests of planted mistakes run the same
checkers on a made-up repository, so none of them can pass by finding nothing."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from helpers import REPO
from markdown_it import MarkdownIt

README_MAX_LINES = 200

# `make` followed by its variable assignments (ARGS=... may also come after the target)
MAKE_CALL = re.compile(r"(?<![\w./-])make((?:\s+[A-Za-z_][A-Za-z0-9_]*=\S+)*)\s+([a-z][\w.-]*)")
RULE = re.compile(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?![=:])", re.M)


def doc_files(root: Path) -> list[Path]:
    """The Markdown files a reader of the repository sees: the top level's and docs/."""
    return sorted(root.glob("*.md")) + sorted((root / "docs").glob("*.md"))


def parse(path: Path) -> list:
    return MarkdownIt("commonmark").enable("table").parse(path.read_text(encoding="utf-8"))


def inline_text(inline) -> str:
    """The text of an inline token as GitHub renders it (markup dropped, code kept)."""
    return "".join(
        child.content
        for child in inline.children or ()
        if child.type in ("text", "code_inline", "html_inline")
    )


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _),
    spaces to hyphens."""
    text = text.strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 for repeated ones."""
    tokens = parse(path)
    seen: dict[str, int] = {}
    out = set()
    for i, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        base = slug(inline_text(tokens[i + 1]))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image of a Markdown file, code excluded."""
    out = []
    line = 0
    for token in parse(path):
        if token.map:
            line = token.map[0] + 1
        for child in token.children or ():
            if child.type == "link_open":
                out.append((line, child.attrs.get("href", "")))
            elif child.type == "image":
                out.append((line, child.attrs.get("src", "")))
    return out


def check_links(root: Path, files: list[Path]) -> list[str]:
    """A line per relative link or image that does not resolve, or names a missing heading."""
    root = root.resolve()
    problems = []
    for path in files:
        name = path.relative_to(root)
        for line, href in links(path):
            parts = urlsplit(href)
            if parts.scheme or parts.netloc:
                continue  # external (http, https, mailto): not followed
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            where = f"{name}:{line}: {href}"
            if not target.is_relative_to(root):
                problems.append(f"{where}: points outside the repository")
            elif not target.exists():
                problems.append(f"{where}: no such file")
            elif parts.fragment and target.suffix == ".md":
                if parts.fragment not in anchors(target):
                    problems.append(
                        f"{where}: no heading #{parts.fragment} in {target.relative_to(root)}"
                    )
    return problems


def make_calls(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every `make <target>` in the code of a Markdown file: code spans
    and code blocks, where commands are written."""
    out = []
    line = 0
    for token in parse(path):
        if token.map:
            line = token.map[0] + 1
        codes = [token.content] if token.type in ("fence", "code_block") else []
        codes += [c.content for c in token.children or () if c.type == "code_inline"]
        for code in codes:
            out += [(line, m.group(2)) for m in MAKE_CALL.finditer(code)]
    return out


def makefile_text(root: Path) -> str:
    return (root / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")


def makefile_targets(root: Path) -> set[str]:
    """The explicit targets of the Makefile's rules (special targets such as .PHONY left out)."""
    return {
        target
        for match in RULE.finditer(makefile_text(root))
        for target in match.group(1).split()
        if not target.startswith(".")
    }


def phony_targets(root: Path) -> set[str]:
    return {
        target
        for match in re.finditer(r"^\.PHONY[ \t]*:(.*)$", makefile_text(root), re.M)
        for target in match.group(1).split()
    }


def check_make_targets(root: Path, files: list[Path]) -> list[str]:
    """A line per `make <target>` the docs name that the Makefile does not have."""
    targets = makefile_targets(root)
    return [
        f"{path.relative_to(root)}:{line}: make {target}: no such target in the Makefile"
        for path in files
        for line, target in make_calls(path)
        if target not in targets
    ]


def help_lines(root: Path) -> dict[str, str]:
    """`make help`'s output as {target: its description}."""
    proc = subprocess.run(
        ["make", "--no-print-directory", "-s", "-C", str(root), "help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {}
    for ln in proc.stdout.splitlines():
        if ln.startswith(" ") and ln.strip():
            target, _, text = ln.strip().partition(" ")
            lines[target] = text.strip()
    return lines


def check_help(root: Path) -> list[str]:
    """A line per .PHONY target that `make help` does not list with a description."""
    listed = help_lines(root)
    return [
        f"make help: no line for .PHONY target {target!r} (add '## text' to its rule)"
        for target in sorted(phony_targets(root))
        if not listed.get(target)
    ]


def check_readme_length(root: Path) -> list[str]:
    n = len((root / "README.md").read_text(encoding="utf-8").splitlines())
    return [f"README.md: {n} lines, more than {README_MAX_LINES}"] if n > README_MAX_LINES else []


# --- the repository's docs ----------------------------------------------------------------


def test_the_docs_are_the_readme_the_changelog_and_docs():
    names = {str(p.relative_to(REPO)) for p in doc_files(REPO)}
    assert {"README.md", "CHANGELOG.md", "docs/pipeline.md", "docs/rsna-data.md"} <= names


def test_every_relative_link_and_image_resolves():
    problems = check_links(REPO, doc_files(REPO))
    assert not problems, "\n".join(problems)


def test_every_make_target_the_docs_name_exists():
    assert len(make_calls(REPO / "README.md")) >= 3  # the check sees the README's commands
    problems = check_make_targets(REPO, doc_files(REPO))
    assert not problems, "\n".join(problems)


def test_make_help_gives_every_phony_target_a_line():
    assert {"help", "repro", "test"} <= phony_targets(REPO) <= makefile_targets(REPO)
    problems = check_help(REPO)
    assert not problems, "\n".join(problems)


def test_make_alone_is_make_help():
    def run(*goal: str) -> str:
        return subprocess.run(
            ["make", "--no-print-directory", "-s", "-C", str(REPO), *goal],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout

    assert run() == run("help")


def test_the_readme_is_at_most_200_lines():
    problems = check_readme_length(REPO)
    assert not problems, problems[0]


# --- the checkers catch planted mistakes ----------------------------------------------------


def planted(tmp_path: Path) -> Path:
    """A made-up repository: a README with good and bad links and make targets, a docs page,
    and this Makefile plus an undocumented .PHONY target."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Some `code` here, and more!\n\nBack to [the README](../README.md).\n"
    )
    (tmp_path / "docs" / "picture.png").write_bytes(b"\x89PNG")
    (tmp_path / "README.md").write_text(
        "# Planted\n\n"
        "[good](docs/page.md) and [good anchor](docs/page.md#some-code-here-and-more) and\n"
        "[own heading](#planted) and [external](https://example.org/missing.md).\n\n"
        "![good image](docs/picture.png)\n\n"
        "[broken](docs/missing.md) and [bad anchor](docs/page.md#no-such-heading)\n\n"
        "![broken image](docs/missing.png)\n\n"
        "| a table | [broken in a table](nowhere.md) |\n|---|---|\n| x | y |\n\n"
        "Run `make repro`, then `make no-such-target`; prose may make anything.\n\n"
        "```bash\nmake ARGS=-v ui\nmake another-missing ARGS=--help\n```\n"
        "`[not a link](in-code.md)`\n"
    )
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    (tmp_path / "Makefile").write_text(
        makefile + "\n.PHONY: undocumented\nundocumented:\n\t@true\n", encoding="utf-8"
    )
    return tmp_path


def test_a_broken_link_image_or_anchor_is_reported(tmp_path):
    root = planted(tmp_path)
    problems = check_links(root, doc_files(root))
    joined = "\n".join(problems)
    assert "README.md:8: docs/missing.md: no such file" in joined
    assert "docs/page.md#no-such-heading: no heading #no-such-heading in docs/page.md" in joined
    assert "README.md:10: docs/missing.png: no such file" in joined
    assert "nowhere.md: no such file" in joined
    # the good ones, the external one and the one in code are not
    assert len(problems) == 4, joined


def test_a_link_outside_the_repository_is_reported(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "outside.md").write_text("# Outside\n")
    (tmp_path / "repo" / "README.md").write_text("[out](../outside.md)\n")
    problems = check_links(tmp_path / "repo", doc_files(tmp_path / "repo"))
    assert problems == ["README.md:1: ../outside.md: points outside the repository"]


def test_a_make_target_the_makefile_lacks_is_reported(tmp_path):
    root = planted(tmp_path)
    problems = check_make_targets(root, doc_files(root))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "make no-such-target: no such target in the Makefile",
        "make another-missing: no such target in the Makefile",
    ], problems


def test_a_phony_target_without_a_help_line_is_reported(tmp_path):
    root = planted(tmp_path)
    assert check_help(root) == [
        "make help: no line for .PHONY target 'undocumented' (add '## text' to its rule)"
    ]


def test_a_long_readme_is_reported(tmp_path):
    (tmp_path / "README.md").write_text("line\n" * README_MAX_LINES)
    assert check_readme_length(tmp_path) == []
    (tmp_path / "README.md").write_text("line\n" * (README_MAX_LINES + 1))
    assert check_readme_length(tmp_path) == [f"README.md: 201 lines, more than {README_MAX_LINES}"]


def test_github_anchors():
    assert slug("Training recipes (from scratch, no pretrained weights)") == (
        "training-recipes-from-scratch-no-pretrained-weights"
    )
    assert slug("3. A team MLflow server") == "3-a-team-mlflow-server"
    assert slug("Does the loader keep up?") == "does-the-loader-keep-up"
    assert slug("gpu-check on the CPU") == "gpu-check-on-the-cpu"
