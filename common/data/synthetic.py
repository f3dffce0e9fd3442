"""``--dummy``: torchvision FakeData with the readers' ``(image, target, path)`` contract."""
from __future__ import annotations

import torch
from torchvision import datasets


class FakeDataWithPaths(datasets.FakeData):
    """torchvision FakeData (``--dummy``) with the same ``(image, target, path)`` contract and class names."""

    def __init__(self, size: int, image_size: int, num_classes: int, transform, random_offset: int = 0) -> None:
        super().__init__(size=size, image_size=(3, image_size, image_size), num_classes=num_classes,
                         transform=transform, random_offset=random_offset)
        self.classes = [f"class{i:04d}" for i in range(num_classes)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        image, target = super().__getitem__(index)
        return image, int(target), f"dummy/{index}"
