#!/usr/bin/env python3
"""Side-by-side bench: Hugging Face transformers (PyTorch, CPU, f32) vs `vlm3d bench` on the same shapes.

One detection forward pass (vision tower over all views, decoder prefill over
[14 template tokens, <|vision_start|>, image tokens, <|vision_end|>, prompt, 5 suffix tokens, 16 queries] per view,
box MLP 512-256-128 on the query states; no generation), random weights at the tiny fixture's and at
Qwen2-VL-2B's dimensions, 448x252 images, a 40-token prompt. Each row runs in its own process so its peak RSS is
its own.

Usage:
  .venv-ref/bin/python scripts/bench_hf_qwen2vl.py [--vlm3d target/release/vlm3d] [--models tiny,2b] [--views 1,6]
      [--device cpu|cuda] [--dtype f32|bf16|f16] [--warmup N] [--repeat N]
On a GPU the device is synchronized around each clock reading, times are medians of --repeat runs after --warmup,
and the memory column is the CUDA allocator's peak. `vlm3d bench` gets the same --device/--dtype/--warmup/--repeat.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

PREFIX, SUFFIX, QUERIES = 14, 5, 16

DIMS = {
    "tiny": dict(text=dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, mrope=[1, 4, 3]),
                 vision=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)),
    "2b": dict(text=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, rope_theta=1e6, mrope=[16, 24, 24]),
               vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)),
}


def random_model(model_name, tdtype):
    """A Qwen2-VL with random weights at DIMS[model_name] (sdpa attention): (model, text dims, image / vision-start
    / vision-end token ids). scripts/bench_hf_train.py builds its model here too."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    torch.manual_seed(0)
    d = DIMS[model_name]
    t = dict(d["text"])
    mrope, theta = t.pop("mrope"), t.pop("rope_theta")
    base = 151643 if t["vocab_size"] > 1000 else 0
    img_id, vs_id, ve_id = base + 12, base + 9, base + 10
    cfg = Qwen2VLConfig(
        text_config=dict(**t, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope}),
        vision_config=dict(**d["vision"], in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=img_id, vision_start_token_id=vs_id, vision_end_token_id=ve_id, tie_word_embeddings=True)
    model = Qwen2VLForConditionalGeneration._from_config(cfg, dtype=tdtype, attn_implementation="sdpa")
    return model, t, (img_id, vs_id, ve_id)


def one(model_name, views, width, height, prompt_tokens, device="cpu", dtype="f32", warmup=0, repeat=1):
    import torch
    tdtype = dict(f32=torch.float32, bf16=torch.bfloat16, f16=torch.float16)[dtype]
    model, t, (img_id, vs_id, ve_id) = random_model(model_name, tdtype)
    model = model.eval()
    model = model.to(device)
    hidden = t["hidden_size"]
    head = torch.nn.Sequential(torch.nn.Linear(hidden, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 9))
    head = head.to(device=device, dtype=tdtype)
    gh, gw = height // 14, width // 14
    n_img = gh * gw // 4
    row = list(range(100, 100 + PREFIX)) + [vs_id] + [img_id] * n_img + [ve_id] + \
        list(range(200, 200 + prompt_tokens)) + list(range(300, 300 + SUFFIX)) + list(range(320, 320 + QUERIES))
    ids = torch.tensor([row] * views, device=device)
    mm = (ids == img_id).int()
    pixels = torch.randn(views * gh * gw, 3 * 2 * 14 * 14, device=device, dtype=tdtype)
    grid = torch.tensor([[1, gh, gw]] * views, device=device)
    cuda = device.startswith("cuda")

    def clock():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    marks = {}
    model.model.visual.register_forward_pre_hook(lambda *a: marks.__setitem__("v0", clock()))
    model.model.visual.register_forward_hook(lambda *a: marks.__setitem__("v1", clock()))
    runs = []
    with torch.no_grad():
        for i in range(warmup + repeat):
            t0 = clock()
            out = model.model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=mm)
            boxes = head(out.last_hidden_state[:, -QUERIES:])
            _ = boxes.sum().item()
            t1 = clock()
            if i >= warmup:
                runs.append((marks["v1"] - marks["v0"], t1 - t0))
    vision = sorted(r[0] for r in runs)[len(runs) // 2]
    total = sorted(r[1] for r in runs)[len(runs) // 2]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(dict(model=model_name, views=views, tokens=len(row), vision_s=vision,
                          decoder_s=total - vision, total_s=total, peak_rss_mib=peak, device=device, dtype=dtype)))


def run_vlm3d(binary, model_name, views, width, height, prompt_tokens, device, dtype, warmup, repeat):
    out = subprocess.run([binary, "bench", "--models", model_name, "--views", str(views), "--width", str(width),
                          "--height", str(height), "--prompt-tokens", str(prompt_tokens), "--device", device,
                          "--dtype", dtype, "--warmup", str(warmup), "--repeat", str(repeat)],
                         check=True, capture_output=True, text=True).stdout
    lines = out.strip().splitlines()
    header = [c.strip() for c in lines[-3].strip("|").split("|")]
    cells = dict(zip(header, (c.strip() for c in lines[-1].strip("|").split("|"))))
    # Columns by name: `vlm3d bench` may add columns (the second-prompt time) without breaking this reader.
    return dict(tokens=int(cells["tokens/view"]), vision_s=float(cells["vision s"]),
                decoder_s=float(cells["decoder+head s"]), total_s=float(cells["total s"]),
                peak_rss_mib=float(cells["peak RSS MiB"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "VIEWS"))
    ap.add_argument("--vlm3d", default=None, help="path of the vlm3d binary for the side-by-side columns")
    ap.add_argument("--models", default="tiny,2b")
    ap.add_argument("--views", default="1,6")
    ap.add_argument("--width", type=int, default=448)
    ap.add_argument("--height", type=int, default=252)
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs (default: 0 on CPU, 3 on a GPU)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs, median reported (default: 1 on CPU, 10 on a GPU)")
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    a.warmup = a.warmup if a.warmup is not None else (3 if gpu else 0)
    a.repeat = a.repeat if a.repeat is not None else (10 if gpu else 1)
    if a.one:
        one(a.one[0], int(a.one[1]), a.width, a.height, a.prompt_tokens, a.device, a.dtype, a.warmup, a.repeat)
        return
    mem = "GPU peak MiB" if gpu else "peak MiB"
    print(f"{a.dtype} on {a.device}, median of {a.repeat} after {a.warmup} warm-up")
    print(f"| model | views | tokens/view | PyTorch s | vlm3d s | ratio vlm3d/PyTorch | PyTorch {mem} | vlm3d peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for m in a.models.split(","):
        for v in a.views.split(","):
            res = subprocess.run([sys.executable, __file__, "--one", m, v, "--width", str(a.width), "--height",
                                  str(a.height), "--prompt-tokens", str(a.prompt_tokens), "--device", a.device,
                                  "--dtype", a.dtype, "--warmup", str(a.warmup), "--repeat", str(a.repeat)],
                                 check=True, capture_output=True, text=True).stdout
            hf = json.loads(res.strip().splitlines()[-1])
            ours = run_vlm3d(a.vlm3d, m, int(v), a.width, a.height, a.prompt_tokens, a.device, a.dtype, a.warmup,
                             a.repeat) if a.vlm3d else None
            o_t = f"{ours['total_s']:.2f}" if ours else "-"
            ratio = f"{ours['total_s'] / hf['total_s']:.2f}" if ours else "-"
            o_m = f"{ours['peak_rss_mib']:.0f}" if ours else "-"
            print(f"| {m} | {v} | {hf['tokens']} | {hf['total_s']:.2f} (vision {hf['vision_s']:.2f}) | {o_t} | {ratio} "
                  f"| {hf['peak_rss_mib']:.0f} | {o_m} |", flush=True)


if __name__ == "__main__":
    main()
