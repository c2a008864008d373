// Half-precision and bfloat16 conversions, bit-exact with ggml's (round to nearest even), in plain C++
// so that both kernel paths convert activations identically.
#pragma once
#include <cstdint>
#include <cstring>

namespace moe {

static inline uint32_t floatBits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float bitsFloat(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

static inline float fp16ToFloat(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bitsFloat(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bitsFloat(sign);
    // Subnormal half: normalise the mantissa into a float exponent.
    int shifts = 0;
    while (!(mant & 0x400u)) { mant <<= 1; shifts++; }
    mant &= 0x3ffu;
    return bitsFloat(sign | ((uint32_t)(113 - shifts) << 23) | (mant << 13));
  }
  return bitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

static inline uint16_t floatToFp16(float f) {
  const uint32_t x = floatBits(f);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00 : 0x7c00);  // NaN / inf
  if (ax >= 0x477ff000u) return sign | 0x7c00;  // 65520 and up round to inf
  const uint32_t e = ax >> 23;
  const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  if (e < 113) {  // half subnormal: value in units of 2^-24 is mant >> (126 - e)
    const uint32_t shift = 126 - e;
    if (shift >= 25) return sign;
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return sign | (uint16_t)q;
  }
  uint32_t h = ((e - 112) << 10) | ((ax >> 13) & 0x3ffu);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
  return sign | (uint16_t)h;
}

static inline float bf16ToFloat(uint16_t h) { return bitsFloat((uint32_t)h << 16); }

static inline uint16_t floatToBf16(float f) {
  const uint32_t u = floatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);  // quiet NaN
  return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

static inline uint16_t readU16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
static inline float readF16(const uint8_t* p) { return fp16ToFloat(readU16(p)); }

}  // namespace moe
