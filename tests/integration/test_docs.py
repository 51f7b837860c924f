"""The README stays one screen of essentials, and the docs it points to hold together.

`mkdocs build --strict` (in .ci/run) checks the site; these checks need no
mkdocs, so they run with the tests: the README's length and first screen,
relative links in README.md and docs/ (on GitHub as on the site), every page
in the nav, and every public name in the API reference.
"""

import re
from pathlib import Path

import pytest
import yaml

import fleche_redis

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
PAGES = sorted(DOCS.rglob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """Targets of Markdown links that are not URLs or in-page anchors (code blocks skipped)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z]+:|#", t)]


def test_the_readme_is_short_and_its_first_screen_has_the_two_commands():
    lines = README.splitlines()
    assert len(lines) < 250
    first_screen = lines[:25]
    for command in ("python -m fleche_redis demo", "python -m pytest"):
        assert any(line.startswith(command + " ") for line in first_screen), command


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_reach_a_file(page):
    broken = [
        target
        for target in relative_links(page.read_text())
        if not (page.parent / target.split("#")[0]).resolve().exists()
    ]
    assert broken == []


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def paths(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from paths(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from paths(value)

    assert config["docs_dir"] == "docs"
    assert sorted(paths(config["nav"])) == sorted(str(p.relative_to(DOCS)) for p in PAGES)


def test_every_public_name_has_an_api_entry():
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M))
    modules = {"maintenance": "fleche_redis.admin.maintenance", "metrics": "fleche_redis.metrics"}
    missing = [
        name
        for name in fleche_redis.__all__
        if modules.get(name, f"fleche_redis.{name}") not in documented
    ]
    assert missing == []
