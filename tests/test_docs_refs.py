"""Every section reference in the code lands on a heading of docs/dfl.md.

The code cites DFL's behaviour by section number ("docs/dfl.md §3.4", or a bare
section sign followed by the number). Whatever the prefix, the number must be a heading of docs/dfl.md
("## 3. ..." or "### 3.4 ..."), so a reader who follows the reference finds the fact. Ranges
("§5.2–5.4", "§3.2–§3.4") must exist at both ends and at every subsection in between.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "dfl.md"
SCANNED_DIRS = ("engine", "kernels", "bench", "scripts", "tests")
SCANNED_FILES = ("README.md",)
SUFFIXES = {".py", ".md"}

SIGN = "\u00a7"  # the section sign, spelled out so this file holds no reference of its own
NUM = r"\d+(?:\.\d+)?"
# a reference, optionally a range: "§3.4", "§ 3.4", "§2.5–2.7", "§3.2–§3.4", "§6.1-6.2"
REF = re.compile(rf"{SIGN}\s?({NUM})(?:\s?[\u2013-]\s?{SIGN}?\s?({NUM}))?")
# a reference that names some other document ("style.md §2") is not ours
OTHER_DOC = re.compile(r"([\w./-]+\.md)\s*$")
OUR_DOCS = ("docs/dfl.md", "dfl.md", "dfl_saehd.md")
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s")


def doc_sections(text: str) -> set[str]:
    """Section numbers that are headings of the doc: "## 3. Losses" -> "3", "### 12.10 ..." -> "12.10"."""
    return {m.group(1) for line in text.splitlines() if (m := HEADING.match(line))}


def expand(first: str, last: str | None) -> list[str]:
    """A reference or range as the list of section numbers it covers."""
    if last is None or last == first:
        return [first]
    a, b = first.split("."), last.split(".")
    if len(a) == 2 and len(b) == 2 and a[0] == b[0] and int(a[1]) < int(b[1]):
        return [f"{a[0]}.{i}" for i in range(int(a[1]), int(b[1]) + 1)]
    return [first, last]


def references(text: str) -> list[tuple[int, str]]:
    """(line number, section) for every section reference to our doc in `text`."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in REF.finditer(line):
            other = OTHER_DOC.search(line[:m.start()])
            if other and not other.group(1).endswith(OUR_DOCS):
                continue
            out.extend((lineno, sec) for sec in expand(m.group(1), m.group(2)))
    return out


def scanned_files() -> list[Path]:
    files = [ROOT / f for f in SCANNED_FILES if (ROOT / f).is_file()]
    for d in SCANNED_DIRS:
        base = ROOT / d
        if base.is_dir():
            files += sorted(p for p in base.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                            and "__pycache__" not in p.parts)
    files += sorted(p for p in (ROOT / "docs").glob("*.md"))  # the doc's own cross-references too
    return files


def test_parsers_on_examples():
    assert doc_sections("## 1. SAEHD options\n### 2.1 Layer\n### 12.10 True face\n#### 3.4.1 x\ntext 4.5\n") \
        == {"1", "2.1", "12.10", "3.4.1"}
    s = SIGN
    refs = [sec for _, sec in references(
        f"spec {s}3.4 term 5; docs/dfl.md {s}12.10; {s}2.5\u20132.7; {s}3.2\u2013{s}3.4; {s}6.1-6.2; "
        f"{s} 9.1/{s}9.2; quirk {s}12.1.\nsee style.md {s}2 and {s}10.2 step 10.2")]
    assert refs == ["3.4", "12.10", "2.5", "2.6", "2.7", "3.2", "3.3", "3.4", "6.1", "6.2", "9.1", "9.2",
                    "12.1", "10.2"]


def test_every_cited_section_is_a_heading_of_docs_dfl_md():
    sections = doc_sections(DOC.read_text(encoding="utf-8"))
    missing, n = [], 0
    for path in scanned_files():
        for lineno, sec in references(path.read_text(encoding="utf-8", errors="replace")):
            n += 1
            if sec not in sections:
                missing.append(f"{path.relative_to(ROOT)}:{lineno}: {SIGN}{sec}")
    assert n > 100, f"only {n} section references found: is the scan looking in the right place?"
    assert not missing, (f"{len(missing)} reference(s) to sections docs/dfl.md does not have:\n  "
                         + "\n  ".join(missing))


def test_doc_headings_are_unique_and_cover_every_top_section():
    numbers = [m.group(1) for line in DOC.read_text(encoding="utf-8").splitlines() if (m := HEADING.match(line))]
    assert len(numbers) == len(set(numbers)), "a section number appears twice as a heading"
    assert {str(i) for i in range(1, 13)} <= set(numbers)


def test_references_name_docs_dfl_md_not_the_private_spec():
    """A reference written "spec", section sign, number points at a document that is not in the repository
    (the DFL specification docs/dfl.md was written from); the reader must be sent to docs/dfl.md."""
    old = re.compile(rf"\b[Ss]pec\s?{SIGN}")
    assert old.search(f"(spec {SIGN}3.4)") and old.search(f"Spec{SIGN}5.7") and not old.search(f"dfl.md {SIGN}3.4")
    stale = [f"{p.relative_to(ROOT)}:{i}" for p in scanned_files()
             for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if old.search(line)]
    assert not stale, "say docs/dfl.md, not spec:\n  " + "\n  ".join(stale)
