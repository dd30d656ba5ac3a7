#include "ggml_types.h"

#include <cstring>
#include <stdexcept>

namespace mlxb {

namespace {

// IEEE half -> float, exactly (subnormals, infinities and NaNs included).
float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int shift = 0;
    while (!(mant & 0x400)) mant <<= 1, ++shift;
    bits = sign | ((113 - shift) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float f16_at(const uint8_t* p) { return half_to_float(static_cast<uint16_t>(p[0] | p[1] << 8)); }
uint32_t u32_at(const uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24; }

constexpr int8_t IQ4_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// One 32-value group of an affine-exact type: w[i] = scale * q[i] + bias.
struct AffineGroup {
  float scale = 0, bias = 0;
  uint8_t q[32];
};

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (of 8), packed in 12 bytes.
void k_scale_min(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

int groups_per_block(uint32_t type) { return type == GGML_Q4_K || type == GGML_Q5_K ? 8 : 1; }

// Group g of the block at b. The products scale * q are exact in float32
// (at most 22 significant bits), so scale * q + bias rounds once, exactly as
// the reference's d * (q - 8), d * q + m, or (d * sc) * q - dmin * m do.
void affine_group(uint32_t type, const uint8_t* b, int g, AffineGroup& out) {
  auto nibbles = [&](const uint8_t* qs, const uint8_t* qh, uint32_t high_bits) {
    for (int i = 0; i < 16; ++i) {
      out.q[i] = qs[i] & 0xf;
      out.q[i + 16] = qs[i] >> 4;
    }
    if (qh) {
      for (int i = 0; i < 32; ++i) out.q[i] |= ((high_bits >> i) & 1) << 4;
    }
  };
  switch (type) {
    case GGML_Q4_0: out.scale = f16_at(b), out.bias = -8.0f * out.scale, nibbles(b + 2, nullptr, 0); return;
    case GGML_Q4_1: out.scale = f16_at(b), out.bias = f16_at(b + 2), nibbles(b + 4, nullptr, 0); return;
    case GGML_Q5_0: out.scale = f16_at(b), out.bias = -16.0f * out.scale, nibbles(b + 6, b, u32_at(b + 2)); return;
    case GGML_Q5_1: out.scale = f16_at(b), out.bias = f16_at(b + 2), nibbles(b + 8, b, u32_at(b + 4)); return;
    case GGML_Q8_0:
      out.scale = f16_at(b), out.bias = -128.0f * out.scale;
      for (int i = 0; i < 32; ++i) out.q[i] = static_cast<uint8_t>(static_cast<int8_t>(b[2 + i]) + 128);
      return;
    case GGML_Q4_K:
    case GGML_Q5_K: {
      int sc, m;
      k_scale_min(b + 4, g, sc, m);
      out.scale = f16_at(b) * static_cast<float>(sc);
      out.bias = -(f16_at(b + 2) * static_cast<float>(m));
      const bool five = type == GGML_Q5_K;
      const uint8_t* qs = b + (five ? 48 : 16) + (g / 2) * 32;
      const int shift = 4 * (g % 2);
      for (int l = 0; l < 32; ++l) out.q[l] = (qs[l] >> shift) & 0xf;
      if (five) {
        for (int l = 0; l < 32; ++l) out.q[l] |= ((b[16 + l] >> g) & 1) << 4;
      }
      return;
    }
  }
  throw std::logic_error("affine_group: type " + ggml_type_name(type) + " is not affine");
}

// Types with 16-wide sub-blocks or lookup tables: the reference's formulas.
void dequantize_block(uint32_t type, const uint8_t* b, float* y) {
  switch (type) {
    case GGML_Q2_K: {
      const float d = f16_at(b + 80), dmin = f16_at(b + 82);
      for (int e = 0; e < 256; ++e) {
        const uint8_t s = b[e / 16];
        const float q = static_cast<float>((b[16 + (e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3);
        y[e] = (d * static_cast<float>(s & 0xf)) * q - dmin * static_cast<float>(s >> 4);
      }
      return;
    }
    case GGML_Q3_K: {
      const uint8_t* s = b + 96;
      const float d = f16_at(b + 108);
      for (int e = 0; e < 256; ++e) {
        const int i = e / 16;
        const int sc = ((i < 8 ? s[i] & 0xf : s[i - 8] >> 4) | (((s[8 + i % 4] >> (2 * (i / 4))) & 3) << 4)) - 32;
        const int low = (b[32 + (e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        const int high = ((b[e % 32] >> (e / 32)) & 1) ^ 1;
        y[e] = (d * static_cast<float>(sc)) * static_cast<float>(low - (high << 2));
      }
      return;
    }
    case GGML_Q6_K: {
      const float d = f16_at(b + 208);
      for (int e = 0; e < 256; ++e) {
        const int h = e / 128, w = e % 128;
        const int low = (b[h * 64 + w % 64] >> (4 * (w / 64))) & 0xf;
        const int high = (b[128 + h * 32 + w % 32] >> (2 * (w / 32))) & 3;
        const float sc = static_cast<float>(static_cast<int8_t>(b[192 + e / 16]));
        y[e] = (d * sc) * static_cast<float>((low | high << 4) - 32);
      }
      return;
    }
    case GGML_IQ4_NL: {
      const float d = f16_at(b);
      for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(IQ4_VALUES[i < 16 ? b[2 + i] & 0xf : b[2 + i - 16] >> 4]);
      return;
    }
    case GGML_IQ4_XS: {
      const float d = f16_at(b);
      const uint16_t sh = static_cast<uint16_t>(b[2] | b[3] << 8);
      for (int e = 0; e < 256; ++e) {
        const int i = e / 32, w = e % 32;
        const int sc = (((b[4 + i / 2] >> (4 * (i % 2))) & 0xf) | (((sh >> (2 * i)) & 3) << 4)) - 32;
        const int q = (b[8 + i * 16 + w % 16] >> (4 * (w / 16))) & 0xf;
        y[e] = (d * static_cast<float>(sc)) * static_cast<float>(IQ4_VALUES[q]);
      }
      return;
    }
  }
  throw std::logic_error("dequantize_block: unexpected type " + ggml_type_name(type));
}

// A group's 32 values fill exactly BITS words: value c of a row sits at bit
// c * BITS of its little-endian stream (MLX's affine packing).
template <int BITS>
void pack_group(const uint8_t* q, uint32_t* dst) {
  uint64_t acc = 0;
  int filled = 0;
  for (int i = 0; i < 32; ++i) {
    acc |= static_cast<uint64_t>(q[i]) << filled;
    filled += BITS;
    if (filled >= 32) {
      *dst++ = static_cast<uint32_t>(acc);
      acc >>= 32;
      filled -= 32;
    }
  }
}

// Low (shift 0) or high (shift 4) nibbles of 8 bytes, packed into one word.
uint32_t nibbles8(const uint8_t* bytes, int shift) {
  uint64_t x;
  std::memcpy(&x, bytes, 8);  // little-endian hosts
  x = (x >> shift) & 0x0f0f0f0f0f0f0f0full;
  x = (x | (x >> 4)) & 0x00ff00ff00ff00ffull;
  x = (x | (x >> 8)) & 0x0000ffff0000ffffull;
  return static_cast<uint32_t>(x | (x >> 16));
}

// Q4_0, Q4_1, Q4_K and Q8_0 straight from their bytes: their quants already
// sit in MLX's order, so whole words are moved at once. False for other types.
bool pack_group_fast(uint32_t type, const uint8_t* b, int g, uint32_t* dst, float& scale, float& bias) {
  const uint8_t* qs = nullptr;
  int shift = 0;
  switch (type) {
    case GGML_Q4_0: scale = f16_at(b), bias = -8.0f * scale, qs = b + 2; break;
    case GGML_Q4_1: scale = f16_at(b), bias = f16_at(b + 2), qs = b + 4; break;
    case GGML_Q4_K: {
      int sc, m;
      k_scale_min(b + 4, g, sc, m);
      scale = f16_at(b) * static_cast<float>(sc);
      bias = -(f16_at(b + 2) * static_cast<float>(m));
      qs = b + 16 + (g / 2) * 32, shift = 4 * (g % 2);
      for (int k = 0; k < 4; ++k) dst[k] = nibbles8(qs + 8 * k, shift);
      return true;
    }
    case GGML_Q8_0:
      scale = f16_at(b), bias = -128.0f * scale;
      for (int k = 0; k < 8; ++k) dst[k] = u32_at(b + 2 + 4 * k) ^ 0x80808080u;  // int8 x -> x + 128
      return true;
    default: return false;
  }
  // Q4_0 / Q4_1: values 0-15 are the low nibbles of 16 bytes, 16-31 the high ones.
  dst[0] = nibbles8(qs, 0), dst[1] = nibbles8(qs + 8, 0), dst[2] = nibbles8(qs, 4), dst[3] = nibbles8(qs + 8, 4);
  return true;
}

}  // namespace

std::optional<GgmlBlock> ggml_block(uint32_t type) {
  switch (type) {
    case GGML_F32: return GgmlBlock{1, 4};
    case GGML_F16: return GgmlBlock{1, 2};
    case GGML_BF16: return GgmlBlock{1, 2};
    case GGML_Q4_0: return GgmlBlock{32, 18};
    case GGML_Q4_1: return GgmlBlock{32, 20};
    case GGML_Q5_0: return GgmlBlock{32, 22};
    case GGML_Q5_1: return GgmlBlock{32, 24};
    case GGML_Q8_0: return GgmlBlock{32, 34};
    case GGML_Q2_K: return GgmlBlock{256, 84};
    case GGML_Q3_K: return GgmlBlock{256, 110};
    case GGML_Q4_K: return GgmlBlock{256, 144};
    case GGML_Q5_K: return GgmlBlock{256, 176};
    case GGML_Q6_K: return GgmlBlock{256, 210};
    case GGML_IQ4_NL: return GgmlBlock{32, 18};
    case GGML_IQ4_XS: return GgmlBlock{256, 136};
  }
  return std::nullopt;
}

std::string ggml_type_name(uint32_t type) {
  static const char* names[] = {"F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
                                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
                                "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64",
                                "IQ1_M", "BF16"};
  if (type < sizeof(names) / sizeof(names[0])) return names[type];
  return std::to_string(type) + " (unknown)";
}

int ggml_affine_bits(uint32_t type) {
  switch (type) {
    case GGML_Q4_0: case GGML_Q4_1: case GGML_Q4_K: return 4;
    case GGML_Q5_0: case GGML_Q5_1: case GGML_Q5_K: return 5;
    case GGML_Q8_0: return 8;
  }
  return 0;
}

void ggml_dequantize(uint32_t type, const uint8_t* src, int64_t count, float* dst) {
  const auto block = ggml_block(type);
  if (!block) throw std::invalid_argument("unsupported ggml type " + ggml_type_name(type));
  switch (type) {
    case GGML_F32: std::memcpy(dst, src, count * 4); return;
    case GGML_F16: for (int64_t i = 0; i < count; ++i) dst[i] = f16_at(src + 2 * i); return;
    case GGML_BF16:
      for (int64_t i = 0; i < count; ++i) {
        const uint32_t bits = static_cast<uint32_t>(src[2 * i] | src[2 * i + 1] << 8) << 16;
        std::memcpy(dst + i, &bits, 4);
      }
      return;
  }
  const int64_t blocks = count / block->elements;
  if (ggml_affine_bits(type)) {
    AffineGroup group;
    const int groups = groups_per_block(type);
    for (int64_t k = 0; k < blocks; ++k) {
      for (int g = 0; g < groups; ++g) {
        affine_group(type, src + k * block->bytes, g, group);
        float* y = dst + k * block->elements + g * 32;
        for (int i = 0; i < 32; ++i) y[i] = group.scale * static_cast<float>(group.q[i]) + group.bias;
      }
    }
    return;
  }
  for (int64_t k = 0; k < blocks; ++k) dequantize_block(type, src + k * block->bytes, dst + k * block->elements);
}

void ggml_affine_repack(uint32_t type, const uint8_t* src, int64_t rows, int64_t cols, AffineOut out) {
  const int bits = ggml_affine_bits(type);
  const auto block = ggml_block(type);
  if (!bits || !block) throw std::invalid_argument("type " + ggml_type_name(type) + " has no MLX affine form");
  const int64_t groups = cols / 32, words = cols * bits / 32, per_block = groups_per_block(type);
  AffineGroup group;
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* w = out.packed + r * words;
    for (int64_t gi = 0; gi < groups; ++gi) {
      const int64_t flat = r * groups + gi;  // blocks never straddle rows: cols is a whole number of blocks
      const uint8_t* b = src + (flat / per_block) * block->bytes;
      const int g = static_cast<int>(flat % per_block);
      uint32_t* dst = w + gi * bits;
      if (!pack_group_fast(type, b, g, dst, out.scales[flat], out.biases[flat])) {
        affine_group(type, b, g, group);
        out.scales[flat] = group.scale;
        out.biases[flat] = group.bias;
        pack_group<5>(group.q, dst);  // the 5-bit types
      }
    }
  }
}

}  // namespace mlxb
