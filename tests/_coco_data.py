"""A tiny COCO-format dataset of one's own, as a user would bring it: shapes images (JPEG) under
``images/``, annotations in ``annotations/{train,val}.json`` with non-contiguous category ids
listed out of order, polygon and RLE masks, a crowd annotation (uncompressed RLE) and an image
without annotations."""
import json
import os

import cv2
import numpy as np

from gn_detectron.data.shapes import mask_to_bbox, mask_to_rle, render_shapes_image

# dataset category id -> name; listed out of id order on purpose
CATEGORIES = [{"id": 42, "name": "rectangle"}, {"id": 7, "name": "circle"}]
# the shapes renderer's category index (position in SHAPE_NAMES) -> dataset id
SHAPE_NAMES = ("circle", "rectangle")
SHAPE_TO_ID = {0: 7, 1: 42}


def _polygon(mask):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE (as crowd annotations use): counts of alternating 0/1 runs in
    column-major order, starting with zeros."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def write_split(root, split, num_images, first_image_id, seed, image_size=(96, 128), empty_image=True):
    """Writes ``num_images`` images and ``annotations/<split>.json``; returns the json path.
    Annotations alternate between polygon and RLE masks; the 3rd instance is a crowd; with
    ``empty_image`` the last image has no annotation."""
    height, width = image_size
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    for k in range(num_images):
        image_id = first_image_id + 3 * k  # non-contiguous image ids too
        image, instances = render_shapes_image(np.random.default_rng([seed, k]), height, width, SHAPE_NAMES)
        file_name = f"{split}_{k:03d}.jpg"
        cv2.imwrite(os.path.join(root, "images", file_name), image[:, :, ::-1])
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        if empty_image and k == num_images - 1:
            continue
        for inst in instances:
            mask = inst["mask"]
            polygon = _polygon(mask) if len(annotations) % 2 == 0 else None
            crowd = len(annotations) == 2
            if crowd:
                segmentation = _uncompressed_rle(mask)
            elif polygon:
                segmentation = polygon
            else:
                segmentation = mask_to_rle(mask)
            annotations.append({
                "id": 1000 + len(annotations), "image_id": image_id,
                "category_id": SHAPE_TO_ID[inst["category"]], "segmentation": segmentation,
                "area": int(mask.sum()), "bbox": mask_to_bbox(mask), "iscrowd": int(crowd)})
    path = os.path.join(root, "annotations", f"{split}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


def make_dataset(root):
    """Writes the train (10 images) and val (4 images) splits under ``root``; returns
    {"train": json path, "val": json path, "images": image folder}."""
    return {
        "train": write_split(root, "train", 10, first_image_id=5, seed=1),
        "val": write_split(root, "val", 4, first_image_id=100, seed=2),
        "images": os.path.join(root, "images"),
    }
