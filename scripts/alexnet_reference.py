#!/usr/bin/env python3
"""Test helper: a random-init torchvision AlexNet checkpoint and its reference outputs.

    .venv/bin/python scripts/alexnet_reference.py OUT_DIR [--seed 0] [--num-classes 10]
        [--images 3] [--height 48] [--width 56] [--size 64]

Writes into OUT_DIR:
- alexnet.pth          torch.save(model.state_dict()) (zip format)
- alexnet_legacy.pth   the same with _use_new_zipfile_serialization=False (legacy format)
- missing.pth          the state_dict without features.3.weight
- misshaped.pth        the state_dict with classifier.4.weight of shape (4096, 4000)
- input.npy            uint8 images N x H x W x 3
- logits.npy, fc7.npy  torchvision's outputs (eval mode) after resizing the images to SIZE x SIZE
                       (bilinear, antialias, as torchvision's Resize) and ImageNet normalisation
Used by cmh's Rust tests (src/deep/alexnet.rs) to check its AlexNet against torchvision's.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--width", type=int, default=56)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    model = torchvision.models.alexnet(weights=None, num_classes=args.num_classes).eval()
    sd = model.state_dict()
    torch.save(sd, os.path.join(args.out, "alexnet.pth"))
    torch.save(sd, os.path.join(args.out, "alexnet_legacy.pth"), _use_new_zipfile_serialization=False)
    missing = {k: v for k, v in sd.items() if k != "features.3.weight"}
    torch.save(missing, os.path.join(args.out, "missing.pth"))
    bad = dict(sd)
    bad["classifier.4.weight"] = torch.zeros(4096, 4000)
    torch.save(bad, os.path.join(args.out, "misshaped.pth"))

    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, size=(args.images, args.height, args.width, 3), dtype=np.uint8)
    np.save(os.path.join(args.out, "input.npy"), images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x)
        h = torch.flatten(model.avgpool(model.features(x)), 1)
        fc7 = model.classifier[:6](h)
    np.save(os.path.join(args.out, "logits.npy"), logits.numpy().astype(np.float32))
    np.save(os.path.join(args.out, "fc7.npy"), fc7.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
