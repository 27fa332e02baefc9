"""The prefetching batch feeder and the deferred non-finite-loss check (the GPU path's
no-sync-per-step pieces), exercised on CPU."""
import threading

import pytest
import torch

from kdbench.data.feeder import feed
from kdbench.distiller import StepInfo
from kdbench.train.trainer import LossWatch, TrainingError


def frames_and_batches(n=37, bs=8, steps=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 5, 5), dtype=torch.uint8, generator=gen)
    batches = [torch.randperm(n, generator=gen)[:bs] for _ in range(steps)]
    return images, batches


@pytest.mark.parametrize("depth", [0, 1, 2, 5, 20])
def test_feed_yields_exactly_the_plain_gather_in_order(depth):
    images, batches = frames_and_batches()
    feats = torch.randn(len(images), 4, 2)
    got = list(feed({"frames": images, "f": feats}, batches, torch.device("cpu"), depth=depth))
    assert len(got) == len(batches)
    for idx, batch in zip(batches, got):
        assert batch.keys() == {"frames", "f"}
        assert torch.equal(batch["frames"], images[idx]) and torch.equal(batch["f"], feats[idx])


def test_feed_prepares_batches_ahead_and_stops_cleanly():
    images, batches = frames_and_batches(steps=30)
    drawn = []

    def counted():
        for b in batches:
            drawn.append(b)
            yield b

    stream = feed({"frames": images}, counted(), torch.device("cpu"), depth=2)
    assert torch.equal(next(stream)["frames"], images[batches[0]])
    assert len(drawn) == 4  # while step 0 runs, batches 1-3 are already being gathered
    stream.close()  # a run that stops mid-epoch (NaN, Ctrl-C) leaves no worker behind
    assert not any(t.name.startswith("kdbench-feed") for t in threading.enumerate())


def test_feed_of_no_batches_is_empty():
    images, _ = frames_and_batches()
    assert list(feed({"frames": images}, [], torch.device("cpu"))) == []


def info(step):
    return StepInfo(step=step, epoch=0, epochs=1, steps_per_epoch=100, student_lr=1e-3, base_lr=1e-3)


def test_loss_watch_deferred_names_the_first_bad_step_and_term():
    watch = LossWatch(every=4)
    ok = {"ce": torch.tensor(0.7), "kd": torch.tensor(0.1)}
    for step in range(3):
        watch.add(info(step), ok, sum(ok.values()))  # nothing read yet
    bad = {"ce": torch.tensor(0.7), "kd": torch.tensor(float("nan"))}
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 0 step 3: term 'kd' = nan"):
        watch.add(info(3), bad, sum(bad.values()))  # the 4th step triggers the read


def test_loss_watch_epoch_end_check_catches_a_partial_window():
    watch = LossWatch(every=50)
    inf = {"ce": torch.tensor(float("inf"))}
    watch.add(info(0), {"ce": torch.tensor(0.5)}, torch.tensor(0.5))
    watch.add(info(1), inf, inf["ce"])
    watch.add(info(2), inf, inf["ce"])
    with pytest.raises(TrainingError, match=r"step 1: term 'ce' = inf"):
        watch.check()
    watch.check()  # the window was consumed: nothing left to raise


def test_loss_watch_every_step_checks_before_the_backward():
    watch = LossWatch()
    with pytest.raises(TrainingError, match="step 0"):
        watch.add(info(0), {"ce": torch.tensor(float("nan"))}, torch.tensor(float("nan")))
