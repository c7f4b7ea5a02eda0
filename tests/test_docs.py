"""The documentation: a short front page, every setting of configs.py documented, and relative links
that lead to files that exist. Plain text checks; nothing is trained or loaded."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import configs  # noqa: E402

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # ](path), ](path#anchor), ](path "title")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)  # fenced blocks and inline code hold no links


def pages():
    return [README, *sorted(DOCS.glob("*.md"))]


def public_settings():
    return sorted(name for name in vars(configs) if name.isupper() and not name.startswith("_"))


def relative_links(text):
    """The link targets of a markdown text that point into the repository: no web links, no
    links to a section of the same page."""
    for target in LINK.findall(CODE.sub("", text)):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        yield target


def test_readme_is_a_short_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, at most {MAX_README_LINES}: move the details to docs/")


def test_every_setting_is_documented():
    assert public_settings(), "configs.py defines no settings"
    table = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [name for name in public_settings() if f"`{name}`" not in table]
    assert not missing, f"settings of configs.py missing from docs/configuration.md: {missing}"


def test_relative_links_lead_to_files():
    assert DOCS.is_dir()
    broken = []
    for page in pages():
        for target in relative_links(page.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_link_finder_sees_links():
    """The link check finds what it should: file links with and without a section, and images; it
    skips web links, links within a page, and code."""
    text = ("[a](docs/usage.md) [b](data.md#qm9) ![c](../results/x.png) [d](https://example.org) "
            "[e](#usage) `[f](not_a_link.md)`\n```\n[g](code.md)\n```\n[h](page.md \"title\")")
    assert list(relative_links(text)) == ["docs/usage.md", "data.md#qm9", "../results/x.png", "page.md"]
