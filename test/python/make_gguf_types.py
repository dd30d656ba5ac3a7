"""Writes types.gguf with one (64, 512) tensor of every ggml type the addon
reads, and reference.safetensors with each tensor's float32 values from the
gguf package's own dequantization (gguf.quants.dequantize).

Usage: make_gguf_types.py OUT_DIR
"""
import os
import sys

import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter
from gguf.quants import dequantize

from gguf_blocks import random_tensor

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS"]
ROWS, COLS = 64, 512

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(6)
w = GGUFWriter(os.path.join(out, "types.gguf"), "llama")
reference = {}
for name in TYPES:
    qtype = T[name]
    raw = random_tensor(qtype, ROWS, COLS, rng)
    if qtype in (T.F32, T.F16):
        w.add_tensor(f"t.{name}", raw)
        reference[name] = mx.array(raw.astype(np.float32))
    else:
        w.add_tensor(f"t.{name}", raw, raw_dtype=qtype)
        reference[name] = mx.array(dequantize(raw, qtype).astype(np.float32).reshape(ROWS, COLS))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
mx.save_safetensors(os.path.join(out, "reference.safetensors"), reference)
