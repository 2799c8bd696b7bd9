"""The repository stands alone: nothing cites a document outside it, every cited docs/ file exists,
and the generated tables cite only docs/."""

import re

from conftest import ROOT
from pfedhn_jax import report

OUTSIDE = re.compile(r"REFERENCE\.md|DESIGN\.md|shared/data/README|shared/REFERENCE")
CITED = re.compile(r"docs/[A-Za-z0-9_\-]+\.md")


def repo_texts():
    for folder in ("pfedhn_jax", "scripts", "benchmarks", "examples", "docs", "tests"):
        for p in (ROOT / folder).rglob("*"):
            if p.suffix in (".py", ".md", ".sh") and "out" not in p.parts:
                yield p, p.read_text(errors="replace")
    yield ROOT / "README.md", (ROOT / "README.md").read_text()


def test_no_citation_leaves_the_repository():
    bad = [str(p.relative_to(ROOT)) for p, text in repo_texts()
           if OUTSIDE.search(text) and p.name != "test_docs.py"]
    assert not bad, f"cite docs/ instead of a document outside the repository: {bad}"


def test_cited_docs_exist():
    missing = {m for _, text in repo_texts() for m in CITED.findall(text) if not (ROOT / m).is_file()}
    assert not missing, missing


def test_generated_table_cites_only_the_repository():
    text = report.render_markdown([], report.schedule_note({}, quick=True))
    assert "docs/reference.md" in text and not OUTSIDE.search(text)
