"""Resuming a run: after kill -9 it ends exactly like an uninterrupted one and leaves no temporary file; resuming on
other data is refused."""
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import invoke, read_csv, run_mmtm, start_mmtm, stop_after_epoch, train_args
from mmtm.training.checkpoint import load_checkpoint


# Each policy with flags that make it act within 4 tiny epochs of 3 steps (α = 0 re-balances: its first re-balancing
# run crosses the stop after epoch 2; G-Blending estimates every 2 epochs). The resume must keep the step cap too.
POLICY_FLAGS = {"vanilla": [], "balanced": ["--alpha", "0"], "random": [], "flipped": ["--alpha", "0"],
                "ogm-ge": [], "g-blending": ["--gb-interval", "2"], "moddrop": [], "pmr": [], "mmpareto": [],
                "agm": ["--agm-end-epoch", "3"], "opm": ["--opm-warmup-epochs", "1", "--opm-ogm", "ogm-ge"],
                "relearn": ["--relearn-interval", "1"]}


def same_run(a, b) -> None:
    """Two run folders hold the same epochs (but for their seconds), steps and final weights."""
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(read_csv(b / "epochs.csv")) == drop(read_csv(a / "epochs.csv"))
    assert read_csv(b / "steps.csv") == read_csv(a / "steps.csv")
    wa, wb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k


@pytest.mark.parametrize("policy", POLICY_FLAGS)
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(synthetic_data, tmp_path, policy, monkeypatch):
    """Every policy's state (its RNG, counters, prototypes, blend weights), the CLS meter, the optimiser, the
    schedule and the data order survive a stop right after epoch 2's checkpoint: the run resumed from last.pt
    ends bit for bit like one never stopped."""
    resumes_exactly(synthetic_data, tmp_path, monkeypatch, ["--policy", policy, *POLICY_FLAGS[policy]])


def test_a_resumed_umt_run_ends_exactly_like_an_uninterrupted_one(synthetic_data, tmp_path, monkeypatch):
    """UMT keeps no state of its own: its teachers, loaded again from their run folders, must teach alike."""
    from helpers import TINY
    for view in (0, 6):
        r = invoke("train", "--data", synthetic_data, "--out", tmp_path / f"sv{view}", *TINY, "--epochs", 1,
                   "--single-view", view)
        assert r.exit_code == 0, r.output
    resumes_exactly(synthetic_data, tmp_path, monkeypatch,
                    ["--policy", "umt", "--teachers", f"{tmp_path / 'sv0'},{tmp_path / 'sv6'}"])


def resumes_exactly(synthetic_data, tmp_path, monkeypatch, policy_flags) -> None:
    from helpers import TINY

    flags = [*policy_flags, *TINY, "--epochs", 4, "--max-steps-per-epoch", 3]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert invoke("train", "--data", synthetic_data, "--out", full, *flags).exit_code == 0
    stop_after_epoch(monkeypatch, 2)
    assert invoke("train", "--data", synthetic_data, "--out", cut, *flags).exit_code == 130
    monkeypatch.undo()
    assert load_checkpoint(cut / "last.pt")["epoch"] == 2
    r = invoke("train", "--data", synthetic_data, "--out", cut, *flags, "--resume")
    assert r.exit_code == 0, r.output
    same_run(full, cut)


@pytest.mark.slow
def test_kill_9_then_resume_ends_like_an_uninterrupted_run(synthetic_data, tmp_path):
    """A run killed mid-epoch (a real process, kill -9) resumes from its last checkpoint to the same end; one
    policy stands for all (what a kill can break is the checkpoint on disk, the same for every policy; each
    policy's own state is covered by the in-process resume test above)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    flags = ["--policy", "balanced", "--alpha", "0"]
    epochs = 8  # long enough after the first checkpoint that the kill lands in a loaded machine too
    assert run_mmtm(*train_args(synthetic_data, full, *flags, epochs=epochs)) == 0

    proc = start_mmtm(*train_args(synthetic_data, cut, *flags, epochs=epochs))
    deadline = time.time() + 120
    while not (cut / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # into the next epoch
    proc.kill()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL, "the run finished before it could be killed"
    done = load_checkpoint(cut / "last.pt")["epoch"]
    assert done < epochs
    assert run_mmtm(*train_args(synthetic_data, cut, *flags, "--resume", epochs=epochs)) == 0
    assert [p.name for p in cut.iterdir() if p.name.startswith(".")] == []
    same_run(full, cut)


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_save_then_resume_leaves_no_temporary(synthetic_data, trained_runs, tmp_path):
    run = shutil.copytree(trained_runs / "vanilla", tmp_path / "run")
    saving = """
import sys, time
from mmtm.loaders.atomic import atomic_write_bytes
def half_written(f):
    f.write(b"half a checkpoint"); f.flush(); print("writing", flush=True); time.sleep(60)
atomic_write_bytes(sys.argv[1], half_written)
"""
    proc = subprocess.Popen([sys.executable, "-c", saving, str(run / "last.pt")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in run.iterdir() if p.name.startswith(".last.pt.tmp-")]  # what the kill left
    r = invoke("train", "--data", synthetic_data, "--out", run, "--resume")
    assert r.exit_code == 0, r.output
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
    assert load_checkpoint(run / "last.pt")["epoch"] == 2  # the checkpoint the kill did not replace


def test_resume_on_other_classes_is_refused(synthetic_data, trained_runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(synthetic_data, other)
    meta = json.loads((other / "dataset.json").read_text())
    meta["classes"] = list(reversed(meta["classes"]))
    (other / "dataset.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    shutil.copytree(trained_runs / "vanilla", run)
    r = invoke("train", "--data", other, "--out", run, "--resume")
    assert r.exit_code == 2 and "classes differ" in r.output


def test_resume_may_change_where_and_how_a_run_executes_but_not_what_it_trains(synthetic_data, trained_runs,
                                                                                tmp_path):
    """A moved run resumed on another device, loader thread count or copy of the data goes on (a sweep resumes its
    runs with the thread share of the moment); config.json then still describes what was trained."""
    run = shutil.copytree(trained_runs / "vanilla", tmp_path / "run")
    data = shutil.copytree(synthetic_data, tmp_path / "moved")
    before = json.loads((run / "config.json").read_text())
    r = invoke("train", "--out", run, "--resume", "--data", data, "--loader-threads", 1, "--device", "cpu")
    assert r.exit_code == 0, r.output
    after = json.loads((run / "config.json").read_text())
    assert {k for k in before if before[k] != after[k]} == {"data", "out", "num_threads"}  # a moved run


def test_a_disk_that_fills_up_mid_run_is_one_error_line_and_the_resume_ends_like_an_uninterrupted_run(
        synthetic_data, tmp_path, monkeypatch):
    """Every write after the first checkpoint fails as on a full disk (ENOSPC at fsync, after the bytes went to the
    page cache): one error line, no row or temporary half-written, and the run resumes to the same end."""
    import errno
    import os

    from helpers import TINY

    flags = [*TINY, "--epochs", 2, "--max-steps-per-epoch", 3]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert invoke("train", "--data", synthetic_data, "--out", full, *flags).exit_code == 0
    fsync = os.fsync

    def full_disk_after_a_checkpoint(fd):
        if (cut / "last.pt").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_after_a_checkpoint)
    r = invoke("train", "--data", synthetic_data, "--out", cut, *flags)
    monkeypatch.undo()
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 2 and lines[0].startswith("epoch   0"), r.output
    assert lines[1].startswith("error: ") and "no space left" in lines[1] and "steps.csv" in lines[1]
    assert [p.name for p in cut.iterdir() if p.name.startswith(".")] == []
    assert {r["epoch"] for r in read_csv(cut / "steps.csv")} == {"0"} and len(read_csv(cut / "epochs.csv")) == 1
    r = invoke("train", "--data", synthetic_data, "--out", cut, *flags, "--resume")
    assert r.exit_code == 0, r.output
    same_run(full, cut)

def test_a_run_records_its_data_digest_and_its_summary_carries_it(synthetic_data, trained_runs):
    from mmtm.loaders.dataset import data_digest
    from mmtm.analysis.evidence import digest

    record = json.loads((trained_runs / "vanilla" / "data.json").read_text())
    assert record == {"data": str(synthetic_data.resolve()), "digest": data_digest(synthetic_data)}
    assert digest(trained_runs / "vanilla")["data_digest"] == record["digest"]


def test_resume_on_data_whose_split_files_changed_is_refused(synthetic_data, trained_runs, tmp_path):
    """Same classes and views, so only the recorded digest tells that the data is not the data the run began on."""
    run = shutil.copytree(trained_runs / "vanilla", tmp_path / "run")
    other = shutil.copytree(synthetic_data, tmp_path / "other")
    lines = (other / "splits" / "test.csv").read_text().splitlines(keepends=True)
    (other / "splits" / "test.csv").write_text("".join(lines[:-1]))  # one test object fewer
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    r = invoke("train", "--data", other, "--out", run, "--resume")
    assert r.exit_code == 2 and "data.json" in r.output and "digest" in r.output, r.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_training_a_run_folder_another_process_trains_is_refused(synthetic_data, trained_runs, tmp_path):
    run = shutil.copytree(trained_runs / "vanilla", tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmtm.loaders.atomic import hold; "
                               "hold(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(run / ".run.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        r = invoke("train", "--data", synthetic_data, "--out", run, "--resume")
        assert r.exit_code == 2 and f"pid {holder.pid}" in r.output and "is training this run" in r.output, r.output
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()
    assert invoke("train", "--data", synthetic_data, "--out", run, "--resume").exit_code == 0
    assert not (run / ".run.lock").exists()


def test_an_interrupted_run_says_how_to_continue_and_the_resume_says_from_where(synthetic_data, tmp_path, monkeypatch):
    """Ctrl-C after the first epoch's checkpoint names the command that continues; --resume says from which epoch,
    and once the run is complete says there is nothing to train."""
    from helpers import TINY
    from mmtm.training.progress import TrainProgress

    end_epoch = TrainProgress.end_epoch

    def ctrl_c_after_epoch_0(self, row):
        end_epoch(self, row)
        if row["epoch"] == 0:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    flags = ["--data", synthetic_data, "--out", run, *TINY, "--epochs", 2, "--max-steps-per-epoch", 2]
    monkeypatch.setattr(TrainProgress, "end_epoch", ctrl_c_after_epoch_0)
    r = invoke("train", *flags)
    monkeypatch.undo()
    assert r.exit_code == 130 and f"interrupted: continue with `mmtm train --out {run} --resume`" in r.output, r.output
    r = invoke("train", *flags, "--resume")
    assert r.exit_code == 0 and f"note: resuming {run} from last.pt after epoch 0 (1 of 2 done)" in r.output, r.output
    assert [row["epoch"] for row in read_csv(run / "epochs.csv")] == ["0", "1"]
    r = invoke("train", *flags, "--resume")
    assert r.exit_code == 0, r.output
    assert f"note: {run} is complete: all 2 epochs are trained; nothing to train" in r.output, r.output
