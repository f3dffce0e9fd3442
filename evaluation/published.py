"""Published ImageNet-1k figures of a model's weights, with their source and the eval preprocessing they expect.

torchvision models: everything comes from the DEFAULT weights' own metadata (``meta["_metrics"]``) and
``weights.transforms()``, so no number is typed in here. GhostNet has no library that holds its
figures: 1.0x is the official release (huawei-noah/ghostnet, ``state_dict_73.98.pth``, top-1 73.98, top-5 91.46,
evaluated at 256/224 bilinear by its validate.py), and 0.5x and 1.3x are Table 7 of the paper (arXiv:1911.11907),
which gives top-1 only and for which no weights were released. GhostNetV2 1.0x: 75.3, the paper's abstract
(arXiv:2211.12905) and the authors' README; GhostNetV3 1.0x: 77.13 with EMA weights (76.93 without), the authors'
release notes; GhostNetV3 1.3x: 79.1, the paper's abstract (arXiv:2404.11202). Other widths have no figure here
until one is checked against its paper. The eval preprocessing of any of them comes from
``common.preprocess.weights_preprocess``, which test.py's ``--pretrained`` uses too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torchvision

from common.models import factory, ghostnet_weights, preprocess

# width: (top-1, top-5 or None, source)
GHOSTNET_PUBLISHED = {
    1.0: (73.98, 91.46, f"official release ({factory.GHOSTNET_URL.rsplit('/', 1)[-1]})"),
    0.5: (66.2, None, "paper, Table 7 (no weights released)"),
    1.3: (75.7, None, "paper, Table 7 (no weights released)"),
}
# (arch, width): (top-1, top-5 or None, source)
GHOSTNET_V23_PUBLISHED = {
    ("ghostnetv2", 1.0): (75.3, None, "GhostNetV2 paper, abstract (arXiv:2211.12905)"),
    ("ghostnetv3", 1.0): (77.13, None, "GhostNetV3 release, EMA weights (76.93 without EMA)"),
    ("ghostnetv3", 1.3): (79.1, None, "GhostNetV3 paper, abstract (arXiv:2404.11202)"),
}


@dataclass(frozen=True)
class Published:
    """What the literature says about one model; None where its source gives no figure."""

    top1: float | None = None
    top5: float | None = None
    source: str = ""
    resize: int | None = None  # eval: shorter side resized to this, then centre-cropped to ``crop``
    crop: int | None = None
    interpolation: str = ""


def _torchvision(arch: str) -> Published:
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):  # a builder without published weights
        return Published()
    metrics = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return _with_eval(Published(metrics.get("acc@1"), metrics.get("acc@5"), f"torchvision {weights}"), arch)


def _with_eval(figures: Published, arch: str) -> Published:
    """``figures`` with the eval resize, crop and interpolation that ``arch``'s published weights expect."""
    prep = preprocess.weights_preprocess(arch)
    return Published(figures.top1, figures.top5, figures.source, prep.resize, prep.crop, prep.interpolation)


def _ghostnet_v23(arch: str, width: float) -> Published:
    if (arch, width) not in GHOSTNET_V23_PUBLISHED:
        return Published()
    figures = Published(*GHOSTNET_V23_PUBLISHED[arch, width])
    return _with_eval(figures, arch) if (arch, width) in ghostnet_weights.PUBLISHED else figures


def published(arch: str, width: float = 1.0) -> Published:
    """The published figures of ``arch`` (at ``width`` for GhostNet); an empty Published where none exist."""
    if arch in factory.GHOSTNETS[1:]:
        return _ghostnet_v23(arch, width)
    if arch != "ghostnet":
        return _torchvision(arch)
    if width not in GHOSTNET_PUBLISHED:
        return Published()
    top1, top5, source = GHOSTNET_PUBLISHED[width]
    if width != 1.0:  # no weights, so no preprocessing they expect
        return Published(top1, top5, source)
    return _with_eval(Published(top1, top5, source), arch)
