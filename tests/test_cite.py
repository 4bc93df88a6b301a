"""Something to cite and reuse: a LICENSE, and a CITATION.cff that parses and names the software, the paper it
replicates (with its PMLR and arXiv links), the official code and the datasets. (`cffconvert --validate` checks it
against the full schema; it is not a test dependency.)"""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_license_is_mit_by_the_mmtm_authors():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the mmtm authors" in text


def test_citation_cff_parses_and_references_the_paper_its_code_and_the_data():
    yaml = pytest.importorskip("yaml", reason="PyYAML reads CITATION.cff")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors", "type", "license", "version"):
        assert cff.get(key), key
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert all(isinstance(a, dict) and (a.get("name") or a.get("family-names")) for a in cff["authors"])
    refs = cff["references"]
    assert all(r.get("type") and r.get("title") and r.get("authors") for r in refs)
    paper = next(r for r in refs if r["title"].startswith("Characterizing and overcoming the greedy nature"))
    links = [paper["url"], *(i["value"] for i in paper.get("identifiers", []))]
    assert "https://proceedings.mlr.press/v162/wu22d.html" in links and "https://arxiv.org/abs/2202.05306" in links
    urls = " ".join(str(r.get("url", "")) + str(r.get("repository-code", "")) for r in refs)
    assert "github.com/nyukat/greedy_multimodal_learning" in urls
    assert "modelnet.cs.princeton.edu" in urls and "mvcnn" in urls
    assert cff["version"] == _project_version()


def _project_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("pyproject.toml has no version")
