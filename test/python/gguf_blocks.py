"""Random ggml blocks for tests: seeded random bytes, with each block's fp16
scale fields replaced by finite values of a size that keeps weights small
(about 0.01 to 0.5), so models built from them give sane logits."""
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

# type -> [(byte offset of an fp16 field in the block, magnitude of its values)]
SCALE_FIELDS = {
    T.Q4_0: [(0, 0.01)],
    T.Q4_1: [(0, 0.01), (2, 0.05)],
    T.Q5_0: [(0, 0.005)],
    T.Q5_1: [(0, 0.005), (2, 0.05)],
    T.Q8_0: [(0, 0.0005)],
    T.Q2_K: [(80, 0.005), (82, 0.005)],
    T.Q3_K: [(108, 0.002)],
    T.Q4_K: [(0, 0.0005), (2, 0.0005)],
    T.Q5_K: [(0, 0.0002), (2, 0.0005)],
    T.Q6_K: [(208, 0.00003)],
    T.IQ4_NL: [(0, 0.0005)],
    T.IQ4_XS: [(0, 0.0001)],
}


def random_tensor(qtype: T, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, cols) values of `qtype` as the raw bytes GGUFWriter takes with raw_dtype."""
    if qtype == T.F32:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    if qtype == T.F16:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)
    if qtype == T.BF16:
        bits = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8).reshape(rows, cols * 2)
    block, nbytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    for offset, size in SCALE_FIELDS[qtype]:
        values = (rng.uniform(0.2, 1.0, size=raw.shape[:2]) * size).astype(np.float16)
        signs = np.where(rng.random(raw.shape[:2]) < 0.5, -1, 1).astype(np.float16) if offset == 0 and qtype in (T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL) else 1
        raw[:, :, offset:offset + 2] = (values * signs).astype(np.float16).view(np.uint8).reshape(raw.shape[0], raw.shape[1], 2)
    return raw.reshape(rows, -1)
