"""The Python API (docs/api.md): every name `mmtm` exports resolves and is documented, `import mmtm` stays cheap,
and the page's examples run as written, in order, on their tiny data."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mmtm

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"


def test_every_exported_name_resolves_and_is_on_the_page():
    text = PAGE.read_text()
    for name in mmtm.__all__:
        assert getattr(mmtm, name) is not None, name
        assert re.search(rf"\b{name}\b", text), f"docs/api.md does not mention {name}"
    with pytest.raises(AttributeError):
        mmtm.no_such_name  # noqa: B018


def test_import_mmtm_loads_no_torch():
    code = "import sys, mmtm; print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_pages_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102
    data = tmp_path / "mine" / "data"
    assert mmtm.open_dataset(data).meta["num_views"] == 2
    run = tmp_path / "mine" / "runs" / "balanced"
    assert (run / "cur.json").is_file() and (tmp_path / "mine" / "report" / "summary.md").is_file()
    assert math.isfinite(namespace["last"]["d_speed"])
    # the last block's own network: a finite d_speed and the three CUR numbers
    assert math.isfinite(namespace["meter"].values()["d_speed"])
    assert set(namespace["cur"]) == {"u_m1_given_m0", "u_m0_given_m1", "d_util"}
    assert all(math.isfinite(v) for v in namespace["cur"].values())
