"""Training data: the seeded batch stream, the memory check, and a resume on other images."""

from __future__ import annotations

import pytest
from PIL import Image

from dtools import train as training
from dtools.errors import DtoolsError
from dtools.tensorfile import read_header
from dtools.train import data as train_data
from dtools.train.data import BatchStream, load_images

pytestmark = pytest.mark.usefixtures("one_thread")


def test_batch_stream_reshuffles_each_epoch_and_restores():
    s = BatchStream(5, seed=3)
    seen = [s.next(3).tolist() for _ in range(5)]  # 15 indices = 3 epochs
    flat = sum(seen, [])
    for e in range(3):
        assert sorted(flat[5 * e : 5 * e + 5]) == [0, 1, 2, 3, 4]
    assert flat[:5] != flat[5:10] or flat[5:10] != flat[10:]
    s = BatchStream(5, seed=3)
    s.next(4)
    tensors, info = s.state()
    copy = BatchStream.restore(tensors, info)
    assert [s.next(3).tolist() for _ in range(4)] == [copy.next(3).tolist() for _ in range(4)]


def test_data_that_would_not_fit_in_memory_is_refused(data8, monkeypatch):
    monkeypatch.setattr(train_data, "available_memory", lambda: 9000)  # 24 images of 8x8x3 need 4,608 bytes
    with pytest.raises(DtoolsError, match=r"need 4\.5 KiB in memory, but only 8\.8 KiB is free"):
        load_images(str(data8))


def test_changed_data_is_refused_on_resume(data8, tmp_path, config, fit, emoji, betas):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1))
    other = emoji(tmp_path / "other", 24, 8)
    (other / "000000.png").unlink()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(other / "000000.png")
    cfg = training.TrainConfig.from_dict({**config(data8, run).to_dict(), "data": str(other)}, betas)
    saved = read_header(run / training.STATE_FILE, "dtools.train-state")["train"]
    cfg.data_fingerprint = saved["data_fingerprint"]
    with pytest.raises(DtoolsError, match="not the images the run"):
        fit(cfg, resume=True)
