#!/usr/bin/env python3
"""transformers baseline for `qforge bench vlm`: Qwen2.5-VL's processor and vision tower on CPU,
on the same tower config and image sizes. Prints one JSON line: per case, the best processor
and tower times in ms.

    python tools/bench/vlm_torch.py --config vision.json --cases '[["image", 448, 448, 1], ...]'

Needs torch, transformers (4.50 pinned in tools/fixtures/gen_vlm.py) and pillow; not torchvision
(it switches the image backend).
"""

import argparse
import json
import time

import numpy as np
import torch
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.config) as f:
        cfg = Qwen2_5_VLVisionConfig(**json.load(f))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg, attn_implementation="sdpa").float().eval()
    processor = Qwen2VLImageProcessor()
    results = []
    for kind, h, w, frames in json.loads(a.cases):
        rng = np.random.default_rng(0)
        if kind == "image":
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            process = lambda: processor(images=[pixels], return_tensors="pt")
            keys = ("pixel_values", "image_grid_thw")
        else:
            pixels = rng.integers(0, 256, size=(frames, h, w, 3), dtype=np.uint8)
            process = lambda: processor(images=None, videos=[pixels], return_tensors="pt")
            keys = ("pixel_values_videos", "video_grid_thw")
        process_ms, out = best(process, a.repeats)
        values, grid = out[keys[0]], out[keys[1]]
        with torch.no_grad():
            tower(values, grid_thw=grid)  # warm-up
            tower_ms, _ = best(lambda: tower(values, grid_thw=grid), a.repeats)
        results.append({"process_ms": process_ms, "tower_ms": tower_ms, "patches": int(values.shape[0])})
    print(json.dumps({"torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
