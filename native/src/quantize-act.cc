// Activation quantizers, following ggml's reference quantizers (quantize_row_q8_0_ref, _q8_1_ref,
// _q8_K_ref) so that the dot products see the numbers llama.cpp's CPU backend sees.
#include "quantize-act.h"

#include <cmath>
#include "fp16.h"

namespace moe {

bool typeGeometry(int type, TypeGeometry* g) {
  switch (type) {
    case T_F32: *g = {1, 4, ActKind::F32}; return true;
    case T_F16: *g = {1, 2, ActKind::F16}; return true;
    case T_BF16: *g = {1, 2, ActKind::BF16}; return true;
    case T_Q4_0: *g = {32, 18, ActKind::Q8_0}; return true;
    case T_Q4_1: *g = {32, 20, ActKind::Q8_1}; return true;
    case T_Q5_0: *g = {32, 22, ActKind::Q8_0}; return true;
    case T_Q5_1: *g = {32, 24, ActKind::Q8_1}; return true;
    case T_Q8_0: *g = {32, 34, ActKind::Q8_0}; return true;
    case T_Q2_K: *g = {256, 84, ActKind::Q8_K}; return true;
    case T_Q3_K: *g = {256, 110, ActKind::Q8_K}; return true;
    case T_Q4_K: *g = {256, 144, ActKind::Q8_K}; return true;
    case T_Q5_K: *g = {256, 176, ActKind::Q8_K}; return true;
    case T_Q6_K: *g = {256, 210, ActKind::Q8_K}; return true;
    default: return false;
  }
}

// roundf (half away from zero) for |v| <= 128, inline: v - trunc(v) is exact in float.
static inline int roundHalfAway(float v) {
  int i = (int)v;
  const float frac = v - (float)i;
  if (frac >= 0.5f) i++;
  else if (frac <= -0.5f) i--;
  return i;
}

// Q8_0 / Q8_1: d = amax / 127, q = round(x / d) half away from zero; d is stored as f16.
static void quantizeQ8Block32(const float* x, int8_t* q, float* d, float* s) {
  float amax = 0.0f;
  for (int i = 0; i < 32; i++) {
    const float ax = std::fabs(x[i]);
    amax = amax > ax ? amax : ax;  // ggml MAX(amax, ax)
  }
  const float dd = amax / 127.0f;
  const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
  int sum = 0;
  for (int i = 0; i < 32; i++) {
    q[i] = (int8_t)roundHalfAway(x[i] * id);
    sum += q[i];
  }
  *d = fp16ToFloat(floatToFp16(dd));
  if (s) *s = fp16ToFloat(floatToFp16((float)sum * dd));
}

// ggml's nearest_int: round half to even through the float mantissa (valid for |v| < 2^22).
static inline int nearestInt(float v) {
  const float big = v + 12582912.0f;
  int i;
  std::memcpy(&i, &big, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Q8_K: the signed value of largest magnitude maps to -127; d stays f32; bsums per 16 quants.
static void quantizeQ8KBlock(const float* x, int8_t* q, float* d, int16_t* bsums) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < 256; i++) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) { amax = ax; max = x[i]; }
  }
  if (amax == 0.0f) {
    for (int i = 0; i < 256; i++) q[i] = 0;
    for (int j = 0; j < 16; j++) bsums[j] = 0;
    *d = 0.0f;
    return;
  }
  const float iscale = -127.0f / max;
  for (int i = 0; i < 256; i++) {
    const int v = nearestInt(iscale * x[i]);
    q[i] = (int8_t)(v < 127 ? v : 127);
  }
  for (int j = 0; j < 16; j++) {
    int sum = 0;
    for (int i = 0; i < 16; i++) sum += q[16 * j + i];
    bsums[j] = (int16_t)sum;
  }
  *d = 1.0f / iscale;
}

ActBuffers::ActBuffers(ActKind kind, const float* x, int nTokens, int cols) {
  const size_t n = (size_t)nTokens * cols;
  act_ = Act{nTokens, cols, cols, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  switch (kind) {
    case ActKind::F32:
      act_.f32 = x;
      break;
    case ActKind::F16:
    case ActKind::BF16:
      h_.resize(n);
      for (size_t i = 0; i < n; i++) h_[i] = kind == ActKind::F16 ? floatToFp16(x[i]) : floatToBf16(x[i]);
      act_.h = h_.data();
      break;
    case ActKind::Q8_0:
    case ActKind::Q8_1: {
      const size_t blocks = n / 32;
      qs_.resize(n);
      d_.resize(blocks);
      if (kind == ActKind::Q8_1) s_.resize(blocks);
      for (size_t b = 0; b < blocks; b++) {
        quantizeQ8Block32(x + 32 * b, qs_.data() + 32 * b, &d_[b], kind == ActKind::Q8_1 ? &s_[b] : nullptr);
      }
      act_.blocks = cols / 32;
      act_.qs = qs_.data();
      act_.d = d_.data();
      act_.s = kind == ActKind::Q8_1 ? s_.data() : nullptr;
      if (kind == ActKind::Q8_0) {
        q4Offset_.resize(blocks);
        for (size_t b = 0; b < blocks; b++) {
          int sum = 0;
          for (int i = 0; i < 32; i++) sum += qs_[32 * b + i];
          q4Offset_[b] = -8 * sum;
        }
        act_.q4Offset = q4Offset_.data();
      }
      break;
    }
    case ActKind::Q8_K: {
      const size_t blocks = n / 256;
      qs_.resize(n);
      d_.resize(blocks);
      bsums_.resize(n / 16);
      for (size_t b = 0; b < blocks; b++) {
        quantizeQ8KBlock(x + 256 * b, qs_.data() + 256 * b, &d_[b], bsums_.data() + 16 * b);
      }
      act_.blocks = cols / 256;
      act_.qs = qs_.data();
      act_.d = d_.data();
      act_.bsums = bsums_.data();
      break;
    }
  }
}

}  // namespace moe
