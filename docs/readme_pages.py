"""Split the README into the guide's pages: one page per ``## `` section, written into
``docs/_generated/guide/`` (git ignores it), so the README stays the one source of the guide."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def slug(title: str) -> str:
    """``"PPCA, EM and VAEs on one scale"`` -> ``"ppca-em-and-vaes-on-one-scale"``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The README's introduction (before the first ``## ``) and its (title, body) sections."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    intro, rest = parts[0], parts[1:]
    return intro, [(rest[i].strip(), rest[i + 1]) for i in range(0, len(rest), 2)]


def promote(body: str) -> str:
    """One heading level up (``###`` -> ``##``), outside fenced code blocks."""
    out, fenced = [], False
    for line in body.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append(line[1:] if not fenced and line.startswith("###") else line)
    return "\n".join(out)


def write(out: Path) -> list[str]:
    """Write ``intro.md`` and one page per section into ``out``; return the page names."""
    intro, parts = sections((ROOT / "README.md").read_text())
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for title, body in parts:
        name = slug(title)
        page = f"# {title}\n{promote(body)}\n"
        page = page.replace("](docs/", "](../../")  # README links, from docs/_generated/guide/
        path = out / f"{name}.md"
        if not path.exists() or path.read_text() != page:  # unchanged pages keep their mtime
            path.write_text(page)
        names.append(name)
    return names
