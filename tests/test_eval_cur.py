"""`mmtm eval-cur`: both CUR passes, every key of cur.json, the checkpoint left untouched, loaders agreeing."""
import hashlib
import json

import pytest

from helpers import invoke


def test_eval_cur_writes_every_key_and_leaves_checkpoint_untouched(trained_runs):
    run = trained_runs / "balanced"
    before = hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    r = invoke("eval-cur", run, "--json")
    assert r.exit_code == 0, r.output
    cur = json.loads((run / "cur.json").read_text())
    for key in ("acc", "acc_m0", "acc_m1", "acc_m0_only", "acc_m1_only", "u_m1_given_m0", "u_m0_given_m1",
                "d_util", "checkpoint", "split", "n"):
        assert key in cur
    assert cur["split"] == "test" and cur["n"] > 0
    assert cur["d_util"] == pytest.approx(cur["u_m1_given_m0"] - cur["u_m0_given_m1"])
    assert cur["u_m1_given_m0"] == pytest.approx((cur["acc_m0"] - cur["acc_m0_only"]) / cur["acc_m0"])
    assert hashlib.sha256((run / "best.pt").read_bytes()).hexdigest() == before


def test_eval_cur_gives_the_same_numbers_with_either_loader(trained_runs):
    pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    results = {}
    for backend in ("torch", "dali"):
        r = invoke("eval-cur", trained_runs / "random", "--loader", backend, "--json")
        assert r.exit_code == 0, r.output
        results[backend] = json.loads((trained_runs / "random" / "cur.json").read_text())
    for key in ("acc", "acc_m0", "acc_m1", "acc_m0_only", "acc_m1_only", "d_util"):
        assert results["dali"][key] == pytest.approx(results["torch"][key], abs=1e-6), key


def test_eval_cur_is_float32_and_equals_a_direct_evaluation(trained_runs):
    """cur.json in fp32 equals the two passes done by hand with the plain (float32) CPU evaluation."""
    import torch

    from mmtm.loaders.factory import two_view_loader
    from mmtm.training.checkpoint import load_checkpoint
    from mmtm.training.config import from_dict
    from mmtm.analysis.evaluate import evaluate
    from mmtm.training.hardware import Compute
    from mmtm.science.network import build_network
    from mmtm.science.utilization import collect_mean_squeeze, cur_from_accuracies

    run = trained_runs / "vanilla"
    r = invoke("eval-cur", run, "--checkpoint", "last", "--json")
    assert r.exit_code == 0, r.output
    cur = json.loads((run / "cur-last.json").read_text())
    assert cur["precision"] == "float32" and cur["checkpoint"].endswith("last.pt")

    ckpt = load_checkpoint(run / "last.pt")
    cfg = from_dict(ckpt["config"])
    net = build_network(cfg, len(ckpt["classes"]))
    net.load_state_dict(ckpt["model"])
    make = lambda split: two_view_loader(cfg.data, split, views=cfg.views, batch_size=32, train=False,  # noqa: E731
                                         seed=cfg.seed, backend=cfg.loader, device="cpu")
    collect_mean_squeeze(net, make("train"))
    cpu = Compute(torch.device("cpu"))
    regular, flow_off = evaluate(net, make("test"), cpu), evaluate(net, make("test"), cpu, mode="flow_off")
    assert (cur["acc"], cur["acc_m0"], cur["acc_m1"]) == (regular["acc"], regular["acc_m0"], regular["acc_m1"])
    assert (cur["acc_m0_only"], cur["acc_m1_only"]) == (flow_off["acc_m0"], flow_off["acc_m1"])
    assert cur["d_util"] == cur_from_accuracies(regular["acc_m0"], regular["acc_m1"], flow_off["acc_m0"],
                                                flow_off["acc_m1"])["d_util"]
    assert Compute(torch.device("cpu"), amp=True).fp32().amp is False


def test_only_the_test_split_of_best_and_last_goes_to_cur_json_and_cur_last_json(trained_runs, tmp_path):
    """Another split or checkpoint writes a file that names both, and says which objects it was drawn from."""
    import shutil

    run = shutil.copytree(trained_runs / "random", tmp_path / "run", ignore=shutil.ignore_patterns("cur*.json"))
    other = shutil.copy(run / "best.pt", tmp_path / "epoch1.pt")
    for extra, name in ((["--checkpoint", "last", "--split", "val"], "cur-val-last.json"),
                        (["--split", "train"], "cur-train-best.json"),
                        (["--checkpoint", other], "cur-test-epoch1.pt.json"),
                        (["--checkpoint", run / "last.pt"], "cur-last.json")):
        r = invoke("eval-cur", run, *extra)
        assert r.exit_code == 0, r.output
        assert f"wrote {run / name}" in r.output
    assert sorted(p.name for p in run.glob("cur*.json")) == ["cur-last.json", "cur-test-epoch1.pt.json",
                                                             "cur-train-best.json", "cur-val-last.json"]
    val = json.loads((run / "cur-val-last.json").read_text())
    assert val["split"] == "val" and "objects of the val split" in val["intervals"]["method"]
    assert "test" not in val["intervals"]["method"] and "Wilson score" in val["intervals"]["method"]
    test = json.loads((run / "cur-last.json").read_text())
    assert test["split"] == "test" and f"over the {test['n']} test objects" in test["intervals"]["method"]

def test_probe_finds_the_classes_in_the_branch_whose_view_shows_them(make_dataset, tmp_path):
    """A hand-made run: view 0 of every object is its class colour and nothing else, view 6 one and the same image
    for every object. With the cross-modal flow off, branch 0's features are three points, one per class (probe
    accuracy 1), branch 1's one point (chance: a third of the balanced test set). In regular fusion branch 1 sees
    view 0 through the MMTMs."""
    from PIL import Image

    from conftest import class_colour
    from helpers import TINY

    data = make_dataset(tmp_path, classes=3, per_split={"train": 8, "val": 2, "test": 6})
    for label in range(3):
        for folder in (data / "images" / f"c{label}").iterdir():
            Image.new("RGB", (16, 16), class_colour(label)).save(folder / "v00.jpg", quality=95, subsampling=0)
            Image.new("RGB", (16, 16), (90, 90, 90)).save(folder / "v06.jpg", quality=95, subsampling=0)
    run = tmp_path / "run"
    assert invoke("train", "--data", data, "--out", run, *TINY, "--epochs", 1).exit_code == 0
    r = invoke("eval-cur", run, "--probe", "--json")
    assert r.exit_code == 0, r.output
    cur = json.loads((run / "cur.json").read_text())
    assert cur["probe_m0_only"] == 1.0
    assert cur["probe_m1_only"] == pytest.approx(1 / 3)
    assert {"probe_m0", "probe_m1", "probe_recipe"} <= set(cur)
    assert "probe_m0" not in json.loads(invoke("eval-cur", run, "--json").output)  # only when asked


def test_probe_fits_separable_features_and_not_noise():
    import torch

    from mmtm.analysis.probe import probe_accuracy

    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    separable = torch.nn.functional.one_hot(y, 3).double() * 4 + torch.randn(300, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(300, 8, generator=g, dtype=torch.float64)
    assert probe_accuracy((separable[:150], y[:150]), (separable[150:], y[150:]), 3) >= 0.95
    assert abs(probe_accuracy((noise[:150], y[:150]), (noise[150:], y[150:]), 3) - 1 / 3) < 0.15
