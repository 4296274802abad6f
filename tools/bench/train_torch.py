#!/usr/bin/env python3
"""PyTorch baseline for `qforge bench train`: forward + backward + AdamW on the same Qwen3
config, batch and sequence length. Prints one JSON line: tokens/s and peak RSS.

    python tools/bench/train_torch.py --config cfg.json --batch 8 --seq 256 --steps 5 --warmup 2

Needs torch and transformers (the fixture venv of tools/fixtures/gen_model.py).
"""

import argparse
import json
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def peak_rss_mib():
    # VmHWM, not getrusage: a forked child's ru_maxrss starts at the parent's size.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.config) as f:
        cfg = json.load(f)
    cfg.pop("model_type", None)
    config = Qwen3Config(**cfg)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).float().train()
    model.config._attn_implementation = "eager"
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    ids = torch.randint(500, config.vocab_size - 500, (a.batch, a.seq))
    times = []
    for step in range(a.warmup + a.steps):
        t = time.perf_counter()
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, config.vocab_size), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= a.warmup:
            times.append(time.perf_counter() - t)
    tokens = a.batch * a.seq
    best = min(times)
    print(json.dumps({"tok_s": tokens / best, "mean_tok_s": tokens * len(times) / sum(times),
                      "peak_rss_mb": peak_rss_mib(),
                      "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
