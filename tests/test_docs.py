"""The documents tell the truth about the code and the evidence: each `path:line` `symbol` citation of the
methods' fidelity table names a line that holds its symbol; nothing refers outside the repository."""
import re
import subprocess
from pathlib import Path

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
