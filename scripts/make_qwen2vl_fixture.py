#!/usr/bin/env python3
"""Builds the tiny random-weight Qwen2-VL fixture used by tests/model_parity.rs and dumps reference tensors.

Everything is made here (no download): a byte-level BPE tokenizer trained on a few sentences plus the Qwen2-VL
special tokens, a Qwen2-VL config with tiny dimensions (unequal M-RoPE sections so a wrong split or a wrong merge
order fails the parity test), random weights with O(1) activations, images at sizes that need no resize, and the
outputs of Hugging Face transformers (CPU, f32) for them.

Usage: .venv-ref/bin/python scripts/make_qwen2vl_fixture.py [OUT_DIR]   (default tests/fixtures/qwen2vl_tiny)
"""
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "qwen2vl_tiny")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
rng = np.random.default_rng(0)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
SYSTEM = "You are a helpful assistant."
CORPUS = [
    SYSTEM, "system", "user", "assistant",
    "Detect every pedestrian in the images and give their 3D boxes.",
    "Find the car parked on the left side of the road.",
    "Where is the cyclist? Describe the scene in front of the ego vehicle.",
    "a truck, a bus, a traffic cone, a barrier and a motorcycle near the crossing",
] * 4

VOCAB = 384  # rows of the embedding table (>= tokenizer size)
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 48


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIALS)
    assert tok.get_vocab_size() <= VOCAB
    tok.save(os.path.join(OUT, "tokenizer.json"))
    return tok


def chat_prefix(n_images):
    return f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n" + \
        "<|vision_start|><|image_pad|><|vision_end|>" * n_images


def chat_suffix(prompt):
    return f"{prompt}<|im_end|>\n<|im_start|>assistant\n"


def make_image(w, h, seed):
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for c in range(3):
        fx, fy, ph = r.uniform(0.02, 0.2), r.uniform(0.02, 0.2), r.uniform(0, 6.28)
        v = 127 + 90 * np.sin(fx * x + ph) * np.cos(fy * y) + r.normal(0, 4, size=(h, w))
        chans.append(v)
    arr = np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def main():
    tok = make_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 4, 3]},
            tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"],
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"],
    )
    model = Qwen2VLForConditionalGeneration._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    # Weights with O(1) activations so that a wrong detail shows up far above the tolerance.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    model.save_pretrained(OUT)
    proc = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    proc.save_pretrained(OUT)
    with open(os.path.join(OUT, "chat_template.json"), "w") as f:
        # A minimal template in Jinja with the same rendering as chat_prefix/chat_suffix above.
        tpl = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + SYSTEM + "<|im_end|>\n{% endif %}"
               "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
               "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
               "<|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        json.dump({"chat_template": tpl}, f, indent=1)

    # Images: sizes are multiples of 28 inside the pixel bounds, so no resize happens in the parity cases.
    imgs = {
        "wide": make_image(112, 56, 10),     # W x H, grid 4 x 8
        "tall": make_image(84, 140, 11),     # grid 10 x 6
    }
    for v in range(6):
        imgs[f"view{v}"] = make_image(112, 84, 20 + v)  # grid 6 x 8
    imgs["resize_a"] = make_image(250, 130, 40)        # needs a resize (tolerance test)
    imgs["resize_b"] = make_image(97, 301, 41)
    imgs["resize_c"] = make_image(448, 300, 42)        # above max_pixels: shrinks
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    for k, im in imgs.items():
        im.save(os.path.join(OUT, "images", f"{k}.png"))

    cases = {
        "two_images": (["wide", "tall"], "Detect every pedestrian in the images and give their 3D boxes."),
        "six_views": ([f"view{v}" for v in range(6)], "Find the car parked on the left side of the road."),
        "text_only": ([], "Where is the cyclist? Describe the scene in front of the ego vehicle."),
    }
    ref = {}
    n_new = 8
    for case, (names, prompt) in cases.items():
        pil = [Image.open(os.path.join(OUT, "images", f"{n}.png")).convert("RGB") for n in names]
        text_ids = tok.encode(chat_prefix(len(pil)), add_special_tokens=False).ids + \
            tok.encode(chat_suffix(prompt), add_special_tokens=False).ids
        kw = {}
        if pil:
            out = proc(images=pil, return_tensors="pt")
            pv, grid = out["pixel_values"].float(), out["image_grid_thw"]
            expanded = []
            gi = 0
            for t in text_ids:
                if t == ids["<|image_pad|>"]:
                    expanded += [t] * int(grid[gi].prod() // 4)
                    gi += 1
                else:
                    expanded.append(t)
            text_ids = expanded
            kw = dict(pixel_values=pv, image_grid_thw=grid)
            ref[f"{case}.pixel_values"] = pv
            ref[f"{case}.image_grid_thw"] = grid.to(torch.int64)
        input_ids = torch.tensor([text_ids])

        def run(ids_t):
            mm = (ids_t == ids["<|image_pad|>"]).int()
            extra = dict(mm_token_type_ids=mm) if pil else {}
            with torch.no_grad():
                o = model.model(input_ids=ids_t, **kw, **extra)
                return o.last_hidden_state, model.lm_head(o.last_hidden_state)

        hidden, logits = run(input_ids)
        if pil:
            mm = (input_ids == ids["<|image_pad|>"]).int()
            pos, _ = model.model.get_rope_index(input_ids, mm, image_grid_thw=kw["image_grid_thw"])
        else:
            pos = torch.arange(input_ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        gen = []
        cur = input_ids
        for _ in range(n_new):
            _, lg = run(cur)
            nxt = int(lg[0, -1].argmax())
            gen.append(nxt)
            cur = torch.cat([cur, torch.tensor([[nxt]])], 1)
        ref[f"{case}.input_ids"] = input_ids[0].to(torch.int64)
        ref[f"{case}.position_ids"] = pos[:, 0].to(torch.int64).contiguous()
        ref[f"{case}.hidden"] = hidden[0].contiguous()
        ref[f"{case}.logits"] = logits[0].contiguous()
        ref[f"{case}.greedy"] = torch.tensor(gen, dtype=torch.int64)
        print(case, "seq", input_ids.shape[1], "greedy", gen)

    # Resize reference: what the PIL processor makes of images that need a resize.
    for n in ["resize_a", "resize_b", "resize_c"]:
        out = proc(images=[Image.open(os.path.join(OUT, "images", f"{n}.png")).convert("RGB")], return_tensors="pt")
        ref[f"{n}.pixel_values"] = out["pixel_values"].float()
        ref[f"{n}.image_grid_thw"] = out["image_grid_thw"].to(torch.int64)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
