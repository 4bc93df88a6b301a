"""One spelling per idea across commands: integer lists take ranges everywhere, a view pair is `0,6` everywhere."""
import json

import pytest

from cli.values import int_list, view_pair
from helpers import invoke
from loaders.errors import UserError
from mmtm.compare import parse_axes


def test_integer_lists_take_ranges_and_single_values():
    assert int_list("0-3,7", "--seeds") == [0, 1, 2, 3, 7]
    assert int_list("0-9", "--seeds") == list(range(10))
    assert int_list("8,64", "--batch-size", least=2) == [8, 64]
    for bad in ("3-1", "0-2,1", "a-b", "-1", "1--2", ""):
        with pytest.raises(UserError):
            int_list(bad, "--seeds")


def test_compare_takes_a_seed_range(synthetic_data, tmp_path):
    """`--seeds 0-1` means seeds 0 and 1 (the check stops at the unknown policy, before anything is trained)."""
    r = invoke("compare", "--data", synthetic_data, "--out", tmp_path / "c", "--seeds", "0-1", "--policies", "nope")
    assert r.exit_code == 2 and "seeds" not in r.output and "nope" in r.output, r.output
    r = invoke("compare", "--data", synthetic_data, "--out", tmp_path / "c", "--seeds", "1-0")
    assert r.exit_code == 2 and "--seeds" in r.output and "0-9" in r.output, r.output
    assert not (tmp_path / "c").exists()


def test_train_and_bench_loader_spell_a_view_pair_alike(make_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("mmtm.bench.loader._MIN_SECONDS", 0.01)
    data = make_dataset(tmp_path, size=16)
    r = invoke("bench", "loader", "--data", data, "--views", "0,6", "--batch-size", 2, "--loader-threads", 1,
               "--repeats", 1, "--warmup-batches", 0, "--max-batches", 1, "--device", "cpu", "--json",
               "--save", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b.json").read_text())["config"]["views"] == [0, 6]
    for command in (["bench", "loader", "--data", data], ["train", "--data", data, "--out", tmp_path / "r"]):
        r = invoke(*command, "--views", "0;6")
        assert r.exit_code == 2 and r.output.strip() == "error: --views takes two view indices like 0,6, got '0;6'"
    assert view_pair(None) is None


def test_the_paper_preset_on_a_cpu_says_it_is_sized_for_a_gpu(make_dataset, tmp_path):
    """The help's flow uses the demo preset; train's default (paper) on a CPU prints one note before it starts."""
    r = invoke("--help")
    assert "--preset demo" in " ".join(r.output.split())
    data = make_dataset(tmp_path, size=16)
    r = invoke("train", "--data", data, "--out", tmp_path / "p", "--device", "cpu", "--epochs", 1, "--width", 4,
               "--batch-size", 4, "--loader-threads", 0, "--loader", "torch", "--max-steps-per-epoch", 1)
    notes = [line for line in r.output.splitlines() if line.startswith("note: --preset paper")]
    assert r.exit_code == 0 and len(notes) == 1 and "--preset demo" in notes[0], r.output
    r = invoke("train", "--data", data, "--out", tmp_path / "d", "--preset", "demo", "--device", "cpu", "--epochs", 1,
               "--width", 4, "--batch-size", 4, "--loader-threads", 0, "--loader", "torch", "--max-steps-per-epoch", 1)
    assert r.exit_code == 0 and "note: --preset paper" not in r.output, r.output


def test_a_grid_of_view_pairs_is_written_as_views_is(capsys):
    """`--set views=` takes pairs as `--views` writes one (0,6), two by two; the old `0-6` reads with a note."""
    assert parse_axes(["views=0,6"]) == {"views": [view_pair("0,6")]}
    assert parse_axes(["views=0,6,0,3"]) == {"views": [(0, 6), (0, 3)]}
    assert capsys.readouterr().err == ""
    assert parse_axes(["views=0-6,0-3"]) == {"views": [(0, 6), (0, 3)]}
    assert capsys.readouterr().err == ("note: --set views=0-6,0-3 is written --set views=0,6,0,3 now (view pairs as "
                                       "--views writes them)\n")
    for bad in ("0,6,3", "0;6", "0-6-3"):
        with pytest.raises(UserError, match="like --views, 0,6,0,3"):
            parse_axes([f"views={bad}"])


@pytest.mark.parametrize("old, new, args", [
    ("--threads", "--loader-threads", ["train", "--data", "DATA", "--out", "OUT", "--threads", "-1"]),
    ("--threads", "--loader-threads", ["bench", "--threads", "x", "--data", "DATA"]),
    ("--threads", "--loader-threads", ["bench", "loader", "--data", "DATA", "--threads=x"]),
    ("--source-workers", "--loader-workers", ["bench", "loader", "--data", "DATA", "--source-workers", "x"]),
    ("--devices", "--gpus", ["compare", "--data", "DATA", "--out", "OUT", "--devices", "0,x"]),
    ("--runs-per-device", "--runs-per-gpu", ["compare", "--data", "DATA", "--out", "OUT", "--runs-per-device", "0"]),
])
def test_old_parallelism_flags_work_with_a_note(old, new, args, make_dataset, tmp_path):
    """An old spelling reaches the renamed option (the same error as the new spelling gives, naming it) after one
    note line; the new spelling prints no note."""
    data = make_dataset(tmp_path, size=16)
    args = [str(data) if a == "DATA" else str(tmp_path / "o") if a == "OUT" else a for a in args]
    renamed = [a.replace(old, new) if a.startswith(old) else a for a in args]
    r_old, r_new = invoke(*args), invoke(*renamed)
    assert r_new.exit_code == 2 and r_new.output.startswith("error: ") and "note:" not in r_new.output
    assert r_old.exit_code == 2 and r_old.output == f"note: {old} is now {new}\n" + r_new.output, r_old.output
    assert not (tmp_path / "o").exists()
