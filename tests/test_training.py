"""The training engine: batching, determinism, early stopping, checkpoints, resumption."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods.data import UNLABELLED, EmotionData
from emobridge.models import MLPHead
from emobridge.runtime import torch_device
from emobridge.training import (
    EpochContext,
    TrainConfig,
    Trainer,
    TrainingTask,
    collate,
    iterate_batches,
)

torch.set_num_threads(1)


def blobs(n: int = 48, dims: int = 6, seed: int = 0, frames: bool = False,
          shift: float = 0.0) -> EmotionData:
    """Three Gaussian classes; frames of random length when ``frames``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = 2.5 * np.eye(3, dims)
    feats = []
    for y in labels:
        if frames:
            t = int(rng.integers(3, 12))
            feats.append((centres[y] + shift + rng.normal(size=(t, dims))).astype(np.float32))
        else:
            feats.append((centres[y] + shift + 0.5 * rng.normal(size=dims)).astype(np.float32))
    return EmotionData(feats, labels, [f"spk{i % 4}" for i in range(n)], ["xx"] * n,
                       [f"u{i}" for i in range(n)], ("a", "b", "c"))


class TinyNet(nn.Module):
    def __init__(self, dims: int = 6) -> None:
        super().__init__()
        self.head = MLPHead(dims, hidden_dims=(8,), dropout=0.3)
        self.out = nn.Linear(8, 3)

    def forward(self, x, mask=None):
        return self.out(self.head(x, mask))


class CETask(TrainingTask):
    """Cross-entropy on the source stream; records the hooks it saw."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self.calls.append(f"start{ctx.epoch}")

    def training_step(self, batches, ctx):
        b = batches["source"]
        loss = nn.functional.cross_entropy(ctx.model(b.x, b.mask), b.y)
        return {"loss": loss, "ce": loss.detach()}

    def on_epoch_end(self, ctx):
        self.calls.append(f"end{ctx.epoch}")
        return {"progress_end": ctx.progress}


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _train(tmp_path=None, seed=0, epochs=4, **cfg):
    torch.manual_seed(123)  # same initial weights whatever the trainer seed
    model = TinyNet()
    config = TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, device="cpu", seed=seed,
                         lr_decay_every_epochs=2, lr_decay_gamma=0.5, **cfg)
    result = Trainer(config).fit(model, CETask(), {"source": blobs()}, validation=blobs(seed=1))
    return model, result


def test_collate_pads_masks_and_crops():
    feats = [np.ones((5, 2), np.float32), 2 * np.ones((2, 2), np.float32)]
    b = collate(feats, [0, UNLABELLED], [3, 7])
    assert b.x.shape == (2, 5, 2) and b.mask.sum(1).tolist() == [5, 2]
    assert b.x[1, 2:].abs().sum() == 0 and b.labelled.tolist() == [True, False]
    assert b.index.tolist() == [3, 7]
    long = [np.arange(20, dtype=np.float32).reshape(10, 2)]
    crops = {tuple(collate(long, [0], [0], crop_frames=4, rng=np.random.default_rng(s))
                   .x[0, :, 0].tolist()) for s in range(10)}
    assert all(len(c) == 4 for c in crops) and len(crops) > 1  # random windows
    assert collate(feats, [0, 1], [0, 1], crop_frames=4, rng=np.random.default_rng(0)) \
        .mask.sum(1).tolist() == [4, 2]  # short ones stay whole
    with pytest.raises(EmobridgeError, match="rng"):
        collate(long, [0], [0], crop_frames=4)


def test_iterate_batches_covers_every_row_once():
    data = blobs(n=23, frames=True)
    seen = np.concatenate([b.index.numpy() for b in iterate_batches(
        data, 5, shuffle=True, rng=np.random.default_rng(0))])
    assert sorted(seen.tolist()) == list(range(23))
    sorted_batches = list(iterate_batches(data, 5, sort_by_length=True))
    lengths = [int(b.lengths.max()) for b in sorted_batches]
    assert lengths == sorted(lengths)


def test_same_seed_same_weights_different_seed_differs():
    m1, r1 = _train(seed=3)
    m2, r2 = _train(seed=3)
    m3, _ = _train(seed=4)
    for a, b in zip(_weights(m1), _weights(m2), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(_weights(m1), _weights(m3), strict=True))
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]


def test_history_lr_schedule_hooks_and_csv(tmp_path):
    log = tmp_path / "logs" / "curve.csv"
    task = CETask()
    torch.manual_seed(0)
    config = TrainConfig(epochs=3, batch_size=8, lr=5e-2, device="cpu",
                         lr_decay_every_epochs=2, lr_decay_gamma=0.1, log_csv=log,
                         restore_best=False)
    result = Trainer(config).fit(TinyNet(), task, {"source": blobs()}, validation=blobs(seed=1))
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [round(h["lr"], 6) for h in result.history] == [0.05, 0.05, 0.005]
    assert task.calls == ["start0", "end0", "start1", "end1", "start2", "end2"]
    assert result.history[0]["progress_end"] == pytest.approx(1 / 3)
    rows = list(csv.DictReader(log.open()))
    assert len(rows) == 3 and {"loss", "ce", "val_ua", "val_wa", "val_loss"} <= set(rows[0])
    assert result.history[-1]["val_ua"] > 0.9  # the blobs are separable


def test_secondary_streams_are_cycled():
    seen: dict[str, list[int]] = {"source": [], "target": []}
    steps = []

    def step(batches, ctx):
        for name, b in batches.items():
            seen[name].extend(b.index.tolist())
        steps.append(ctx.step_in_epoch)
        loss = ctx.model(batches["source"].x).sum() * 0 + ctx.model(batches["target"].x).sum()
        return {"loss": loss}

    config = TrainConfig(epochs=1, batch_size=4, device="cpu")
    Trainer(config).fit(TinyNet(), step, {"source": blobs(n=20), "target": blobs(n=6)})
    assert steps == [0, 1, 2, 3, 4]  # ceil(20 / 4) steps, driven by the primary stream
    assert sorted(seen["source"]) == list(range(20))
    assert len(seen["target"]) == 20 and set(seen["target"]) == set(range(6))


def test_early_stopping_stops_and_restores_best(tmp_path):
    # A learning rate so small the predictions never change: val_ua never improves after
    # epoch 1, so patience 2 stops after epoch 3.
    torch.manual_seed(0)
    model = TinyNet()
    config = TrainConfig(epochs=30, batch_size=8, lr=1e-12, patience=2, device="cpu",
                         checkpoint_dir=tmp_path)
    result = Trainer(config).fit(model, CETask(), {"source": blobs()}, validation=blobs(seed=1))
    assert result.stopped_early and result.epochs_run == 3 and len(result.history) == 3
    assert result.best_epoch == 1
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, best["model"][name])


def test_without_patience_runs_every_epoch():
    _, result = _train(epochs=3)
    assert result.epochs_run == 3 and not result.stopped_early


class Interrupt(Exception):
    pass


class StatefulTask(CETask):
    """Counts steps in per-run state (checkpointed) and can crash mid-run."""

    def __init__(self, crash_at_epoch: int | None = None) -> None:
        super().__init__()
        self.crash_at_epoch = crash_at_epoch
        self.steps = 0

    def training_step(self, batches, ctx):
        self.steps += 1
        return super().training_step(batches, ctx)

    def on_epoch_start(self, ctx):
        if ctx.epoch == self.crash_at_epoch:
            raise Interrupt()

    def training_state(self):
        return {"steps": self.steps}

    def load_training_state(self, state):
        self.steps = state["steps"]


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    def run(ckpt, crash=None, resume=False):
        torch.manual_seed(99)
        model = TinyNet()
        config = TrainConfig(epochs=5, batch_size=8, lr=1e-2, device="cpu", seed=7,
                             crop_frames=None, lr_decay_every_epochs=2, lr_decay_gamma=0.5,
                             checkpoint_dir=ckpt, resume=resume, log_csv=ckpt / "log.csv")
        task = StatefulTask(crash)
        result = Trainer(config).fit(model, task, {"source": blobs(), "target": blobs(n=10)},
                                     validation=blobs(seed=1))
        return model, result, task

    full_model, full_result, full_task = run(tmp_path / "a")
    with pytest.raises(Interrupt):
        run(tmp_path / "b", crash=3)
    assert (tmp_path / "b" / "last.pt").exists()
    resumed_model, resumed_result, resumed_task = run(tmp_path / "b", resume=True)
    assert resumed_result.resumed_from_epoch == 3
    for a, b in zip(_weights(full_model), _weights(resumed_model), strict=True):
        assert torch.equal(a, b)
    assert [h["loss"] for h in full_result.history] == \
        [h["loss"] for h in resumed_result.history]
    assert resumed_task.steps == full_task.steps  # task state came back from the checkpoint
    assert len(list(csv.DictReader((tmp_path / "b" / "log.csv").open()))) == 5
    # Resuming a finished run trains no more and returns its result.
    again_model, again, _ = run(tmp_path / "b", resume=True)
    assert again.epochs_run == 5 and len(again.history) == 5
    for a, b in zip(_weights(full_model), _weights(again_model), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_changed_settings(tmp_path):
    torch.manual_seed(0)
    Trainer(TrainConfig(epochs=1, batch_size=8, device="cpu", checkpoint_dir=tmp_path)).fit(
        TinyNet(), CETask(), {"source": blobs()})
    config = TrainConfig(epochs=2, batch_size=8, lr=0.5, device="cpu", checkpoint_dir=tmp_path,
                         resume=True)
    with pytest.raises(ConfigError, match="lr"):
        Trainer(config).fit(TinyNet(), CETask(), {"source": blobs()})


def test_frame_streams_with_crop_train():
    torch.manual_seed(0)
    model = TinyNet()
    config = TrainConfig(epochs=15, batch_size=8, lr=2e-2, device="cpu", crop_frames=4)
    Trainer(config).fit(model, CETask(), {"source": blobs(frames=True)})
    test = blobs(seed=5, frames=True)
    pred = Trainer(config).predict_logits(model, test).argmax(1)
    assert (pred == test.labels).mean() > 0.9


def test_config_and_input_errors():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        TrainConfig(resume=True)
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"lr_decay_gamma": 0.0},
                {"max_grad_norm": float("nan")}, {"weight_decay": -1.0}):
        with pytest.raises(ConfigError, match=f"{next(iter(bad))} must be a finite number"):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match="CUDA"):
        if torch.cuda.is_available():
            raise ConfigError("CUDA present: nothing to check")
        torch_device("cuda")
    assert torch_device("auto").type in ("cpu", "cuda")
    trainer = Trainer(TrainConfig(epochs=1, device="cpu"))
    with pytest.raises(EmobridgeError, match="'loss'"):
        trainer.fit(TinyNet(), lambda b, c: {"ce": torch.tensor(1.0)}, {"source": blobs()})
    with pytest.raises(EmobridgeError, match="no labels"):
        trainer.fit(TinyNet(), CETask(), {"source": blobs()},
                    validation=blobs().without_labels())
    with pytest.raises(EmobridgeError, match="primary"):
        trainer.fit(TinyNet(), CETask(), {"source": blobs()}, primary="target")


def test_tensorboard_is_optional(tmp_path):
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", tensorboard_dir=tmp_path / "tb")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="tensorboard"):
            Trainer(config).fit(TinyNet(), CETask(), {"source": blobs()})
    else:
        Trainer(config).fit(TinyNet(), CETask(), {"source": blobs()})
        assert any((tmp_path / "tb").iterdir())


def test_epoch_hooks_can_replace_streams_and_freeze_layers():
    from emobridge.training import set_trainable

    sizes = []

    class Rebuild(CETask):
        def on_epoch_start(self, ctx):
            set_trainable(ctx.model.head, ctx.epoch == 0)  # frozen from epoch 1 on
            if ctx.epoch == 1:
                ctx.streams["source"] = ctx.streams["source"].subset(np.arange(8))

        def training_step(self, batches, ctx):
            sizes.append((ctx.epoch, int(batches["source"].index.max())))
            return super().training_step(batches, ctx)

    torch.manual_seed(0)
    model = TinyNet()
    config = TrainConfig(epochs=3, batch_size=4, lr=1e-2, device="cpu")
    frozen_before = None

    def snapshot(ctx):
        nonlocal frozen_before
        if ctx.epoch == 0:
            frozen_before = _weights(ctx.model.head)

    task = Rebuild()
    task.on_epoch_end = lambda ctx: snapshot(ctx)
    Trainer(config).fit(model, task, {"source": blobs(n=24)})
    assert sum(1 for e, _ in sizes if e == 0) == 6  # 24 rows / 4
    assert sum(1 for e, _ in sizes if e >= 1) == 4 and max(m for e, m in sizes if e >= 1) < 8
    for a, b in zip(frozen_before, _weights(model.head), strict=True):
        assert torch.equal(a, b)


class _Planted:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_planted_checkpoint_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"format": 1, "payload": _Planted(str(marker))}, ckpt / "last.pt")
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", checkpoint_dir=ckpt,
                         resume=True)
    with pytest.raises(EmobridgeError) as info:
        Trainer(config).fit(TinyNet(), CETask(), {"source": blobs()})
    message = str(info.value)
    assert str(ckpt / "last.pt") in message and "\n" not in message
    assert not marker.exists()  # the payload never ran


def test_checkpoint_rng_state_round_trips_through_a_safe_load(tmp_path):
    import random

    from emobridge.training import load_checkpoint, rng_state, set_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EmobridgeError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_seeds_are_checked_once_for_every_library():
    from emobridge.runtime import MAX_SEED, check_seed, seed_everything

    assert check_seed(np.int64(7)) == 7 and check_seed(MAX_SEED) == MAX_SEED
    for bad in (-1, MAX_SEED + 1, 2**70, True, 1.5, "3"):
        with pytest.raises(ConfigError, match="seed must be an integer in 0 .. 4294967295"):
            check_seed(bad)
    with pytest.raises(ConfigError, match="seed must be"):
        seed_everything(2**64)  # torch would overflow, numpy would wrap
