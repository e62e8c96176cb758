"""fit's callbacks: what each hook sees, on_epoch alongside them, and what a callback keeps in
the checkpoint coming back on resume."""

import pandas as pd
import torch

from ppvae.config import ArchConfig, DataShape
from ppvae.data import load_dataset
from ppvae.guides import GUIDES
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.callbacks import Callback
from ppvae.infer.fitting import FitConfig, fit
from ppvae.models import MODELS

CONFIG = FitConfig(epochs=2, batch_size=256, device="cpu")


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, start):
        self.start, self.before = start, start.kept("recorder")
        start.keep("recorder", {"started_at": len(start.history)})
        self.calls.append(("start", len(start.history)))

    def on_epoch_end(self, row, history):
        self.calls.append(("epoch", row))
        self.history = history

    def on_checkpoint(self, path):
        self.calls.append(("checkpoint", path))

    def on_train_end(self, result, out=None):
        self.calls.append(("end", result, out))


def pair():
    data = load_dataset("digits")
    torch.manual_seed(0)
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    arch = ArchConfig(z_dim=2, hidden=(16,))
    model = MODELS["bernoulli"](arch, shape)
    return model, GUIDES["diag"](arch, shape, model), data


def test_each_hook_sees_its_moment_and_on_epoch_still_runs(tmp_path):
    model, guide, data = pair()
    seen, recorder, path = [], Recorder(), tmp_path / "c.pt"
    info = {"note": "mine"}
    result = fit(
        model, guide, data, CONFIG, checkpoint=path, progress=False, run_info=info,
        on_epoch=seen.append, callbacks=[recorder],
    )  # fmt: skip
    kinds = [c[0] for c in recorder.calls]
    assert kinds == ["start", "checkpoint", "epoch", "checkpoint", "epoch", "end"]
    assert recorder.start.config == CONFIG and not recorder.start.resumed
    assert recorder.start.run_info["note"] == "mine" and info == {"note": "mine"}  # a copy
    rows = [c[1] for c in recorder.calls if c[0] == "epoch"]
    pd.testing.assert_frame_equal(pd.DataFrame(rows), result.history, check_dtype=False)
    pd.testing.assert_frame_equal(seen[-1], result.history)  # on_epoch: the same history
    assert all(c[1] == path for c in recorder.calls if c[0] == "checkpoint")
    assert recorder.calls[-1][1] is result and recorder.calls[-1][2] is None
    saved = ckpt.load(path)["run"]
    assert saved == {"note": "mine", "trackers": {"recorder": {"started_at": 0}}}


def test_a_resumed_fit_hands_back_what_callbacks_kept(tmp_path):
    model, guide, data = pair()
    path = tmp_path / "c.pt"
    first = fit(
        model, guide, data, CONFIG, checkpoint=path, progress=False, callbacks=[Recorder()]
    )
    model, guide, data = pair()
    again = Recorder()
    longer = FitConfig(epochs=3, batch_size=256, device="cpu")
    fit(
        model, guide, data, longer, checkpoint=path, resume=True, progress=False, callbacks=[again]
    )
    assert again.start.resumed and again.before == {"started_at": 0}  # kept by the first fit
    pd.testing.assert_frame_equal(again.start.history, first.history)
    assert [c[1]["epoch"] for c in again.calls if c[0] == "epoch"] == [3]


def test_only_rank_0_calls_them(monkeypatch):
    from ppvae import distributed

    monkeypatch.setattr(distributed, "is_main", lambda: False)
    model, guide, data = pair()
    recorder = Recorder()
    fit(model, guide, data, CONFIG, progress=False, callbacks=[recorder])
    assert recorder.calls == []
