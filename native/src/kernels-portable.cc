// Plain C++ kernels: one (row, token) dot product at a time, block-wise integer sums scaled as ggml's
// generic C code does (ggml_vec_dot_*_q8_* in ggml-cpu/quants.c). Used on non-x86 CPUs and as the
// reference the AVX2 path is tested against.
#include <cstring>
#include "fp16.h"
#include "kernels.h"
#include "kquant-scales.h"

namespace moe {
namespace {

using DotFn = float (*)(const uint8_t* w, const Act& a, int t);

template <DotFn F>
void rows(const Job& job, int r0, int r1) {
  const Act& a = *job.act;
  for (int r = r0; r < r1; r++) {
    const uint8_t* w = job.w + (size_t)r * job.rowBytes;
    for (int t = 0; t < a.nTokens; t++) job.out[(size_t)t * job.rows + r] = F(w, a, t);
  }
}

float dotF32(const uint8_t* w, const Act& a, int t) {
  const float* x = a.f32 + (size_t)t * a.cols;
  double sum = 0;
  for (int i = 0; i < a.cols; i++) {
    float v;
    std::memcpy(&v, w + 4 * i, 4);
    sum += (double)(v * x[i]);
  }
  return (float)sum;
}

template <bool BF>
float dotHalf(const uint8_t* w, const Act& a, int t) {
  const uint16_t* x = a.h + (size_t)t * a.cols;
  double sum = 0;
  for (int i = 0; i < a.cols; i++) {
    const uint16_t v = readU16(w + 2 * i);
    sum += BF ? (double)(bf16ToFloat(v) * bf16ToFloat(x[i])) : (double)(fp16ToFloat(v) * fp16ToFloat(x[i]));
  }
  return (float)sum;
}

float dotQ8_0(const uint8_t* w, const Act& a, int t) {
  const int nb = a.blocks;
  float sum = 0;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + 34 * b;
    const int8_t* q = (const int8_t*)(blk + 2);
    const int8_t* y = a.qs + ((size_t)t * nb + b) * 32;
    int sumi = 0;
    for (int i = 0; i < 32; i++) sumi += q[i] * y[i];
    sum += (float)sumi * (readF16(blk) * a.d[(size_t)t * nb + b]);
  }
  return sum;
}

float dotQ4_0(const uint8_t* w, const Act& a, int t) {
  const int nb = a.blocks;
  float sum = 0;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + 18 * b;
    const uint8_t* q = blk + 2;
    const int8_t* y = a.qs + ((size_t)t * nb + b) * 32;
    int sumi = 0;
    for (int i = 0; i < 16; i++) sumi += ((q[i] & 0xF) - 8) * y[i] + ((q[i] >> 4) - 8) * y[i + 16];
    sum += (float)sumi * (readF16(blk) * a.d[(size_t)t * nb + b]);
  }
  return sum;
}

float dotQ4_1(const uint8_t* w, const Act& a, int t) {
  const int nb = a.blocks;
  float sum = 0;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + 20 * b;
    const uint8_t* q = blk + 4;
    const size_t ab = (size_t)t * nb + b;
    const int8_t* y = a.qs + ab * 32;
    int sumi = 0;
    for (int i = 0; i < 16; i++) sumi += (q[i] & 0xF) * y[i] + (q[i] >> 4) * y[i + 16];
    sum += (readF16(blk) * a.d[ab]) * (float)sumi + readF16(blk + 2) * a.s[ab];
  }
  return sum;
}

// Q5_0 / Q5_1: bit j of the 32-bit qh is the 5th bit of value j (values j < 16 in low nibbles).
template <bool MIN>
float dotQ5(const uint8_t* w, const Act& a, int t) {
  const int nb = a.blocks;
  const int bytes = MIN ? 24 : 22, hOff = MIN ? 4 : 2;
  float sum = 0;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + bytes * b;
    uint32_t qh;
    std::memcpy(&qh, blk + hOff, 4);
    const uint8_t* q = blk + hOff + 4;
    const size_t ab = (size_t)t * nb + b;
    const int8_t* y = a.qs + ab * 32;
    const int off = MIN ? 0 : 16;
    int sumi = 0;
    for (int i = 0; i < 16; i++) {
      const int v0 = ((q[i] & 0xF) | (((qh >> i) & 1) << 4)) - off;
      const int v1 = ((q[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) - off;
      sumi += v0 * y[i] + v1 * y[i + 16];
    }
    if (MIN) sum += (readF16(blk) * a.d[ab]) * (float)sumi + readF16(blk + 2) * a.s[ab];
    else sum += (float)sumi * (readF16(blk) * a.d[ab]);
  }
  return sum;
}

// K-quants: per super-block an exact integer sum, then d * y.d * sumi - dmin * y.d * (mins . bsums).
// Q4_K and Q5_K share the layout but for Q5_K's 32 bytes of fifth bits (qh) before the nibbles.
template <bool FIFTH_BIT>
float dotQ4Q5_K(const uint8_t* w, const Act& a, int t) {
  constexpr int kBlockBytes = FIFTH_BIT ? 176 : 144;
  const int nb = a.blocks;
  float sum = 0;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + kBlockBytes * b;
    const uint8_t* scales = blk + 4;
    const uint8_t* qh = blk + 16;
    const uint8_t* q = blk + (FIFTH_BIT ? 48 : 16);
    const size_t ab = (size_t)t * nb + b;
    const int8_t* y = a.qs + ab * 256;
    const int16_t* bs = a.bsums + ab * 16;
    int sumi = 0, summ = 0;
    for (int j = 0; j < 4; j++, q += 32, y += 64) {
      int sc1, m1, sc2, m2;
      kScaleMin(2 * j, scales, &sc1, &m1);
      kScaleMin(2 * j + 1, scales, &sc2, &m2);
      int s1 = 0, s2 = 0;
      for (int l = 0; l < 32; l++) {
        const int hi1 = FIFTH_BIT ? ((qh[l] >> (2 * j)) & 1) << 4 : 0;
        const int hi2 = FIFTH_BIT ? ((qh[l] >> (2 * j + 1)) & 1) << 4 : 0;
        s1 += ((q[l] & 0xF) | hi1) * y[l];
        s2 += ((q[l] >> 4) | hi2) * y[l + 32];
      }
      sumi += sc1 * s1 + sc2 * s2;
      summ += m1 * (bs[4 * j] + bs[4 * j + 1]) + m2 * (bs[4 * j + 2] + bs[4 * j + 3]);
    }
    const float yd = a.d[ab];
    sum += (readF16(blk) * yd) * (float)sumi - (readF16(blk + 2) * yd) * (float)summ;
  }
  return sum;
}

float dotQ6_K(const uint8_t* w, const Act& a, int t) {
  const int nb = a.blocks;
  float sum = 0;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + 210 * b;
    const size_t ab = (size_t)t * nb + b;
    const int8_t* sc = (const int8_t*)(blk + 192);
    int sumi = 0;
    for (int n = 0; n < 2; n++) {
      const uint8_t* ql = blk + 64 * n;
      const uint8_t* qh = blk + 128 + 32 * n;
      const int8_t* y = a.qs + ab * 256 + 128 * n;
      int g[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 16-value groups of this half, in y order
      for (int l = 0; l < 32; l++) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        g[is] += q1 * y[l];
        g[is + 2] += q2 * y[l + 32];
        g[is + 4] += q3 * y[l + 64];
        g[is + 6] += q4 * y[l + 96];
      }
      for (int k = 0; k < 8; k++) sumi += sc[8 * n + k] * g[k];
    }
    sum += (readF16(blk + 208) * a.d[ab]) * (float)sumi;
  }
  return sum;
}

float dotQ2_K(const uint8_t* w, const Act& a, int t) {
  const int nb = a.blocks;
  float sum = 0;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + 84 * b;
    const uint8_t* scales = blk;
    const size_t ab = (size_t)t * nb + b;
    const int16_t* bs = a.bsums + ab * 16;
    int sumi = 0, summ = 0;
    for (int g = 0; g < 16; g++) summ += (scales[g] >> 4) * bs[g];
    for (int n = 0; n < 2; n++) {
      const uint8_t* q = blk + 16 + 32 * n;
      for (int j = 0; j < 4; j++) {
        const int shift = 2 * j;
        for (int k = 0; k < 2; k++) {
          const int g = 8 * n + 2 * j + k;
          const int8_t* y = a.qs + ab * 256 + 16 * g;
          int s = 0;
          for (int l = 0; l < 16; l++) s += ((q[l + 16 * k] >> shift) & 3) * y[l];
          sumi += (scales[g] & 0xF) * s;
        }
      }
    }
    const float yd = a.d[ab];
    sum += (readF16(blk + 80) * yd) * (float)sumi - (readF16(blk + 82) * yd) * (float)summ;
  }
  return sum;
}

float dotQ3_K(const uint8_t* w, const Act& a, int t) {
  const int nb = a.blocks;
  float sum = 0;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + 110 * b;
    const uint8_t* hm = blk;
    int8_t scales[16];
    q3kScales(blk + 96, scales);
    const size_t ab = (size_t)t * nb + b;
    int sumi = 0;
    int m = 1;
    for (int n = 0; n < 2; n++) {
      const uint8_t* q = blk + 32 + 32 * n;
      for (int j = 0; j < 4; j++, m <<= 1) {
        const int shift = 2 * j;
        for (int k = 0; k < 2; k++) {
          const int g = 8 * n + 2 * j + k;
          const int8_t* y = a.qs + ab * 256 + 16 * g;
          int s = 0;
          for (int l = 0; l < 16; l++) {
            const int v = ((q[l + 16 * k] >> shift) & 3) - ((hm[l + 16 * k] & m) ? 0 : 4);
            s += v * y[l];
          }
          sumi += scales[g] * s;
        }
      }
    }
    sum += (readF16(blk + 108) * a.d[ab]) * (float)sumi;
  }
  return sum;
}

}  // namespace

RowsKernel portableKernel(int type) {
  switch (type) {
    case T_F32: return rows<dotF32>;
    case T_F16: return rows<dotHalf<false>>;
    case T_BF16: return rows<dotHalf<true>>;
    case T_Q8_0: return rows<dotQ8_0>;
    case T_Q4_0: return rows<dotQ4_0>;
    case T_Q4_1: return rows<dotQ4_1>;
    case T_Q5_0: return rows<dotQ5<false>>;
    case T_Q5_1: return rows<dotQ5<true>>;
    case T_Q2_K: return rows<dotQ2_K>;
    case T_Q3_K: return rows<dotQ3_K>;
    case T_Q4_K: return rows<dotQ4Q5_K<false>>;
    case T_Q5_K: return rows<dotQ4Q5_K<true>>;
    case T_Q6_K: return rows<dotQ6_K>;
    default: return nullptr;
  }
}

double sumBytesPortable(const uint8_t* p, size_t n) {
  uint64_t sum = 0;
  for (size_t i = 0; i < n; i++) sum += p[i];
  return (double)sum;
}

}  // namespace moe
