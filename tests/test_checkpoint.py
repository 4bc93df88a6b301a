import os
import pickle

import pytest
import torch

from mmtm.training.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from mmtm.loaders.errors import UserError


def test_round_trip_holds_tensors_and_plain_data(tmp_path):
    ckpt = {"model": {"w": torch.arange(3.0)}, "config": {"lr": 0.1}, "rng": {"torch": torch.get_rng_state()}}
    save_checkpoint(ckpt, tmp_path / "last.pt")
    back = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(back["model"]["w"], ckpt["model"]["w"]) and back["config"] == {"lr": 0.1}


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "config": {"v": 1}}, path)

    def crash(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(path, crash)
    assert load_checkpoint(path)["config"] == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"model": _RunsCode(), "config": {}}, f)
    with pytest.raises(UserError, match="not a readable mmtm checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_foreign_or_missing_file(tmp_path):
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an mmtm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
