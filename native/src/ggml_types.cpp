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
    for (int i = 0; i < 32; ++i) {
      uint8_t q = i < 16 ? qs[i] & 0xf : qs[i - 16] >> 4;
      if (qh) q |= ((high_bits >> i) & 1) << 4;
      out.q[i] = q;
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
      for (int l = 0; l < 32; ++l) {
        uint8_t q = (qs[l] >> (4 * (g % 2))) & 0xf;
        if (five) q |= ((b[16 + l] >> g) & 1) << 4;
        out.q[l] = q;
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

AffineWeights ggml_affine_repack(uint32_t type, const uint8_t* src, int64_t rows, int64_t cols) {
  AffineWeights out;
  out.bits = ggml_affine_bits(type);
  const auto block = ggml_block(type);
  if (!out.bits || !block) throw std::invalid_argument("type " + ggml_type_name(type) + " has no MLX affine form");
  const int64_t groups = cols / 32, words = cols * out.bits / 32, per_block = groups_per_block(type);
  out.packed.assign(rows * words, 0);
  out.scales.resize(rows * groups);
  out.biases.resize(rows * groups);
  AffineGroup group;
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* w = out.packed.data() + r * words;
    for (int64_t gi = 0; gi < groups; ++gi) {
      const int64_t flat = r * groups + gi;  // blocks never straddle rows: cols is a whole number of blocks
      affine_group(type, src + (flat / per_block) * block->bytes, static_cast<int>(flat % per_block), group);
      out.scales[flat] = group.scale;
      out.biases[flat] = group.bias;
      for (int i = 0; i < 32; ++i) {  // value c of the row at bit c * bits of its little-endian stream
        const int64_t pos = (gi * 32 + i) * out.bits;
        const int off = static_cast<int>(pos % 32);
        w[pos / 32] |= static_cast<uint32_t>(group.q[i]) << off;
        if (off + out.bits > 32) w[pos / 32 + 1] |= static_cast<uint32_t>(group.q[i]) >> (32 - off);
      }
    }
  }
  return out;
}

}  // namespace mlxb
