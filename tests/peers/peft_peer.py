#!/usr/bin/env python3
"""The transformers + PEFT side of tests/model_peft.rs, on the tiny Qwen2-VL fixture (CPU, f32).

    peft_peer.py make MODEL OUT_DIR SEED
        An adapter made by peft itself: LoRA r 4 / alpha 8 on q, k, v, o_proj and the vision tower's qkv and attn.proj
        (a bare `proj` would also catch patch_embed.proj, which vlm3d refuses by name),
        A and B drawn at random (non-zero B, so the adapter changes the output), saved with save_pretrained.
    peft_peer.py run MODEL ADAPTER_DIR MAX_NEW PROMPT [IMAGE ...]
        PeftModel.from_pretrained(Qwen2VLForConditionalGeneration.from_pretrained(MODEL), ADAPTER_DIR), then
        greedy decoding of the chat prompt (with the images, processed by the reference image processor).
        Prints one JSON line: the adapter file's tensor names that the model did not take over exactly
        (`not_loaded`), how many it took, the generated ids and their text.
    peft_peer.py compare MODEL ADAPTER_DIR EXPORT_DIR PROMPT [IMAGE ...]
        The logits of PeftModel(MODEL + ADAPTER_DIR) and of Qwen2VLForConditionalGeneration.from_pretrained
        (EXPORT_DIR), a merged export loaded as a plain model, on the chat prompt: one JSON line with their
        largest absolute difference and the logits' scale.
"""
import json
import os
import sys

import torch
from PIL import Image
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

SYSTEM = "You are a helpful assistant."


def make(model_dir, out, seed):
    torch.manual_seed(int(seed))
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "qkv", "attn.proj"])
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    pm.save_pretrained(out)
    print(json.dumps({"tensors": len(get_peft_model_state_dict(pm))}))


def inputs(model_dir, prompt, images):
    """Input ids (image pads expanded), the image keyword arguments, the tokenizer and the pad id."""
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    vocab = tok.get_vocab()
    pad = vocab["<|image_pad|>"]
    prefix = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n" + \
        "<|vision_start|><|image_pad|><|vision_end|>" * len(images)
    suffix = f"{prompt}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(prefix, add_special_tokens=False).ids + tok.encode(suffix, add_special_tokens=False).ids
    kw = {}
    if images:
        proc = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
        out = proc(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
        grid = out["image_grid_thw"]
        expanded, gi = [], 0
        for t in ids:
            if t == pad:
                expanded += [t] * int(grid[gi].prod() // 4)
                gi += 1
            else:
                expanded.append(t)
        ids = expanded
        kw = dict(pixel_values=out["pixel_values"].float(), image_grid_thw=grid)
    return ids, kw, tok, pad


def run(model_dir, adapter, max_new, prompt, images):
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    pm = PeftModel.from_pretrained(model, adapter)
    pm.eval()
    file = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    state = get_peft_model_state_dict(pm)
    not_loaded = sorted(k for k, v in file.items() if k not in state or not torch.equal(state[k], v.float()))
    ids, kw, tok, pad = inputs(model_dir, prompt, images)
    vocab = tok.get_vocab()
    stop = set(model.config.text_config.eos_token_id if isinstance(model.config.text_config.eos_token_id, list)
               else [model.config.text_config.eos_token_id])
    stop |= {vocab[t] for t in ["<|im_end|>", "<|endoftext|>"] if t in vocab}
    cur = torch.tensor([ids])
    gen = []
    with torch.no_grad():
        for _ in range(int(max_new)):
            extra = dict(mm_token_type_ids=(cur == pad).int()) if images else {}
            logits = pm(input_ids=cur, **kw, **extra).logits
            nxt = int(logits[0, -1].argmax())
            if nxt in stop:
                break
            gen.append(nxt)
            cur = torch.cat([cur, torch.tensor([[nxt]])], 1)
    print(json.dumps({"loaded": len(file) - len(not_loaded), "not_loaded": not_loaded, "ids": gen,
                      "text": tok.decode(gen, skip_special_tokens=True)}))


def compare(model_dir, adapter, export, prompt, images):
    ids, kw, _, pad = inputs(model_dir, prompt, images)
    cur = torch.tensor([ids])
    extra = dict(mm_token_type_ids=(cur == pad).int()) if images else {}
    with torch.no_grad():
        base = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
        peft_logits = PeftModel.from_pretrained(base, adapter).eval()(input_ids=cur, **kw, **extra).logits
        plain = Qwen2VLForConditionalGeneration.from_pretrained(export, torch_dtype=torch.float32).eval()
        export_logits = plain(input_ids=cur, **kw, **extra).logits
    print(json.dumps({"max_abs_diff": float((peft_logits - export_logits).abs().max()),
                      "scale": float(peft_logits.abs().max()), "tokens": len(ids)}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(*sys.argv[2:5])
    elif sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    elif sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    else:
        sys.exit(f"unknown command {sys.argv[1]!r} (make, run, compare)")
