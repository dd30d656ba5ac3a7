#!/usr/bin/env python3
"""Convert a llama-family GGUF into a Hugging Face style model folder that
mlx-lm loads (`mlx_lm.load(OUT_DIR)`), with dequantized weights.

Usage: .venv/bin/python scripts/gguf_to_mlx.py IN.gguf OUT_DIR [--dtype float32] [--force]

Weights are read with `mx.load(IN.gguf, return_metadata=True)`. Tensors that
MLX keeps quantized (Q4_0, Q4_1, Q8_0: uint32 `weight` plus float16 `scales`
and `biases`, group size 32) are dequantized with
`mx.dequantize(weight, scales, biases, group_size=32, bits=4 or 8)`, which
computes in float16 (the dtype of the scales); the result is then widened to
--dtype (float32 by default, an exact conversion). The native engine, doing
the same two calls, therefore gets bit-identical float32 weights. Other
tensors (F32 norms; F16 and friends, which MLX hands back as float16) are cast
to --dtype.

llama.cpp's converter permutes the rows of attn_q / attn_k within every head
(HF order [first half | second half] of the rotary pairs becomes interleaved
pairs), because llama.cpp applies RoPE to adjacent pairs. mlx-lm's llama uses
non-traditional RoPE (pairs (i, i + d/2)), so the rows are put back:
    w.reshape(n_head, d/2, 2, n_in).swapaxes(1, 2).reshape(n_head * d, n_in)
with n_head = head_count for attn_q and head_count_kv for attn_k.

The tokenizer is rebuilt from the GGUF metadata by transformers' GGUF
tokenizer builder and saved with save_pretrained (tokenizer.json,
tokenizer_config.json with the chat template, chat_template.jinja).

The output is complete once config.json exists (it is written last); the
conversion is skipped when OUT_DIR/config.json is newer than IN.gguf.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import mlx.core as mx

SUPPORTED_ARCHS = {"llama"}  # Mistral and SmolLM GGUFs also say "llama"

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
IGNORED_TENSORS = {"rope_freqs"}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def py(value):
    """mx.load metadata value -> plain Python."""
    if isinstance(value, mx.array):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def f32_repr(x):
    """The shortest decimal that reads back as the same float32 (GGUF stores
    float32: 9.999999747378752e-06 comes back as 1e-05)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def unpermute_rows(w, n_head):
    """Undo llama.cpp's q/k row permutation (see module docstring)."""
    rows, n_in = w.shape
    head_dim = rows // n_head
    if head_dim * n_head != rows or head_dim % 2:
        raise ValueError(f"cannot un-permute {w.shape} with {n_head} heads")
    return w.reshape(n_head, head_dim // 2, 2, n_in).swapaxes(1, 2).reshape(rows, n_in)


def dequantized(tensors, base):
    """The float tensor for GGUF tensor `base` (without .weight)."""
    w = tensors[f"{base}.weight"]
    scales = tensors.get(f"{base}.scales")
    if scales is None:
        return w
    biases = tensors[f"{base}.biases"]
    group_size = 32
    bits = (w.shape[-1] * 32) // (scales.shape[-1] * group_size)
    if bits not in (4, 8):
        raise ValueError(f"{base}: unexpected quantization ({bits} bits)")
    return mx.dequantize(w, scales, biases, group_size=group_size, bits=bits)


def build_config(meta, arch, tensors):
    def get(key, default=None):
        v = meta.get(f"{arch}.{key}", default)
        return py(v)

    n_embd = get("embedding_length")
    n_head = get("attention.head_count")
    n_kv = get("attention.head_count_kv", n_head)
    head_dim = get("attention.key_length", n_embd // n_head)
    if get("attention.value_length", head_dim) != head_dim:
        raise ValueError("key_length != value_length is not supported")
    if get("rope.dimension_count", head_dim) != head_dim:
        raise ValueError("partial rotary embeddings are not supported for llama")
    if get("expert_count"):
        raise ValueError("mixture-of-experts GGUFs are not supported")
    if "rope_freqs.weight" in tensors:
        raise ValueError(
            "this GGUF carries rope_freqs (llama3-style rope scaling baked into a "
            "tensor); converting it back to rope_scaling is not supported"
        )
    n_vocab = get("vocab_size") or len(meta["tokenizer.ggml.tokens"])

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": n_embd,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": f32_repr(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": f32_repr(get("rope.freq_base", 10000.0)),
        "rope_traditional": False,
        "max_position_embeddings": get("context_length"),
        "vocab_size": n_vocab,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    scaling = get("rope.scaling.type")
    if scaling and scaling != "none":
        if scaling != "linear":
            raise ValueError(f"rope scaling {scaling!r} is not supported")
        config["rope_scaling"] = {
            "rope_type": "linear",
            "factor": f32_repr(get("rope.scaling.factor")),
        }
    else:
        config["rope_scaling"] = None
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is not None:
            config[key.replace("padding", "pad")] = py(v)
    return config


def convert_weights(tensors, config, dtype):
    n_head = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    n_layers = config["num_hidden_layers"]
    out = {}
    bases = sorted({k.rsplit(".", 1)[0] for k in tensors})
    for base in bases:
        if base in IGNORED_TENSORS:
            continue
        parts = base.split(".")
        if parts[0] == "blk":
            layer, kind = int(parts[1]), ".".join(parts[2:])
            if kind not in LAYER_TENSORS or layer >= n_layers:
                raise ValueError(f"unexpected tensor {base}")
            name = f"model.layers.{layer}.{LAYER_TENSORS[kind]}.weight"
        elif base in GLOBAL_TENSORS:
            kind, name = base, GLOBAL_TENSORS[base] + ".weight"
        else:
            raise ValueError(f"unexpected tensor {base}")
        w = dequantized(tensors, base)
        if kind == "attn_q":
            w = unpermute_rows(w, n_head)
        elif kind == "attn_k":
            w = unpermute_rows(w, n_kv)
        out[name] = w.astype(dtype)
    missing = [
        f"model.layers.{i}.{v}.weight"
        for i in range(n_layers)
        for v in LAYER_TENSORS.values()
        if f"model.layers.{i}.{v}.weight" not in out
    ]
    if missing:
        raise ValueError(f"GGUF lacks tensors: {missing[:4]} ...")
    return out


def save_tokenizer(meta, arch, out_dir, max_length):
    """Tokenizer from the GGUF metadata, saved with save_pretrained.

    This is what `AutoTokenizer.from_pretrained(dir, gguf_file=...)` does
    inside (transformers' `convert_gguf_tokenizer` on the metadata), but fed
    the metadata mx.load returns: in transformers 5 the GGUF reader behind
    AutoTokenizer imports torch, which this venv does not have.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    grouped = {
        group: {
            name: py(meta[f"tokenizer.{key}"])
            for key, name in renames.items()
            if f"tokenizer.{key}" in meta
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        # llama.cpp adds BOS for sentencepiece vocabularies that do not say
        tokenizer_config.setdefault("add_bos_token", True)
    tokens = tokenizer_dict["tokens"]
    for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        token_id = py(meta.get(f"tokenizer.ggml.{key}"))
        if token_id is not None:
            tokenizer_config[name] = tokens[token_id]
    backend, extra = convert_gguf_tokenizer(arch, tokenizer_dict)
    tokenizer_config.update(extra)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config)
    tok.model_max_length = max_length
    tok.save_pretrained(str(out_dir))
    # Portability for readers other than transformers 5: the generic class
    # name, and the chat template inside tokenizer_config.json too.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = getattr(tok, "chat_template", None)
    if template and "chat_template" not in cfg:
        cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def up_to_date(gguf_path, out_dir):
    cfg = out_dir / "config.json"
    return cfg.exists() and cfg.stat().st_mtime > gguf_path.stat().st_mtime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--force", action="store_true", help="convert even if up to date")
    a = ap.parse_args()

    mx.set_default_device(mx.cpu)
    gguf_path = Path(a.gguf).resolve()
    out_dir = Path(a.out_dir)
    if not a.force and up_to_date(gguf_path, out_dir):
        log(f"{out_dir}: up to date")
        return

    t0 = time.time()
    tensors, meta = mx.load(str(gguf_path), return_metadata=True)
    arch = py(meta.get("general.architecture"))
    if arch not in SUPPORTED_ARCHS:
        raise SystemExit(f"unsupported GGUF architecture {arch!r} (supported: llama)")

    config = build_config(meta, arch, tensors)
    weights = convert_weights(tensors, config, DTYPES[a.dtype])
    config["torch_dtype"] = a.dtype

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").unlink(missing_ok=True)
    save_tokenizer(meta, arch, out_dir, config["max_position_embeddings"])
    # (mx.save_safetensors adds the suffix; the name must not match
    # model*.safetensors, which load_model globs)
    tmp = out_dir / "partial-model.safetensors"
    mx.save_safetensors(str(tmp), weights, metadata={"format": "pt"})
    os.replace(tmp, out_dir / "model.safetensors")
    tmp = out_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out_dir / "config.json")
    n_params = sum(w.size for w in weights.values())
    log(
        f"{gguf_path.name} -> {out_dir}: {len(weights)} tensors, {n_params / 1e6:.1f}M "
        f"parameters as {a.dtype}, {time.time() - t0:.1f}s"
    )


if __name__ == "__main__":
    main()
