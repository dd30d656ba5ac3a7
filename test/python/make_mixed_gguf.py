"""Writes tiny random llama and gemma3 GGUF models whose matrices mix types the
way llama.cpp's Q4_K_M files do (Q4_K, Q6_K, Q5_0, Q8_0, ... and F32 norms),
each beside a twin holding the same weights dequantized to F32
(gguf.quants.dequantize): OUT_DIR/<arch>/mixed.gguf and OUT_DIR/<arch>/f32.gguf.

Usage: make_mixed_gguf.py OUT_DIR
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter
from gguf.quants import dequantize

from gguf_blocks import random_tensor

# VOCAB is not a multiple of 16: the CPU decode kernel pads the last group of 16 output columns.
HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS = 256, 512, 4, 2, 64, 264, 3
# Per layer, a Q4_K_M-like choice, with the other affine types mixed in.
LAYER_TYPES = [
    dict(attn_q="Q4_K", attn_k="Q4_K", attn_v="Q6_K", attn_output="Q4_K", ffn_gate="Q4_K", ffn_up="Q4_K", ffn_down="Q6_K"),
    dict(attn_q="Q5_0", attn_k="Q8_0", attn_v="Q5_K", attn_output="Q4_0", ffn_gate="Q5_1", ffn_up="Q4_1", ffn_down="Q6_K"),
    dict(attn_q="Q4_K", attn_k="Q3_K", attn_v="Q2_K", attn_output="F16", ffn_gate="Q8_0", ffn_up="Q5_0", ffn_down="Q4_K"),
]


def matrices(arch):
    yield "token_embd.weight", "Q4_K", VOCAB, HIDDEN
    if arch == "llama":
        yield "output.weight", "Q6_K", VOCAB, HIDDEN
    for i, types in enumerate(LAYER_TYPES):
        shapes = dict(attn_q=(HEADS * HEAD_DIM, HIDDEN), attn_k=(KV_HEADS * HEAD_DIM, HIDDEN),
                      attn_v=(KV_HEADS * HEAD_DIM, HIDDEN), attn_output=(HIDDEN, HEADS * HEAD_DIM),
                      ffn_gate=(FFN, HIDDEN), ffn_up=(FFN, HIDDEN), ffn_down=(HIDDEN, FFN))
        for part, (rows, cols) in shapes.items():
            yield f"blk.{i}.{part}.weight", types[part], rows, cols


def norms(arch):
    yield "output_norm.weight", HIDDEN
    for i in range(LAYERS):
        names = ["attn_norm", "ffn_norm"]
        if arch == "gemma3":
            names += ["post_attention_norm", "post_ffw_norm"]
        for n in names:
            yield f"blk.{i}.{n}.weight", HIDDEN
        if arch == "gemma3":
            yield f"blk.{i}.attn_q_norm.weight", HEAD_DIM
            yield f"blk.{i}.attn_k_norm.weight", HEAD_DIM


def writer(path, arch):
    w = GGUFWriter(path, arch)
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        w.add_sliding_window(8)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    return w


def build(arch, out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7 if arch == "llama" else 8)
    mixed, dense = writer(os.path.join(out, "mixed.gguf"), arch), writer(os.path.join(out, "f32.gguf"), arch)
    for name, type_name, rows, cols in matrices(arch):
        qtype = T[type_name]
        raw = random_tensor(qtype, rows, cols, rng)
        if qtype == T.F16:
            mixed.add_tensor(name, raw)
            dense.add_tensor(name, raw.astype(np.float32))
        else:
            mixed.add_tensor(name, raw, raw_dtype=qtype)
            dense.add_tensor(name, dequantize(raw, qtype).astype(np.float32).reshape(rows, cols))
    for name, n in norms(arch):
        v = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
        mixed.add_tensor(name, v)
        dense.add_tensor(name, v)
    for w in (mixed, dense):
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


for arch in ("llama", "gemma3"):
    build(arch, os.path.join(sys.argv[1], arch))
