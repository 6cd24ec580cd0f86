"""The generated dataset: deterministic from the seed, valid boxes that match the drawn shapes."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from hmpe.data.formats import DataError, load_data_config, load_dataset
from hmpe.data.synthetic import SYNTHETIC_NAMES, SyntheticDataset


def _digest(dataset: SyntheticDataset, index: int) -> str:
    sample = dataset.samples[index]
    payload = dataset.render(index).tobytes() + sample.boxes.tobytes() + sample.labels.tobytes()
    return hashlib.sha256(payload).hexdigest()


def test_same_seed_same_pixels_and_boxes():
    a, b = SyntheticDataset(12, 96, seed=3), SyntheticDataset(12, 96, seed=3)
    for i in range(12):
        np.testing.assert_array_equal(a.samples[i].boxes, b.samples[i].boxes)
        np.testing.assert_array_equal(a.samples[i].labels, b.samples[i].labels)
        np.testing.assert_array_equal(a.render(i), b.render(i))
    np.testing.assert_array_equal(a.render(5), a.render(5))  # repeated calls, any order


def test_image_depends_only_on_seed_stream_and_index():
    short, long = SyntheticDataset(3, 96, seed=3), SyntheticDataset(40, 96, seed=3)
    assert _digest(short, 2) == _digest(long, 2)
    other_seed, val_stream = SyntheticDataset(3, 96, seed=4), SyntheticDataset(3, 96, seed=3, stream=1)
    assert _digest(short, 2) != _digest(other_seed, 2)
    assert _digest(short, 2) != _digest(val_stream, 2)


def test_identical_in_another_process():
    code = (
        "import hashlib; from hmpe.data.synthetic import SyntheticDataset as S;"
        "d = S(8, 96, seed=11); s = d.samples[7];"
        "print(hashlib.sha256(d.render(7).tobytes() + s.boxes.tobytes() + s.labels.tobytes()).hexdigest())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == _digest(SyntheticDataset(8, 96, seed=11), 7)


def test_boxes_valid_sizes_counts_and_negatives():
    dataset = SyntheticDataset(300, (160, 224), seed=0)
    counts = [len(s.labels) for s in dataset.samples]
    assert max(counts) <= 12 and 10 <= counts.count(0) <= 55  # ~10 % negatives
    for sample in dataset.samples:
        assert (sample.width, sample.height, sample.path) == (224, 160, None)
        boxes = sample.boxes
        if not len(boxes):
            continue
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 224) and np.all(boxes[:, 3] <= 160)
        sizes = boxes[:, 2:] - boxes[:, :2]
        assert np.all(sizes >= 8 - 1e-4) and np.all(sizes <= 48 + 1e-4)
        assert np.all((sample.labels >= 0) & (sample.labels < len(SYNTHETIC_NAMES)))
    all_labels = np.concatenate([s.labels for s in dataset.samples])
    assert set(all_labels.tolist()) == set(range(len(SYNTHETIC_NAMES)))
    assert dataset.render(0).shape == (160, 224, 3) and dataset.render(0).dtype == np.uint8


def test_filled_shapes_are_visible_at_their_box_centre():
    """Circles and squares are filled: the centre pixel must stand out from the pixels just outside the box."""
    dataset = SyntheticDataset(40, 160, seed=1)
    contrasts = []
    for index, sample in enumerate(dataset.samples):
        image = dataset.render(index).astype(np.float32)
        for (x1, y1, x2, y2), label in zip(sample.boxes, sample.labels):
            if label not in (0, 1) or min(x1, y1) < 3 or x2 > 157 or y2 > 157:
                continue
            centre = image[int((y1 + y2) / 2), int((x1 + x2) / 2)]
            around = np.concatenate([image[int(y1) - 2, int(x1):int(x2)], image[int(y2) + 2, int(x1):int(x2)]])
            contrasts.append(np.linalg.norm(centre - around.mean(axis=0)))
    assert len(contrasts) > 20
    assert np.mean(np.array(contrasts) > 25) > 0.9


def test_config_splits_and_errors():
    cfg = load_data_config("synthetic") | {"num_train": 6, "num_val": 4, "imgsz": 64}
    train, names = load_dataset(cfg, "train")
    val, _ = load_dataset(cfg, "val")
    assert names == list(SYNTHETIC_NAMES) and (len(train), len(val)) == (6, 4)
    assert train[0].width == 64
    assert not all(np.array_equal(a.boxes, b.boxes) for a, b in zip(train, val))
    with pytest.raises(DataError, match="synthetic.yaml: no 'num_test'"):
        load_dataset(cfg, "test")
    with pytest.raises(DataError, match="names must be"):
        load_dataset(cfg | {"names": ["a", "b"]}, "train")
    # `classes: N` draws the first N shapes only (a dataset with other classes, for fine-tuning)
    three, names3 = load_dataset(cfg | {"classes": 3, "names": None}, "train")
    assert names3 == list(SYNTHETIC_NAMES[:3])
    assert all(int(lab) < 3 for s in three for lab in s.labels) and any(len(s.labels) for s in three)
    with pytest.raises(DataError, match=r"names must be \['circle', 'square'\]"):
        load_dataset(cfg | {"classes": 2}, "train")
