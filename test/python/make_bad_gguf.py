"""Writes a tiny llama-architecture GGUF for the bad-input tests: weights in
a quant type the addon does not convert (IQ2_XXS by default), and with
EXTRA_TOKENS a token list longer than the embedding has rows.

Usage: make_bad_gguf.py OUT.gguf [QUANT_TYPE] [EXTRA_TOKENS]
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

out, qtype_name = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "IQ2_XXS")
extra_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 0
qtype = GGMLQuantizationType[qtype_name]
hidden, vocab, ffn, layers = 64, 32, 128, 1

w = GGUFWriter(out, "llama")
w.add_block_count(layers)
w.add_context_length(128)
w.add_embedding_length(hidden)
w.add_feed_forward_length(ffn)
w.add_head_count(4)
w.add_head_count_kv(2)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(10000.0)
w.add_tokenizer_model("gpt2")
w.add_token_list([f"t{i}" for i in range(vocab + extra_tokens)])
w.add_token_types([1] * (vocab + extra_tokens))
w.add_token_merges([])
w.add_bos_token_id(0)
w.add_eos_token_id(1)


def quantized(rows: int, cols: int) -> np.ndarray:
    block, nbytes = GGML_QUANT_SIZES[qtype]
    return np.zeros((rows, cols // block * nbytes), dtype=np.uint8)


rng = np.random.default_rng(0)
w.add_tensor("token_embd.weight", rng.standard_normal((vocab, hidden), dtype=np.float32))
w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
for i in range(layers):
    for name, (rows, cols) in {"attn_q": (hidden, hidden), "attn_k": (32, hidden), "attn_v": (32, hidden),
                               "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden),
                               "ffn_down": (hidden, ffn)}.items():
        w.add_tensor(f"blk.{i}.{name}.weight", quantized(rows, cols), raw_dtype=qtype)
    w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
    w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
