"""Check that the built HTML docs load nothing from the network.

Usage: ``python docs/check_offline.py docs/_build/html``. Exits 1 and lists every
resource that a browser would fetch from another host: ``src`` of scripts, images,
frames and media, ``<link href>`` other than plain hyperlinks (stylesheets, preloads,
icons), and ``url(...)``/``@import`` of stylesheets. Ordinary ``<a href>`` links are
allowed: following one is the reader's choice.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])\s*((?:https?:)?//[^'")\s]+)""")
# <link rel=...> values that only name a relation and fetch nothing.
LINK_RELS_NOT_FETCHED = {
    "canonical", "alternate", "author", "help", "license", "next", "prev", "search",
    "index", "bookmark", "external",
}  # fmt: skip


class _Finder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.remote: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "link":
            rels = set(a.get("rel", "").lower().split())
            if rels and rels <= LINK_RELS_NOT_FETCHED:
                return
            url = a.get("href", "")
            if REMOTE.match(url):
                self.remote.append(f"<link rel={a.get('rel')!r} href={url!r}>")
        for attr in ("src", "srcset", "data", "poster"):
            url = a.get(attr, "")
            if REMOTE.match(url):
                self.remote.append(f"<{tag} {attr}={url!r}>")
        for url in CSS_URL.findall(a.get("style", "")):
            self.remote.append(f"<{tag} style=url({url!r})>")

    def handle_data(self, data: str) -> None:
        if self.lasttag == "style":
            self.remote.extend(f"<style> url({u!r})" for u in CSS_URL.findall(data))


def remote_resources(root: Path) -> list[str]:
    """Every network resource that the pages and stylesheets under ``root`` load."""
    found = []
    for page in sorted(root.rglob("*.html")):
        finder = _Finder()
        finder.feed(page.read_text(encoding="utf-8", errors="replace"))
        found += [f"{page.relative_to(root)}: {r}" for r in finder.remote]
    for sheet in sorted(root.rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        found += [f"{sheet.relative_to(root)}: url({u!r})" for u in CSS_URL.findall(text)]
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    root = Path(argv[0])
    if not any(root.rglob("*.html")):
        print(f"no HTML under {root}: build the docs first", file=sys.stderr)
        return 2
    found = remote_resources(root)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} resources would be loaded from the network", file=sys.stderr)
        return 1
    pages = sum(1 for _ in root.rglob("*.html"))
    print(f"{pages} pages load nothing from the network")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
