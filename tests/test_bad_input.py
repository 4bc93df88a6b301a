"""Every bad input gets one `error:` line naming the file or flag, exit code 2, and leaves the files as they were.

Each case builds its input under tmp_path (copies of the shared tiny dataset and run, then damaged), runs the
command, and compares every file under tmp_path and under the shared dataset before and after."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import TINY, invoke, run_mmtm

T = [*TINY, "--epochs", "2"]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under root."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def data_copy(tmp: Path, data: Path, name: str = "d") -> Path:
    return shutil.copytree(data, tmp / name)


def run_copy(tmp: Path, runs: Path) -> Path:
    return shutil.copytree(runs / "vanilla", tmp / "run", ignore=shutil.ignore_patterns("cur.json"))


def edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def edit_rows(path: Path, change) -> None:
    """change(rows) on the split file's rows as lists (the header is rows[0])."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(change(rows))


def without(key):
    return lambda d: {k: v for k, v in d.items() if k != key}


def with_value(key, value):
    return lambda d: {**d, key: value}


def with_cell(row: int, column: int, value: str):
    def change(rows):
        rows[row][column] = value
        return rows
    return change


def edit_checkpoint(path: Path, change) -> None:
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


def train(data, tmp, *extra):
    return ["train", "--data", data, "--out", tmp / "r", *T, *extra]


def damaged(change_meta=None, split="train", change_rows=None):
    """A case: train on a copy of the dataset whose dataset.json or split file was changed."""
    def setup(tmp, data, runs):
        d = data_copy(tmp, data)
        if change_meta:
            edit_json(d / "dataset.json", change_meta)
        if change_rows:
            edit_rows(d / "splits" / f"{split}.csv", change_rows)
        return train(d, tmp)
    return setup


def with_object_of(same_label: bool):
    """The first row takes the object name of a later row with the same label, or with another label."""
    def change(rows):
        rows[1][1] = next(r[1] for r in rows[2:] if (r[3] == rows[1][3]) == same_label)
        return rows
    return change


def with_class_of_another_label(rows):
    rows[1][2] = next(r[2] for r in rows[2:] if r[3] != rows[1][3])
    return rows


def object_in_train_and_val(tmp, data, runs):
    d = data_copy(tmp, data)
    with (d / "splits" / "val.csv").open(newline="") as f:
        val_object = list(csv.reader(f))[1][1]
    edit_rows(d / "splits" / "train.csv", with_cell(1, 1, val_object))
    return train(d, tmp)


def config_file(content):
    def setup(tmp, data, runs):
        (tmp / "c.json").write_text(json.dumps(content))
        return ["train", "--data", data, "--out", tmp / "r", "--config", tmp / "c.json", "--device", "cpu"]
    return setup


def config_folder(tmp, data, runs):
    (tmp / "c").mkdir()
    return ["train", "--data", data, "--out", tmp / "r", "--config", tmp / "c"]


def missing_val_split(tmp, data, runs):
    d = data_copy(tmp, data)
    (d / "splits" / "val.csv").unlink()
    return train(d, tmp)


def flags(*extra):
    return lambda tmp, data, runs: train(data, tmp, *extra)


def out_is_a_file(command, *, under=False):
    def setup(tmp, data, runs):
        (tmp / "f").write_text("mine")
        out = tmp / "f" / "x" if under else tmp / "f"
        return {"train": ["train", "--data", data, "--out", out, *T],
                "compare": ["compare", "--data", data, "--out", out, "--epochs", "1", "--policies", "vanilla"],
                "report": ["report", runs / "vanilla", "--out", out],
                "bench": ["bench", "loader", "--data", data, "--batch-size", "4", "--save", out]}[command]
    return setup


def eval_cur_on(change=None, *extra, replace_best=None):
    def setup(tmp, data, runs):
        run = run_copy(tmp, runs)
        if change:
            edit_checkpoint(run / "best.pt", change)
        if replace_best:
            shutil.copy(replace_best(tmp, data), run / "best.pt")
        return ["eval-cur", run, "--device", "cpu", *extra]
    return setup


def report_on(damage):
    def setup(tmp, data, runs):
        run = run_copy(tmp, runs)
        damage(run)
        return ["report", run, "--out", tmp / "rep"]
    return setup


def drop_column(name, file):
    def damage(run):
        with (run / file).open(newline="") as f:
            rows = list(csv.DictReader(f))
        with (run / file).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != name])
            w.writeheader()
            w.writerows({k: v for k, v in r.items() if k != name} for r in rows)
    return damage


def resume_with(*extra):
    def setup(tmp, data, runs):
        return ["train", "--data", data, "--out", run_copy(tmp, runs), "--resume", "--epochs", "3", *extra]
    return setup


def other_dataset_paths(command):
    """The split files point at another dataset's images (../other/...); the dataset's own images are gone."""
    def setup(tmp, data, runs):
        data_copy(tmp, data, "other")
        d = data_copy(tmp, data)
        shutil.rmtree(d / "images")
        for split in ("train", "val", "test"):
            edit_rows(d / "splits" / f"{split}.csv",
                      lambda rows: [rows[0]] + [[*r[:4], "../other/" + r[4]] for r in rows[1:]])
        if command == "train":
            return train(d, tmp)
        return ["eval-cur", run_copy(tmp, runs), "--data", d, "--device", "cpu"]
    return setup


def five_class_checkpoint(tmp, data):
    """best.pt of a run trained on a 5-class dataset."""
    five = tmp / "five"
    assert invoke("prep", "synthetic", "--out", five, "--classes", 5, "--per-class", 6, "--image-size", 16,
                  "--workers", 1, "--quiet").exit_code == 0
    assert invoke("train", "--data", five, "--out", tmp / "run5", *TINY, "--epochs", 1).exit_code == 0
    return tmp / "run5" / "best.pt"


def prep_synthetic(*extra):
    return lambda tmp, data, runs: ["prep", "synthetic", "--out", tmp / "p", "--classes", "2", "--per-class", "5",
                                    "--image-size", "16", "--workers", "1", "--quiet", *extra]


def damaged_jpeg(damage):
    """Train with the DALI loader on a copy of the dataset with one view damaged: its decoder logs natively."""
    def setup(tmp, data, runs):
        d = data_copy(tmp, data)
        view = d / "images" / "block" / "block_0001" / "v00.jpg"
        view.write_bytes(damage(view.read_bytes()))
        return [*train(d, tmp), "--loader", "dali", "--threads", "1"]  # the later flags win
    return setup


# (id, group of the issue, setup(tmp, data, runs) -> command, what the error line must name)
CASES = [
    ("dataset.json without classes", 1, damaged(without("classes")), "dataset.json"),
    ("dataset.json without image_size", 1, damaged(without("image_size")), "image_size"),
    ("dataset.json without counts", 1, damaged(without("counts")), "counts"),
    ("dataset.json image_size 'big'", 1, damaged(with_value("image_size", "big")), "image_size"),
    ("dataset.json not an object", 1, damaged(lambda d: [1, 2]), "dataset.json"),
    ("train.csv index 'zero'", 1, damaged(change_rows=with_cell(1, 0, "zero")), "train.csv"),
    ("train.csv label 99", 1, damaged(change_rows=with_cell(1, 3, "99")), "train.csv"),
    ("train.csv label -1", 1, damaged(change_rows=with_cell(1, 3, "-1")), "train.csv"),
    ("--momentum -1", 1, flags("--momentum", "-1"), "momentum"),
    ("--speed-window 0", 1, flags("--speed-window", "0"), "speed_window"),
    ("--warmup-epochs -1", 1, flags("--warmup-epochs", "-1"), "warmup_epochs"),
    ("--alpha -1", 1, flags("--alpha", "-1"), "alpha"),
    ("config views 'ab'", 1, config_file({"views": "ab"}), "c.json"),
    ("config views [1]", 1, config_file({"views": [1]}), "views"),
    ("config epochs 'two'", 1, config_file({"epochs": "two"}), "c.json"),
    ("config is a folder", 1, config_folder, "c: config file cannot be read"),
    ("--resume with another --width", 1, resume_with("--width", "8"), "last.pt"),
    ("--resume with another policy", 1, resume_with("--balanced"), "last.pt"),
    ("eval-cur, checkpoint's width changed", 1, eval_cur_on(lambda c: c["config"].update(width=8)), "best.pt"),
    ("eval-cur, checkpoint without classes", 1, eval_cur_on(lambda c: c.pop("classes")), "best.pt"),
    ("train --out FILE", 1, out_is_a_file("train"), "--out"),
    ("train --out FILE/x", 1, out_is_a_file("train", under=True), "--out"),
    ("compare --out FILE", 1, out_is_a_file("compare"), "--out"),
    ("report --out FILE", 1, out_is_a_file("report"), "--out"),
    ("report --out FILE/x", 1, out_is_a_file("report", under=True), "--out"),
    ("bench --save FILE/x", 1, out_is_a_file("bench", under=True), "--save"),
    ("report, config.json not JSON", 1, report_on(lambda run: (run / "config.json").write_text("{oops")),
     "config.json"),
    ("report, cur.json not an object", 1, report_on(lambda run: (run / "cur.json").write_text("[1]")), "cur.json"),
    ("report, steps.csv without d_speed", 1, report_on(drop_column("d_speed", "steps.csv")), "steps.csv"),
    ("report, epochs.csv without val_acc", 1, report_on(drop_column("val_acc", "epochs.csv")), "epochs.csv"),
    ("bench loader --batch-size 0", 1, lambda tmp, data, runs:
     ["bench", "loader", "--data", data, "--batch-size", "0", "--save", tmp / "b.json"], "batch size"),
    ("bench loader --threads 0", 1, lambda tmp, data, runs:
     ["bench", "loader", "--data", data, "--threads", "0", "--save", tmp / "b.json"], "threads"),
    ("bench train --steps 0", 1, lambda tmp, data, runs:
     ["bench", "train", "--data", data, "--steps", "0", "--batch-size", "4", "--device", "cpu",
      "--save", tmp / "b.json"], "--steps"),
    ("eval-cur --batch-size -1", 1, eval_cur_on(None, "--batch-size", "-1"), "batch size"),
    # 2: pre-flight errors of train used to leave config.json and header-only CSVs
    ("train.csv with a wrong header", 2, damaged(change_rows=with_cell(0, 0, "idx")), "train.csv"),
    ("train.csv index out of order", 2, damaged(change_rows=lambda rows: [rows[0], rows[2], rows[1], *rows[3:]]),
     "train.csv"),
    ("train.csv empty", 2, damaged(change_rows=lambda rows: rows[:1]), "'train' has no objects"),
    ("val.csv missing", 2, missing_val_split, "val.csv"),
    ("--batch-size larger than the split", 2, flags("--batch-size", "1000"), "batch"),
    ("--lr nan", 2, flags("--lr", "nan"), "lr"),
    # 4: paths that leave the dataset folder
    ("train.csv path ../../etc", 4, damaged(change_rows=with_cell(1, 4, "../../etc")), "train.csv"),
    ("train.csv path absolute", 4, damaged(change_rows=with_cell(1, 4, "/tmp")), "train.csv"),
    ("train on paths into another dataset", 4, other_dataset_paths("train"), "leads outside"),
    ("eval-cur on paths into another dataset", 4, other_dataset_paths("eval-cur"), "leads outside"),
    # 5: accepted though wrong
    ("dataset.json classes 'wxyz'", 5, damaged(with_value("classes", "wxyz")), "classes"),
    ("--max-steps-per-epoch 0", 5, flags("--max-steps-per-epoch", "0"), "max_steps_per_epoch"),
    ("--lr inf", 5, flags("--lr", "inf"), "lr"),
    ("eval-cur --batch-size 0", 5, eval_cur_on(None, "--batch-size", "0"), "batch size"),
    ("prep --val-fraction 0.99", 5, prep_synthetic("--val-fraction", "0.99"), "--val-fraction"),
    ("prep --val-fraction 0.01", 5, prep_synthetic("--val-fraction", "0.01"), "--val-fraction"),
    ("eval-cur on a run holding another dataset's checkpoint", 5, eval_cur_on(replace_best=five_class_checkpoint),
     "classes differ"),
    # 19: split rows checked against dataset.json's classes and against each other
    ("train.csv class of another label", 19, damaged(change_rows=with_class_of_another_label),
     "train.csv: row 0 has class"),
    ("train.csv object under two labels", 19, damaged(change_rows=with_object_of(same_label=False)),
     "an object has one label"),
    ("train.csv object twice", 19, damaged(change_rows=with_object_of(same_label=True)), "repeats object"),
    ("object in train.csv and val.csv", 19, object_in_train_and_val, "val.csv also has"),
    ("train --threads 0 with the DALI loader", 19, flags("--threads", "0", "--loader", "dali"), "torch loader"),
    # 30: modulation windows as an end epoch or a share of the run, one at a time, and the remedies' flags
    ("--ogm-end-fraction 0", 30, flags("--ogm-end-fraction", "0"), "ogm_end_fraction"),
    ("--pmr-end-fraction 1.5", 30, flags("--pmr-end-fraction", "1.5"), "pmr_end_fraction"),
    ("--ogm-end-epoch -1", 30, flags("--ogm-end-epoch", "-1"), "ogm_end_epoch"),
    ("--pmr-end-epoch with --pmr-end-fraction", 30, flags("--pmr-end-epoch", "3", "--pmr-end-fraction", "0.5"),
     "not both"),
    ("config end epoch disagrees with its fraction", 30,
     config_file({"epochs": 10, "ogm_end_epoch": 2, "ogm_end_fraction": 0.5}), "disagrees"),
    ("--mmpareto-gamma -1", 30, flags("--mmpareto-gamma", "-1"), "mmpareto_gamma"),
    ("mmpareto --loss heads", 30, flags("--policy", "mmpareto", "--loss", "heads"), "not be what was trained"),
    ("g-blending --loss heads", 30, flags("--policy", "g-blending", "--loss", "heads"), "not be what was trained"),
    # 7: Click's usage errors and the DALI decoder's own lines
    ("train --views 3 99", 7, lambda tmp, data, runs: ["train", "--data", data, "--out", tmp / "r", "--views", "3",
                                                       "99"], "99"),
    ("train --epochs abc", 7, flags("--epochs", "abc"), "--epochs"),
    ("eval-cur without RUN", 7, lambda tmp, data, runs: ["eval-cur"], "run"),
    ("prep without --out", 7, lambda tmp, data, runs: ["prep", "synthetic"], "--out"),
    ("train --loader dali on a truncated JPEG", 7, damaged_jpeg(lambda b: b[:200]), "v00.jpg"),
    ("train --loader dali on a JPEG with a damaged header", 7,
     damaged_jpeg(lambda b: b[:2] + bytes(range(200, 228)) + b[30:]), "v00.jpg"),
]


@pytest.mark.parametrize("setup, names", [pytest.param(setup, names, id=f"{group}: {name}")
                                          for name, group, setup, names in CASES])
def test_bad_input_is_one_error_line_and_changes_no_file(setup, names, synthetic_data, trained_runs, tmp_path,
                                                         capfd):
    command = setup(tmp_path, synthetic_data, trained_runs)
    if "dali" in command:
        pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    before = tree(tmp_path), tree(synthetic_data)
    capfd.readouterr()
    r = invoke(*command)
    native = capfd.readouterr().err  # what C++ code wrote to fd 2, past Python's sys.stderr
    lines = r.output.strip().splitlines() + native.strip().splitlines()
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines
    assert (tree(tmp_path), tree(synthetic_data)) == before


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["bench", "--help"]])
def test_help_is_still_help(command):
    r = invoke(*command)
    assert r.exit_code == 0 and "Usage: mmtm" in r.output and "error:" not in r.output


def obeying_file_modes(command: list, cwd: Path, logs: Path) -> tuple[int, str]:
    """`mmtm` as a process that meets file modes even when the tests run as root: its exit code and output."""
    code = run_mmtm(*command, cwd=cwd, obey_file_modes=True, log=logs / "out", env={"HOME": str(cwd)})
    return code, (logs / "out").read_text()


def read_only(folder: Path) -> list[tuple[Path, int]]:
    folder.mkdir(exist_ok=True)
    return [(folder, 0o555)]


def mesh_tree(root: Path) -> Path:
    tetra = "OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"
    for cls in ("chair", "lamp"):
        for split, numbers in (("train", range(1, 5)), ("test", range(5, 6))):
            (root / cls / split).mkdir(parents=True)
            for i in numbers:
                (root / cls / split / f"{cls}_{i:04d}.off").write_text(tetra)
    return root


# (id, setup(work, data, runs) -> (command, [(path, mode) applied just before it runs]), what the line names)
PERMISSION_CASES = [
    ("prep --out in a read-only folder", lambda w, data, runs: (
        ["prep", "synthetic", "--out", w / "ro" / "d", "--classes", 2, "--per-class", 5, "--image-size", 16,
         "--quiet"], read_only(w / "ro")), "no write permission"),
    ("train --out in a read-only folder", lambda w, data, runs: (
        ["train", "--data", data_copy(w, data), "--out", w / "ro" / "r", *T], read_only(w / "ro")),
     "no write permission"),
    ("eval-cur on a read-only run folder", lambda w, data, runs: (
        ["eval-cur", run_copy(w, runs), "--data", data_copy(w, data), "--device", "cpu"], [(w / "run", 0o555)]),
     "cur.json"),
    ("bench --save in a read-only folder", lambda w, data, runs: (
        ["bench", "loader", "--data", data_copy(w, data), "--batch-size", 4, "--save", w / "ro" / "b.json"],
        read_only(w / "ro")), "--save"),
    ("prep, a split folder of the source unreadable", lambda w, data, runs: (
        ["prep", mesh_tree(w / "src"), "--out", w / "d", "--image-size", 16, "--quiet"],
        [(w / "src" / "lamp" / "train", 0o000)]), "lamp/train"),
    ("prep, the source folder unreadable", lambda w, data, runs: (
        ["prep", mesh_tree(w / "src"), "--out", w / "d", "--image-size", 16, "--quiet"], [(w / "src", 0o311)]),
     "src"),
    ("train, dataset.json unreadable", lambda w, data, runs: (
        train(data_copy(w, data), w), [(w / "d" / "dataset.json", 0o000)]), "dataset.json"),
    ("train, splits/train.csv unreadable", lambda w, data, runs: (
        train(data_copy(w, data), w), [(w / "d" / "splits" / "train.csv", 0o000)]), "train.csv"),
]


@pytest.mark.slow
@pytest.mark.parametrize("setup, names", [pytest.param(setup, names, id=f"1: {name}")
                                          for name, setup, names in PERMISSION_CASES])
def test_unwritable_or_unreadable_path_is_one_error_line_and_changes_no_file(setup, names, synthetic_data,
                                                                             trained_runs, tmp_path):
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    command, modes = setup(work, synthetic_data, trained_runs)
    before = tree(work)
    for path, mode in modes:
        path.chmod(mode)
    try:
        code, output = obeying_file_modes(command, work, logs)
    finally:
        for path, mode in modes:
            path.chmod(0o755 if path.is_dir() else 0o644)
    lines = output.strip().splitlines()
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines
    assert tree(work) == before
