"""tools/visualize.py: one label per object in predictions.png."""
import os
import sys

import pytest
import torch
from detectron2.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import visualize  # noqa: E402


def _instances(boxes, scores, classes):
    return Instances((100, 100), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                     scores=torch.tensor(scores), pred_classes=torch.tensor(classes))


def test_one_label_per_object_keeps_the_best_of_overlapping_boxes_whatever_the_class():
    instances = _instances(
        [[10, 10, 50, 50], [11, 10, 50, 51], [60, 60, 90, 90], [12, 12, 50, 50]],
        [0.4, 0.7, 0.5, 0.35], [1, 2, 1, 1])
    kept = visualize.one_label_per_object(instances, 0.7)
    assert kept.scores.tolist() == pytest.approx([0.7, 0.5])  # order of the input kept
    assert kept.pred_classes.tolist() == [2, 1]


def test_one_label_per_object_off_or_empty():
    instances = _instances([[10, 10, 50, 50], [11, 10, 50, 51]], [0.4, 0.7], [1, 2])
    assert len(visualize.one_label_per_object(instances, 0)) == 2
    assert len(visualize.one_label_per_object(instances[:0], 0.7)) == 0
