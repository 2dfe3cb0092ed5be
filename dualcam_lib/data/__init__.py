"""Datasets: the wsolevaluation metadata format, the datasets' native formats, and the embedded synthetic sets.

Every dataset yields :class:`WSOLBatch` es: images in [0, 1] (not normalised), labels, boxes per image in the
batch's pixels, and masks where the ground truth has them. :func:`load_dataset` picks a dataset by name.
"""
from .datasets import (DATASET_NAMES, ImageReadError, WSOLBatch, WSOLImageDataset, collate_wsol, load_dataset,
                       rescale_boxes, resize_mask_nearest)
from .native import HeaderSizes, read_cub, read_imagenet_val, read_openimages30k, read_stanford_cars
from .synthetic import (SyntheticSet, make_synthetic_digits, make_synthetic_finegrained, make_synthetic_wsol,
                        synthetic_splits, tight_boxes)
from .wsol_metadata import MetadataError, WSOLMetadata, read_wsol_metadata, write_wsol_metadata

__all__ = [
    "WSOLBatch", "WSOLImageDataset", "collate_wsol", "load_dataset", "DATASET_NAMES", "ImageReadError",
    "rescale_boxes", "resize_mask_nearest",
    "SyntheticSet", "make_synthetic_wsol", "make_synthetic_finegrained", "make_synthetic_digits", "synthetic_splits",
    "tight_boxes",
    "MetadataError", "WSOLMetadata", "read_wsol_metadata", "write_wsol_metadata",
    "HeaderSizes", "read_cub", "read_stanford_cars", "read_imagenet_val", "read_openimages30k",
]
