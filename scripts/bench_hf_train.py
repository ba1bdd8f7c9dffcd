#!/usr/bin/env python3
"""Side-by-side training bench: one training step in Hugging Face transformers + PEFT (PyTorch, CPU, f32) and in
`vlm3d bench --train`, on the same shapes: LoRA, and full fine-tuning of the decoder (`--full`).

The step, as `vlm3d bench --train` does it: random weights at the tiny fixture's or Qwen2-VL-2B's dimensions
(scripts/bench_hf_qwen2vl.py's DIMS), one 448x252 view per example whose vision features are computed once and
frozen, a sequence of [14 template tokens, <|vision_start|>, 144 image tokens, <|vision_end|>, a 40-token prompt,
5 suffix tokens, 16 query tokens] = 221 tokens with M-RoPE positions, LoRA r 16 / alpha 32 on q, k, v, o_proj of
the decoder (or, full fine-tuning, every decoder weight; the vision tower's features stay frozen), the box MLP 512-256-128 on the query states, a loss on two target boxes (MSE on the first two
queries' boxes, a fixed matching, plus BCE on every query's logit; vlm3d uses its Hungarian matching and the
stage-2 loss), backward, AdamW. PyTorch runs the batch as one batched forward pass (its faster mode). Each row
runs in its own process, so its peak RSS is its own.

Usage:
  .venv-ref/bin/python scripts/bench_hf_train.py --vlm3d target/release/vlm3d [--models tiny,2b] \
      [--full-models tiny] [--repeat 5]
      (batch 4 for tiny, 1 for 2b, as the README's training rows; LoRA rows for --models, full fine-tuning rows for
      --full-models)
"""
import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_hf_qwen2vl", os.path.join(HERE, "bench_hf_qwen2vl.py"))
fwd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fwd)
PREFIX, SUFFIX, QUERIES = fwd.PREFIX, fwd.SUFFIX, fwd.QUERIES
BATCH = {"tiny": 4, "2b": 1}


def one(model_name, batch, repeat, full=False, width=448, height=252, prompt_tokens=40):
    import torch
    from peft import LoraConfig, get_peft_model
    model, t, (img_id, vs_id, ve_id) = fwd.random_model(model_name, torch.float32)
    hidden = t["hidden_size"]
    gh, gw = height // 14, width // 14
    n_img = gh * gw // 4
    row = list(range(100, 100 + PREFIX)) + [vs_id] + [img_id] * n_img + [ve_id] + \
        list(range(200, 200 + prompt_tokens)) + list(range(300, 300 + SUFFIX)) + list(range(320, 320 + QUERIES))
    ids = torch.tensor([row] * batch)
    mm = (ids == img_id).int()
    grid = torch.tensor([[1, gh, gw]] * batch)
    with torch.no_grad():
        pos, _ = model.model.get_rope_index(ids, mm, image_grid_thw=grid)
        # Frozen vision features, computed once outside the timed step (as vlm3d's bench does).
        feats = torch.randn(batch * n_img, hidden)
    if full:
        model.requires_grad_(False)
        lm = model.model.language_model
        lm.requires_grad_(True)
    else:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        lm = model.base_model.model.model.language_model
    embed = lm.embed_tokens
    head = torch.nn.Sequential(torch.nn.Linear(hidden, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    targets = torch.tensor([[1.0, 1.5, 12.0, 4.2, 1.8, 1.6, 0.3], [-3.0, 1.4, 20.0, 4.0, 1.7, 1.5, 1.2]])
    labels = torch.zeros(batch, QUERIES)
    labels[:, :2] = 1.0
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        emb = embed(ids)
        emb = emb.masked_scatter((ids == img_id).unsqueeze(-1).expand_as(emb), feats)
        h = lm(inputs_embeds=emb, position_ids=pos).last_hidden_state
        out = head(h[:, -QUERIES:])
        box, logit = out[..., :7], out[..., 7]
        loss = ((box[:, :2] - targets) ** 2).mean() + \
            torch.nn.functional.binary_cross_entropy_with_logits(logit, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
        print(f"{model_name} step {i}/{repeat}: {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    step = sorted(times)[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(dict(model=model_name, full=full, batch=batch, tokens=len(row), step_s=step,
                          examples_per_s=batch / step, peak_rss_mib=peak, threads=torch.get_num_threads())))


def run_vlm3d(binary, model_name, batch, repeat, full):
    out = subprocess.run([binary, "bench", "--train", "--models", model_name, "--batch", str(batch),
                          "--repeat", str(repeat), "--device", "cpu"] + (["--full"] if full else []),
                         check=True, capture_output=True, text=True).stdout
    lines = [l for l in out.strip().splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = dict(zip(header, (c.strip() for c in lines[-1].strip("|").split("|"))))
    return dict(step_s=float(cells["s/step (median)"]), examples_per_s=float(cells["examples/s"]),
                peak_rss_mib=float(cells["peak RSS MiB"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "BATCH"))
    ap.add_argument("--full", action="store_true", help="with --one: full fine-tuning of the decoder")
    ap.add_argument("--vlm3d", default=None, help="path of the vlm3d binary for the side-by-side columns")
    ap.add_argument("--models", default="tiny,2b", help="LoRA rows")
    ap.add_argument("--full-models", default="tiny", help="full fine-tuning rows ('' for none)")
    ap.add_argument("--repeat", type=int, default=5, help="timed steps after one untimed step; the median counts")
    a = ap.parse_args()
    if a.one:
        one(a.one[0], int(a.one[1]), a.repeat, a.full)
        return
    print(f"LoRA r16 on q, k, v, o, or every decoder weight (full); f32 on the CPU ({os.cpu_count()} cores); "
          f"median of {a.repeat} steps after one")
    print("| model | trains | examples/step | PyTorch + PEFT examples/s | vlm3d examples/s | speed ratio vlm3d/PyTorch "
          "| PyTorch peak RSS MiB | vlm3d peak RSS MiB | memory ratio vlm3d/PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [(m, False) for m in a.models.split(",") if m] + [(m, True) for m in a.full_models.split(",") if m]
    for m, full in rows:
        b = BATCH[m]
        res = subprocess.run([sys.executable, __file__, "--one", m, str(b), "--repeat", str(a.repeat)] +
                             (["--full"] if full else []), check=True, capture_output=True, text=True).stdout
        hf = json.loads(res.strip().splitlines()[-1])
        ours = run_vlm3d(a.vlm3d, m, b, a.repeat, full) if a.vlm3d else None
        o_ex = f"{ours['examples_per_s']:.2f}" if ours else "-"
        o_m = f"{ours['peak_rss_mib']:.0f}" if ours else "-"
        sr = f"{ours['examples_per_s'] / hf['examples_per_s']:.2f}" if ours else "-"
        mr = f"{ours['peak_rss_mib'] / hf['peak_rss_mib']:.2f}" if ours else "-"
        print(f"| {m} | {'full' if full else 'LoRA'} | {b} | {hf['examples_per_s']:.2f} | {o_ex} | {sr} | {hf['peak_rss_mib']:.0f} | {o_m} | {mr} |",
              flush=True)


if __name__ == "__main__":
    main()
