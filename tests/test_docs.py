"""The documents tell the truth about the code and the evidence: each `path:line` `symbol` citation of the
methods' fidelity table names a line that holds its symbol; nothing refers outside the repository."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"`((?:mmtm|loaders|cli)/[\w/]+\.py):(\d+)` `(\w+)`")


def test_every_code_citation_of_the_methods_table_names_its_line():
    text = (ROOT / "docs" / "methods" / "README.md").read_text()
    cited = CITATION.findall(text)
    assert len(cited) >= 20
    wrong = [f"{path}:{line} {symbol}" for path, line, symbol in cited
             if symbol not in (ROOT / path).read_text().splitlines()[int(line) - 1]]
    assert wrong == []


def test_nothing_refers_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = [f for f in files if f != "tests/test_docs.py" and (ROOT / f).is_file()
               and f.endswith((".py", ".md", ".json", ".toml", ".cfg"))
               and ("../shared" in (ROOT / f).read_text(errors="replace") or
                    re.search(r"\bSPEC\b", (ROOT / f).read_text(errors="replace")))]
    assert outside == []


STAT = re.compile(r"[+\-]?\d+\.\d+(?: ± \d+\.\d+)? \[[+\-]?\d+\.\d+, [+\-]?\d+\.\d+\]")


def results_section() -> str:
    return (ROOT / "docs" / "results.md").read_text().replace("−", "-")


def readme_summary() -> str:
    text = (ROOT / "README.md").read_text().replace("−", "-")
    return text[text.index("## What the results say"):text.index("## Your own data")]


def test_the_readme_results_are_the_committed_comparisons():
    """Every table row and every interval docs/results.md (and the README's summary of it) quotes is in a committed
    comparison.md (which the next test rebuilds from the committed evidence): no number is typed by hand."""
    comparisons = "\n".join(p.read_text() for p in (ROOT / "docs").rglob("comparison.md")).replace("−", "-")
    rows = [line for line in results_section().splitlines()
            if line.startswith("| ") and not line.startswith(("| policy |", "| comparison |", "| view alone |",
                                                              "| d_speed |", "| cell |"))]
    assert rows, "the README quotes no result rows"
    assert [r for r in rows if r not in comparisons.splitlines()] == []
    quoted = STAT.findall(results_section() + readme_summary())
    assert len(quoted) >= 20
    assert [q for q in quoted if q not in comparisons] == []


def test_every_committed_comparison_is_rebuilt_byte_for_byte_from_its_evidence(tmp_path, figures_not_drawn):
    from helpers import invoke

    folders = sorted(p.parent for p in (ROOT / "docs").rglob("comparison.json") if (p.parent / "runs").is_dir())
    assert folders
    for folder in folders:
        out = tmp_path / folder.name
        r = invoke("compare", "--collect", folder / "runs", "--out", out)
        assert r.exit_code == 0, r.output
        for name in ("comparison.json", "comparison.md"):
            assert (out / name).read_bytes() == (folder / name).read_bytes(), (folder, name)


@pytest.mark.slow
def test_every_readme_command_runs_in_order_as_written(tmp_path):
    """benchmarks/readme_commands.py: each README command, shrunk where it trains, in a scratch folder."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_commands.py"), "--keep", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"^all \d+ README commands run passed$", r.stdout, re.M), r.stdout
