"""One spelling per idea across commands: integer lists take ranges everywhere, a view pair is `0,6` everywhere."""
import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import typer

from mmtm.cli.app import app
from mmtm.cli.values import int_list, view_pair
from helpers import TINY, invoke
from mmtm.loaders.errors import UserError
from mmtm.analysis.compare import parse_axes
from mmtm.training.config import PRESETS, TrainConfig, resolve, to_dict
from mmtm.training.presets import CPU_SAMPLES_PER_CORE_S, cpu_hours

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_default_preset_is_chosen_by_the_device_and_paper_on_a_cpu_says_how_long(make_dataset, tmp_path):
    """Every command's --preset defaults to auto (demo on a CPU); the paper preset asked for on a CPU prints one note
    with the estimated time before it starts."""
    for path in (["train"], ["compare"], ["bench"], ["bench", "train"], ["bench", "pack"]):
        shown = " ".join(re.sub("[│╭╮╰╯─]", " ", invoke(*path, "--help").output).split())
        assert "--preset" in shown and "[default: auto]" in shown and "paper on a GPU, demo on a CPU" in shown, path
    data = make_dataset(tmp_path, size=16)
    tiny = ["--device", "cpu", "--epochs", 1, "--width", 4, "--batch-size", 4, "--loader-threads", 0, "--loader",
            "torch", "--max-steps-per-epoch", 1]
    r = invoke("train", "--data", data, "--out", tmp_path / "a", *tiny)
    assert r.exit_code == 0 and "note:" not in r.output, r.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["momentum"] == 0.9  # demo's, not paper's 0
    r = invoke("train", "--data", data, "--out", tmp_path / "p", "--preset", "paper", *tiny)
    notes = [line for line in r.output.splitlines() if line.startswith("note: --preset paper on a CPU")]
    assert r.exit_code == 0 and len(notes) == 1 and "--preset demo" in notes[0], r.output
    assert re.search(r"up to 1 epochs of 1 steps \(width 4, 16 px\), about (under a minute|\d+ min) of training "
                     r"steps on \d+ cores", notes[0]), notes


def test_the_cpu_estimate_scales_with_width_and_image_area():
    base = dict(width=16, image_size=64, epochs=1, steps_per_epoch=100, batch_size=8, cores=1)
    one = cpu_hours(**base)
    assert one == pytest.approx(800 / CPU_SAMPLES_PER_CORE_S / 3600)
    assert cpu_hours(**{**base, "width": 64, "image_size": 224}) == pytest.approx(one * 16 * 3.5 ** 2)
    assert cpu_hours(**{**base, "cores": 4}) == pytest.approx(one / 4)


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


def test_train_help_shows_the_defaults_each_preset_gives(make_dataset, tmp_path):
    """Every `[default: ...]` of a train flag the preset or the config decides is what resolve() gives: one value
    when every preset agrees, else each preset's."""
    data = str(make_dataset(tmp_path, size=16))
    resolved = {name: to_dict(resolve(name, data=data, out="x")) for name in PRESETS}
    assert {k: getattr(TrainConfig(), k) for k in PRESETS["paper"]} == PRESETS["paper"]  # the paper's = the defaults
    checked = 0
    for param in typer.main.get_command(app).commands["train"].params:
        key = {"threads": "num_threads"}.get(param.name, param.name)
        if not isinstance(getattr(param, "show_default", None), str) or key not in resolved["paper"] or key in (
                "views", "loss"):  # views: the data's; loss: the policy's
            continue
        values = {name: r[key] for name, r in resolved.items()}
        if len({str(v) for v in values.values()}) == 1:
            said = param.show_default.split(":")[0]
            value = values["paper"]
            assert (str(value) == said if isinstance(value, str) else float(Fraction(said)) == pytest.approx(value)
                    ), (key, said, value)
        else:
            said = dict(part.split(" ") for part in param.show_default.split(", "))
            assert said == {name: "none" if v is None else str(v) for name, v in values.items()}, key
        checked += 1
    assert checked >= 30


def _tables(markdown: str) -> list[tuple[list[str], str]]:
    """Each markdown table's header cells, with the text that follows it up to the next table or heading."""
    found, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            end = next((j for j in range(i + 2, len(lines)) if not lines[j].startswith("|")), len(lines))
            after = next((j for j in range(end, len(lines)) if lines[j].startswith(("|", "#"))), len(lines))
            found.append(([c.strip() for c in line.strip("|").split("|")], "\n".join(lines[end:after])))
    return found


SIGNS = "d_util, d_speed < 0: the network leans on view 0 (m0); > 0: on view 6 (m1)."


def test_every_table_of_d_util_or_d_speed_says_which_sign_means_which_view(tmp_path, figures_not_drawn):
    """comparison.md, the terminal summary and report's summary.md: one sentence after each table of signed d_util
    or d_speed values, naming each branch with its view number; other tables carry none."""
    runs = ROOT / "docs" / "finding" / "runs"
    r = invoke("compare", "--collect", runs, "--out", tmp_path / "c")
    assert r.exit_code == 0 and r.output.count(SIGNS) == 1, r.output
    r = invoke("report", runs / "vanilla-s0", runs / "balanced-s0", "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    for path in (tmp_path / "c" / "comparison.md", tmp_path / "r" / "summary.md"):
        text = path.read_text()
        assert "Branches: m0 is view 0, m1 view 6" in text and "A(f0)" not in text and "d_CLS" not in text, path
        tables = _tables(text)
        signed = [after for header, after in tables if {"d_util", "d_speed_final"} & set(header)
                  and not any(h.startswith("Spearman") for h in header)]  # that one holds ρ, not d_util
        assert signed and all(after.count(SIGNS) == 1 for after in signed), path
        assert text.count(SIGNS) == len(signed), path


def test_eval_cur_and_train_name_each_branch_with_its_view(trained_runs, tmp_path):
    run = tmp_path / "vanilla"
    shutil.copytree(trained_runs / "vanilla", run)
    r = invoke("eval-cur", run, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "m0's head (view 0)" in r.output and "m1's head (view 6)" in r.output and "A(f0)" not in r.output
    assert r.output.count("d_util < 0: the network leans on view 0 (m0); > 0: on view 6 (m1).") == 1, r.output
    data = json.loads((run / "config.json").read_text())["data"]
    r = invoke("train", "--data", data, "--out", tmp_path / "t", "--epochs", 1, *TINY, "--max-steps-per-epoch", 1)
    done = [line for line in r.output.splitlines() if line.startswith("done: ")]
    assert r.exit_code == 0 and len(done) == 1, r.output
    assert done[0].endswith("; d_speed < 0: the network leans on view 0 (m0); > 0: on view 6 (m1)."), done


def test_a_view_pair_as_two_words_reads_with_a_note(make_dataset, tmp_path):
    """`--views 0 6` (the pair as two words) is read as `--views 0,6` after one note line, in every command that has
    --views: the same error as `--views 0,6` then gives, for a view the data lacks."""
    data = make_dataset(tmp_path, size=16)
    for command in (["train", "--data", data, "--out", tmp_path / "r"], ["bench", "loader", "--data", data]):
        old, new = invoke(*command, "--views", "0", "99"), invoke(*command, "--views", "0,99")
        assert new.exit_code == 2 and new.output.startswith("error: ") and "99" in new.output, new.output
        assert old.output == "note: --views 0 99 is written --views 0,99\n" + new.output, old.output
    assert not (tmp_path / "r").exists()
