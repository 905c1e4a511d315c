"""The documentation: the docs/ site builds strictly, and the README stays short and links every page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"


def nav_pages() -> list[str]:
    """The Markdown files listed in mkdocs.yml's nav (paths relative to docs/), nested sections included."""
    config = yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))
    assert config.get("docs_dir", "docs") == "docs"
    pages: list[str] = []

    def walk(item) -> None:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, list):
            for entry in item:
                walk(entry)
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)

    walk(config["nav"])
    return [page for page in pages if page.endswith(".md")]


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks of a Markdown text, in order, read the way .ci/run reads them."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None and line == "```bash":
            current = []
        elif current is not None and line == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pages = nav_pages()
    assert "index.md" in pages
    for page in pages:
        stem = page[: -len(".md")]
        built = site / "index.html" if stem == "index" else site / stem / "index.html"
        assert built.is_file(), f"{page} was not built to {built.relative_to(site)}"


def test_every_docs_page_is_in_the_nav():
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert on_disk, "docs/ holds no pages"
    assert sorted(nav_pages()) == on_disk


def test_readme_is_short_and_keeps_the_test_command():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 160, "README.md is the pitch and a tour; the manual belongs in docs/"
    assert text.startswith("# powerpipe")
    blocks = bash_blocks(text)
    assert len(blocks) >= 2
    assert "run_all.py" in blocks[0]
    assert "pytest" in blocks[1], ".ci/run runs the README's second bash block as the test command"
    assert "requirements-dev.txt" in blocks[1]
    for page in ("index.md", "testing.md"):  # the manual shows the same command
        assert blocks[1] in bash_blocks((ROOT / "docs" / page).read_text(encoding="utf-8")), page


def test_every_docs_page_is_linked_from_the_readme():
    text = README.read_text(encoding="utf-8")
    targets = set(re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", text))
    for page in nav_pages():
        assert f"docs/{page}" in targets, f"README.md does not link docs/{page}"


def test_readme_links_to_files_exist():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http://, https://, mailto:
            continue
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
