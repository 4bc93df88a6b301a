import json

import pytest

from mmtm.training.config import PRESETS, TrainConfig, from_dict, resolve, to_dict
from mmtm.loaders.errors import UserError


def test_paper_preset_is_spec_section_5():
    cfg = resolve("paper")
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (0.1, 0.0, 0.0, 8, 300)
    assert (cfg.plateau_factor, cfg.plateau_patience, cfg.min_lr, cfg.early_stop_epochs) == (0.3, 10, 1e-6, 5)
    assert (cfg.alpha, cfg.rebalance_steps, cfg.warmup_epochs, cfg.seed, cfg.views) == (0.01, 5, 1, 777, (0, 6))


def test_file_overrides_preset_and_flags_override_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"lr": 0.5, "epochs": 7, "views": [1, 7]}))
    cfg = resolve("demo", f, epochs=3, lr=None)
    assert cfg.lr == 0.5                      # file beats preset
    assert cfg.epochs == 3                    # flag beats file
    assert cfg.width == PRESETS["demo"]["width"]
    assert cfg.views == (1, 7)


def test_round_trip_through_dict():
    cfg = resolve("demo", policy="balanced", speed_window=50)
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


@pytest.mark.parametrize("kw, words", [
    ({"policy": "greedy"}, "policy"), ({"views": (0, -1)}, "out of range"), ({"views": (3, 3)}, "two different"),
    ({"batch_size": 1}, "batch_size"), ({"device": "tpu"}, "device"), ({"lr": -1.0}, "lr"),
])
def test_bad_values_are_one_clear_error(kw, words):
    with pytest.raises(UserError, match=words):
        resolve("paper", **kw)


def test_unknown_key_and_bad_file(tmp_path):
    with pytest.raises(UserError, match="unknown config keys: nope"):
        resolve("paper", nope=1)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        resolve("paper", bad)
    with pytest.raises(UserError, match="unknown preset"):
        resolve("fast")
    assert TrainConfig().validate().policy == "vanilla"
