"""The CUDA paths: bf16 autocast + channels_last training steps and the torch loader's nvJPEG decoding.

Skipped with a reason on machines without a GPU (CI here has none); run them where one is present."""
import pytest
import torch

from loaders.factory import two_view_loader
from mmtm.config import resolve
from mmtm.hardware import Distributed
from mmtm.training import build_trainer, train_step
from mmtm.evaluate import evaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_torch_loader_decodes_on_the_gpu_like_on_the_cpu(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=32)
    cpu = next(iter(two_view_loader(data, "test", batch_size=4, train=False, seed=0, backend="torch", device="cpu")))
    gpu = next(iter(two_view_loader(data, "test", batch_size=4, train=False, seed=0, backend="torch", device="cuda")))
    assert gpu.view0.is_cuda and gpu.label.is_cuda
    assert torch.equal(gpu.index.cpu(), cpu.index)
    assert (gpu.view0.cpu() - cpu.view0).abs().max() < 0.1   # nvJPEG vs libjpeg-turbo: a few levels


def test_bf16_channels_last_steps_learn_on_the_gpu(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=32)
    cfg = resolve("demo", width=8, batch_size=4, policy="balanced", loader="torch", device="cuda")
    t = build_trainer(cfg, 3, torch.device("cuda"), Distributed())
    assert t.compute.amp and t.compute.channels_last
    loader = two_view_loader(data, "train", batch_size=4, train=True, seed=0, backend="torch", device="cuda")
    losses = []
    for epoch in range(40):
        loader.set_epoch(epoch)
        for batch in loader:
            losses.append(train_step(t, batch, "regular")[0])
    for mode in ("rebalance_m0", "rebalance_m1"):
        losses.append(train_step(t, batch, mode)[0])
    assert all(torch.isfinite(torch.tensor(losses)))
    fit = evaluate(t.net, two_view_loader(data, "train", batch_size=4, train=False, seed=0, backend="torch",
                                          device="cuda"), t.compute)
    assert fit["acc"] >= 0.9  # the class colour block is easy to fit
