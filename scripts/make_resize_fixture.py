#!/usr/bin/env python3
"""Writes the bicubic-resize fixture of tests/images.rs: PIL's BICUBIC (the resample of Qwen2-VL's reference image
processor, `resample: 3`) applied to a made-up RGB picture, downscaled (with the widened support a downscale
uses) and upscaled. The Rust pre-processor's resize is checked against these PNGs.

Usage: .venv-ref/bin/python scripts/make_resize_fixture.py [OUT_DIR]   (default tests/fixtures/resize; needs pillow, numpy)
"""
import os
import sys

import numpy as np
from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "resize")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(0)

# Smooth gradients, hard edges (boxes, as on camera pictures of cars) and some noise, so both the filter's
# smoothing and its overshoot at edges are exercised.
W, H = 400, 225
y, x = np.mgrid[0:H, 0:W].astype(np.float64)
img = np.stack([128 + 100 * np.sin(x / 23.0), 128 + 100 * np.cos(y / 17.0), (x + y) % 256], axis=-1)
for _ in range(12):
    x0, y0 = rng.integers(0, W - 40), rng.integers(0, H - 30)
    img[y0:y0 + rng.integers(8, 30), x0:x0 + rng.integers(8, 40)] = rng.integers(0, 256, 3)
img += rng.normal(0, 6, img.shape)
src = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")
src.save(os.path.join(OUT, "source_400x225.png"))
for w, h in [(112, 56), (224, 126), (560, 308)]:
    src.resize((w, h), Image.BICUBIC).save(os.path.join(OUT, f"pil_bicubic_{w}x{h}.png"))
print("wrote", OUT)
