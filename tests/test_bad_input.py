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
from PIL import Image

from conftest import write_dataset
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


def single_view_runs(tmp, data, views: str) -> str:
    """--teachers naming two fresh one-epoch single-view runs on `views` of `data`."""
    first, second = views.split(",")
    for view in (first, second):
        r = invoke("train", "--data", data, "--out", tmp / f"sv{view}", *TINY, "--epochs", "1", "--views", views,
                   "--single-view", view)
        assert r.exit_code == 0, r.output
    return f"{tmp / f'sv{first}'},{tmp / f'sv{second}'}"


def teachers_on_views(views):
    return lambda tmp, data, runs: train(data, tmp, "--policy", "umt", "--teachers",
                                         single_view_runs(tmp, data, views))


def teachers_on_other_data(tmp, data, runs):
    r = invoke("prep", "synthetic", "--out", tmp / "other", "--classes", "3", "--per-class", "12", "--image-size",
               "32", "--workers", "1")  # the same classes, other objects
    assert r.exit_code == 0, r.output
    teachers = single_view_runs(tmp, tmp / "other", "0,6")
    return train(data, tmp, "--policy", "umt", "--teachers", teachers)


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


def resume_with(*extra, edit_config=None):
    """Resume a copy of the finished 2-epoch run with flags, or after its config.json was edited."""
    def setup(tmp, data, runs):
        run = run_copy(tmp, runs)
        if edit_config:
            edit_json(run / "config.json", edit_config)
        return ["train", "--data", data, "--out", run, "--resume", *extra]
    return setup


def with_cur_of_split(split, collect=False):
    """report (or compare --collect) on a run whose cur-last.json an older eval-cur wrote for another split."""
    def setup(tmp, data, runs):
        run = run_copy(tmp, runs)
        assert invoke("eval-cur", run, "--checkpoint", "last", "--device", "cpu").exit_code == 0
        edit_json(run / "cur-last.json", with_value("split", split))
        if collect:
            from mmtm.analysis.evidence import summarise
            assert invoke("eval-cur", run, "--device", "cpu").exit_code == 0
            summarise(run)
            return ["compare", "--collect", run, "--out", tmp / "cmp"]
        return ["report", run, "--out", tmp / "rep"]
    return setup


def long_name(length: int) -> str:
    return "n" * length


def eval_cur_of_a_long_name(tmp, data, runs):
    """A checkpoint file named with 243 bytes: its result, cur-test-NAME.json, would need 257."""
    run = run_copy(tmp, runs)
    ckpt = shutil.copy(run / "best.pt", tmp / f"{long_name(240)}.pt")
    return ["eval-cur", run, "--checkpoint", ckpt, "--device", "cpu"]


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
        return [*train(d, tmp), "--loader", "dali", "--loader-threads", "1"]  # the later flags win
    return setup


def compare(*extra, data_change=None):
    """A case: compare (one tiny run) on the dataset, or on a copy changed by data_change(copy)."""
    def setup(tmp, data, runs):
        if data_change is not None:
            data = data_copy(tmp, data)
            data_change(data)
        return ["compare", "--data", data, "--out", tmp / "cmp", "--policies", "vanilla", "--seeds", "0",
                "--epochs", "1", *extra]
    return setup


def compare_into_a_run_of_other_settings(tmp, data, runs):
    """--out holds vanilla-s0 trained with other settings than the compare asks for (and no summary yet)."""
    shutil.copytree(runs / "vanilla", tmp / "cmp" / "vanilla-s0")
    return ["compare", "--data", data, "--out", tmp / "cmp", "--policies", "vanilla", "--seeds", "0", "--epochs", "3"]


COMMITTED_RUN = Path(__file__).resolve().parents[1] / "docs" / "options" / "runs" / "speed_from_epoch=1"


def collect_of(*changes):
    """A case: --collect of committed runs copied into tmp/ev/<where>, then each change(ev) applied."""
    def setup(tmp, data, runs):
        for change in changes:
            change(tmp / "ev")
        return ["compare", "--collect", tmp / "ev", "--out", tmp / "o"]
    return setup


def copy_run(name, where="a"):
    return lambda ev: shutil.copytree(COMMITTED_RUN / name, ev / where / name)


def edit_evidence(where, file, change):
    return lambda ev: edit_json(ev / where / file, change)

PAIR_ROWS = [f"{k}a.png,{k}b.png,{'cat' if k % 2 else 'dog'}" for k in range(10)]


def pairs(rows=None, *extra, header="view0,view1,label", damage=None, out=None):
    """`mmtm prep pairs` on tmp/src/objects.csv: two 12-px PNGs per object k (ka.png, kb.png, k < 10) and the CSV
    `header` + `rows` (default PAIR_ROWS: 2 classes × 5 objects); damage(src) then spoils something. `out` =
    "dataset": replace a copy of the shared dataset."""
    def setup(tmp, data, runs):
        src = tmp / "src"
        src.mkdir()
        for k in range(10):
            for v in "ab":
                Image.new("RGB", (12, 12), (20 * k, 100 if v == "a" else 200, 0)).save(src / f"{k}{v}.png")
        text = "\n".join(([header] if header is not None else []) + (PAIR_ROWS if rows is None else rows))
        (src / "objects.csv").write_text(text + "\n" if text else "")
        if damage:
            damage(src)
        target = data_copy(tmp, data) if out == "dataset" else tmp / "d"
        return ["prep", "pairs", src / "objects.csv", "--out", target, "--image-size", "16", "--workers", "1",
                "--quiet", *extra]
    return setup


def split_column(*splits):
    """PAIR_ROWS with a split column: object k in splits[k % len(splits)]."""
    return [f"{row},{splits[k % len(splits)]}" for k, row in enumerate(PAIR_ROWS)]


def appended(line):
    return lambda src: (src / "objects.csv").write_text((src / "objects.csv").read_text() + line + "\n")


def truncated(name):
    return lambda src: (src / name).write_bytes((src / name).read_bytes()[:40])


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
    ("bench loader --loader-threads 0", 1, lambda tmp, data, runs:
     ["bench", "loader", "--data", data, "--loader-threads", "0", "--save", tmp / "b.json"], "threads"),
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
    ("train --loader-threads 0 with the DALI loader", 19, flags("--loader-threads", "0", "--loader", "dali"),
     "torch loader"),
    # 26: results that say what they hold, resumed runs that mean what config.json says, numbers the code can hold,
    # names the file system can hold
    ("report, cur-last.json of the val split", 26, with_cur_of_split("val"), "not the test split"),
    ("compare --collect, cur-last.json of the val split", 26, with_cur_of_split("val", collect=True),
     "not the test split"),
    ("--resume with another --epochs", 26, resume_with("--epochs", "3"), "epochs 2 → 3"),
    ("--resume with another --lr", 26, resume_with("--lr", "0.01"), "lr 0.05 → 0.01"),
    ("--resume after config.json's seed was edited", 26, resume_with(edit_config=with_value("seed", 5)),
     "seed 0 → 5"),
    ("--resume after config.json's views were edited", 26, resume_with(edit_config=with_value("views", [1, 7])),
     "views [0, 6] → [1, 7]"),
    ("--resume after config.json's batch size was edited", 26,
     resume_with(edit_config=with_value("batch_size", 8)), "batch_size 4 → 8"),
    ("--single-view 1 (the old slot of view 6)", 26, flags("--single-view", "1"), "--single-view 6"),
    ("--single-view 7, not one of --views", 26, flags("--single-view", "7"), "one of --views 0,6"),
    ("--seed 2^64", 26, flags("--seed", str(2**64)), "seed"),
    ("--lr 1e39, past float32", 26, flags("--lr", "1e39"), "float32"),
    ("config min_lr above lr", 26, config_file({"lr": 0.01, "min_lr": 0.1}), "min_lr"),
    ("config mmtm_ratio leaving a bottleneck of 0 units", 26, config_file({"width": 4, "mmtm_ratio": 33}),
     "bottleneck of 0 units"),
    ("prep --image-size 0", 26, prep_synthetic("--image-size", "0"), "--image-size"),
    ("prep --seed -1", 26, prep_synthetic("--seed", "-1"), "--seed"),
    ("train --out with a 256-byte name", 26, lambda tmp, data, runs: train(data, tmp / long_name(256)), "256 bytes"),
    ("prep --out whose temporary name passes 255 bytes", 26,
     lambda tmp, data, runs: prep_synthetic("--out", tmp / long_name(240))(tmp, data, runs), "temporary name"),
    ("report --out with a 256-byte name", 26, lambda tmp, data, runs: ["report", runs / "vanilla", "--out",
                                                                       tmp / long_name(256)], "256 bytes"),
    ("eval-cur of a checkpoint whose result's name passes 255 bytes", 26, eval_cur_of_a_long_name, "bytes"),

    # 26: compare checks its data, GPUs and flags before creating anything; kept runs must be the runs asked for
    ("compare --data without dataset.json", 26, compare(data_change=lambda d: (d / "dataset.json").unlink()),
     "dataset.json"),
    ("compare --data without val.csv", 26, compare(data_change=lambda d: (d / "splits" / "val.csv").unlink()),
     "val.csv"),
    ("compare --gpus 99", 26, compare("--gpus", "99"), "GPU 99 is not present"),
    ("compare --jobs 3000000000", 26, compare("--jobs", "3000000000"), "--jobs 3000000000"),
    ("compare --jobs 0", 26, compare("--jobs", "0"), "--jobs must be at least 1"),
    ("compare --gpus 0 --device cpu", 26, compare("--gpus", "0", "--device", "cpu"), "--device"),
    ("compare --jobs 2 --launcher slurm", 26, compare("--jobs", "2", "--launcher", "slurm"), "--jobs"),
    ("compare --gpus-per-run -1", 26, compare("--launcher", "slurm", "--gpus-per-run", "-1"), "--gpus-per-run"),
    ("compare into an --out holding a run of other settings", 26, compare_into_a_run_of_other_settings,
     "vanilla-s0 holds a run of other settings"),
    ("compare --collect of two copies of a run", 26,
     collect_of(copy_run("vanilla-s2", "a"), copy_run("vanilla-s2", "b")), "counts each run once"),
    ("compare --collect of runs of two data digests", 26, collect_of(
        copy_run("vanilla-s0"), copy_run("vanilla-s1"),
        edit_evidence("a/vanilla-s0", "summary.json", with_value("data_digest", "sha256:" + "0" * 64)),
        edit_evidence("a/vanilla-s1", "summary.json", with_value("data_digest", "sha256:" + "1" * 64))),
     "one dataset"),
    ("compare --collect of runs of two datasets, no digests", 26, collect_of(
        copy_run("vanilla-s0"), copy_run("vanilla-s1"),
        edit_evidence("a/vanilla-s1", "summary.json", lambda s: {**s, "dataset": {**s["dataset"], "image_size": 32}})),
     "dataset facts"),
    ("compare --collect, summary.json regular_steps 'x'", 26, collect_of(
        copy_run("vanilla-s0"), edit_evidence("a/vanilla-s0", "summary.json", with_value("regular_steps", "x"))),
     "summary.json: regular_steps"),
    ("compare --collect, summary.json without trace", 26, collect_of(
        copy_run("vanilla-s0"), edit_evidence("a/vanilla-s0", "summary.json", without("trace"))),
     "summary.json: trace"),
    ("compare --collect, cur.json objects a list", 26, collect_of(
        copy_run("vanilla-s0"), edit_evidence("a/vanilla-s0", "cur.json", with_value("objects", [1]))),
     "cur.json: objects"),

    # 29: the shortcut variant, digits and two-view sets
    ("prep --shortcut-agreement 1.5", 29, prep_synthetic("--views-differ", "shortcut", "--shortcut-agreement", "1.5"),
     "--shortcut-agreement"),
    ("prep --shortcut-agreement without shortcut", 29, prep_synthetic("--shortcut-agreement", "0.5"),
     "--shortcut-agreement"),
    ("prep digits --mnist of a folder without IDX files", 29,
     lambda tmp, data, runs: ["prep", "digits", "--out", tmp / "p", "--mnist", data], "train-images-idx3-ubyte"),
    ("prep digits --colour-var 0", 29, lambda tmp, data, runs: ["prep", "digits", "--out", tmp / "p", "--mnist",
                                                                data, "--colour-var", "0"], "--colour-var"),
    ("prep synthetic --mnist", 29, prep_synthetic("--mnist", "x"), "--mnist"),
    ("train --views 0,6 on a two-view set", 29, lambda tmp, data, runs: [
        "train", "--data", write_dataset(tmp / "two", classes=2, num_views=2), "--out", tmp / "r", *T,
        "--views", "0,6"], "view index 6 is out of range"),

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
    ("--agm-alpha -1", 30, flags("--agm-alpha", "-1"), "agm_alpha"),
    ("--agm-alpha nan", 30, flags("--agm-alpha", "nan"), "agm_alpha"),
    ("--agm-end-epoch -1", 30, flags("--agm-end-epoch", "-1"), "agm_end_epoch"),
    ("--agm-end-fraction 0", 30, flags("--agm-end-fraction", "0"), "agm_end_fraction"),
    ("--agm-end-fraction 1.5", 30, flags("--agm-end-fraction", "1.5"), "agm_end_fraction"),
    ("--agm-end-epoch and fraction", 30, flags("--agm-end-epoch", "2", "--agm-end-fraction", "0.5"), "not both"),
    ("agm --loss heads", 30, flags("--policy", "agm", "--loss", "heads"), "not be what was trained"),
    ("--opm-q-base 1.5", 30, flags("--opm-q-base", "1.5"), "opm_q_base"),
    ("--opm-q-base -0.1", 30, flags("--opm-q-base", "-0.1"), "opm_q_base"),
    ("--opm-q-base nan", 30, flags("--opm-q-base", "nan"), "opm_q_base"),
    ("--opm-lambda -1", 30, flags("--opm-lambda", "-1"), "opm_lambda"),
    ("--opm-lambda inf", 30, flags("--opm-lambda", "inf"), "opm_lambda"),
    ("--opm-p-exe 2", 30, flags("--opm-p-exe", "2"), "opm_p_exe"),
    ("--opm-p-exe nan", 30, flags("--opm-p-exe", "nan"), "opm_p_exe"),
    ("--opm-warmup-epochs -1", 30, flags("--opm-warmup-epochs", "-1"), "opm_warmup_epochs"),
    ("--opm-ogm ogm+", 30, flags("--opm-ogm", "ogm+"), "opm_ogm must be one of"),
    ("--opm-ogm-coeff sigmoid", 30, flags("--opm-ogm-coeff", "sigmoid"), "opm_ogm_coeff"),
    ("--opm-ogm-alpha -0.5", 30, flags("--opm-ogm-alpha", "-0.5"), "opm_ogm_alpha"),
    ("--opm-ogm-end-epoch -2", 30, flags("--opm-ogm-end-epoch", "-2"), "opm_ogm_end_epoch"),
    ("--opm-ogm-end-fraction 2", 30, flags("--opm-ogm-end-fraction", "2"), "opm_ogm_end_fraction"),
    ("g-blending --loss heads", 30, flags("--policy", "g-blending", "--loss", "heads"), "not be what was trained"),
    ("umt without --teachers", 30, flags("--policy", "umt"), "umt_teachers"),
    ("--teachers with vanilla", 30, flags("--teachers", "a,b"), "umt_teachers"),
    ("umt --teachers of one run", 30, flags("--policy", "umt", "--teachers", "a"), "RUN0,RUN1"),
    ("umt --teachers not runs", 30, lambda tmp, data, runs: train(data, tmp, "--policy", "umt", "--teachers",
                                                                  f"{tmp / 'no0'},{tmp / 'no1'}"), "no best.pt"),
    ("umt --teachers a two-view run", 30, lambda tmp, data, runs: train(
        data, tmp, "--policy", "umt", "--teachers", f"{runs / 'vanilla'},{runs / 'vanilla'}"), "single_view None"),
    ("umt --teachers on other views", 30, teachers_on_views("1,6"), "views [1, 6], not [0, 6]"),
    ("umt --teachers on other data", 30, teachers_on_other_data, "data digest"),
    ("--umt-scaling -1", 30, flags("--umt-scaling", "-1"), "umt_scaling"),
    ("--relearn-interval 0", 30, flags("--relearn-interval", "0"), "relearn_interval"),
    ("--relearn-count -1", 30, flags("--relearn-count", "-1"), "relearn_count"),
    ("--relearn-lambda nan", 30, flags("--relearn-lambda", "nan"), "relearn_lambda"),
    ("ume members swapped", 30, lambda tmp, data, runs: ["ume", *reversed(single_view_runs(tmp, data, "0,6").split(
        ","))], "single_view 1"),
    ("ume of two-view runs", 30, lambda tmp, data, runs: ["ume", runs / "vanilla", runs / "balanced"],
     "single_view None"),
    ("ume of a missing run", 30, lambda tmp, data, runs: ["ume", tmp / "no0", tmp / "no1"], "not found"),
    ("ume --split nope", 30, lambda tmp, data, runs: ["ume", tmp, tmp, "--split", "nope"], "--split"),
    ("ume --batch-size 0", 30, lambda tmp, data, runs: ["ume", tmp, tmp, "--batch-size", "0"], "--batch-size"),
    # 7: Click's usage errors and the DALI decoder's own lines
    ("train --views 3,99", 7, lambda tmp, data, runs: ["train", "--data", data, "--out", tmp / "r", "--views",
                                                       "3,99"], "99"),  # `--views 3 99` adds a note: test_vocabulary
    ("train --epochs abc", 7, flags("--epochs", "abc"), "--epochs"),
    ("eval-cur without RUN", 7, lambda tmp, data, runs: ["eval-cur"], "run"),
    ("prep without --out", 7, lambda tmp, data, runs: ["prep", "synthetic"], "--out"),
    ("train --loader dali on a truncated JPEG", 7, damaged_jpeg(lambda b: b[:200]), "v00.jpg"),
    ("train --loader dali on a JPEG with a damaged header", 7,
     damaged_jpeg(lambda b: b[:2] + bytes(range(200, 228)) + b[30:]), "v00.jpg"),
    # 31: prep pairs, everything checked before anything is written (a corrupt image: before the old dataset goes)
    ("prep pairs, an image missing", 31, pairs(damage=lambda src: (src / "3b.png").unlink()),
     "3b.png: image is missing"),
    ("prep pairs, a truncated PNG replacing a dataset", 31, pairs(damage=truncated("4a.png"), out="dataset"),
     "4a.png: cannot decode image"),
    ("prep pairs, a text file as an image", 31, pairs(damage=lambda src: (src / "5a.png").write_text("not a png")),
     "5a.png: cannot decode image"),
    ("prep pairs, a folder as an image", 31, pairs(damage=lambda src: ((src / "6a.png").unlink(),
                                                                       (src / "6a.png").mkdir())), "is a folder"),
    ("prep pairs, a label with a slash", 31, pairs(["0a.png,0b.png,cat/dog"]), "label 'cat/dog'"),
    ("prep pairs, an empty label", 31, pairs(["0a.png,0b.png,"]), "label is empty"),
    ("prep pairs, a label with spaces around", 31, pairs(["0a.png,0b.png, cat"]), "spaces around"),
    ("prep pairs, an empty CSV", 31, pairs([], header=None), "the CSV is empty"),
    ("prep pairs, a header only", 31, pairs([]), "no objects"),
    ("prep pairs, a duplicate row", 31, pairs(damage=appended("3a.png,3b.png,cat")), "repeats line 5"),
    ("prep pairs, one image as both views", 31, pairs(["0a.png,0a.png,cat"]), "is the image of view0 on line 2"),
    ("prep pairs, an image in two objects", 31, pairs(damage=appended("3a.png,extra.png,dog")),
     "is the image of view0 on line 5"),
    ("prep pairs, an unknown column", 31, pairs(["0a.png,0b.png,cat,train"], header="view0,view1,label,splt"),
     "unknown: splt"),
    ("prep pairs, no label column", 31, pairs(["0a.png,0b.png"], header="view0,view1"), "must name the columns"),
    ("prep pairs, a row with a field too many", 31, pairs(["0a.png,0b.png,cat,x"]), "line 2 has 4 fields"),
    ("prep pairs, split 'validation'", 31, pairs(split_column("train", "validation", "test"),
                                                 header="view0,view1,label,split"), "split 'validation'"),
    ("prep pairs, a split column without test", 31, pairs(split_column("train", "train", "val"),
                                                         header="view0,view1,label,split"), "split test has no"),
    ("prep pairs, a split column and --test-fraction", 31, pairs(split_column("train", "val", "test"),
                                                                 "--test-fraction", "0.3",
                                                                 header="view0,view1,label,split"),
     "split column decides"),
    ("prep pairs, one class", 31, pairs(damage=lambda src: (src / "objects.csv").write_text(
        (src / "objects.csv").read_text().replace("dog", "cat"))), "two at least"),
    ("prep pairs, an object name twice", 31, pairs(["0a.png,0b.png,cat,x", "1a.png,1b.png,dog,x"],
                                                   header="view0,view1,label,object"), "names must be unique"),
    ("prep pairs --test-fraction 1", 31, pairs(None, "--test-fraction", "1"), "--test-fraction"),
    ("prep pairs without the CSV", 31, lambda tmp, data, runs: ["prep", "pairs", "--out", tmp / "d"], "needs the CSV"),
    ("prep pairs on a CSV that is not there", 31, lambda tmp, data, runs: ["prep", "pairs", tmp / "no.csv", "--out",
                                                                           tmp / "d"], "no such CSV"),
    ("prep synthetic with a CSV", 31, lambda tmp, data, runs: ["prep", "synthetic", tmp / "x.csv", "--out",
                                                               tmp / "d"], "prep pairs CSV"),
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
    ("prep pairs, an image unreadable", lambda w, data, runs: (
        pairs()(w, data, runs), [(w / "src" / "2a.png", 0o000)]), "2a.png: cannot read the image"),
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
