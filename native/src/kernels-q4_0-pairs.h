// Q4_0 x Q8_0 kernel body shared by the AVX2 path (kernels-avx2.cc) and the AVX-512 VNNI path
// (kernels-avx512.cc). The including file first defines Q4P_FN (the function target attribute), Q4P_NS (a
// namespace of its own) and Q4P_VNNI (1: vpdpbusd on 256-bit vectors, 0: maddubs + madd).
//
// Two blocks per vector: the 16 nibble bytes of blocks b and b+1 fill the two 128-bit halves, so one mask
// gives values 0-15 of both blocks and one shift + mask gives values 16-31. The activation is rearranged to
// that order once per call (every row reuses it). Per group of 8 blocks three hadds leave the 8 exact
// block sums in the order 0,2,4,6,1,3,5,7; the activation scales and Q4_0 offsets are stored in that order
// and the 8 weight scales are packed in general registers (off the vector pipes), so one FMA scales the
// group. The integer sums are exact either way, so both variants give the same bits.
#include <immintrin.h>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace moe {
namespace Q4P_NS {

constexpr int GROUP_ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};
// Software prefetch distance (bytes ahead of the group being read): long rows (several KiB) do best
// about a row ahead into L2, short rows 4 KiB ahead into L1 (measured on Zen 4, one thread: without it the
// hardware prefetcher alone leaves the kernel near half the read bandwidth).
constexpr int LONG_ROW = 4096;  // values

struct PreparedAct {
  std::vector<int8_t> qs;    // per token and group: 4 pairs x [b 0-15, b+1 0-15, b 16-31, b+1 16-31]
  std::vector<float> d;      // per token and group: activation scales in GROUP_ORDER
  std::vector<int32_t> off;  // likewise the -8 * sum(quants) offsets
  int groups;

  explicit PreparedAct(const Act& a) : groups(a.blocks / 8) {
    qs.resize((size_t)a.nTokens * groups * 256);
    d.resize((size_t)a.nTokens * groups * 8);
    off.resize(d.size());
    for (int t = 0; t < a.nTokens; t++) {
      for (int g = 0; g < groups; g++) {
        const size_t src = (size_t)t * a.blocks + 8 * g, dst = ((size_t)t * groups + g) * 8;
        for (int i = 0; i < 4; i++) {
          const int8_t* y = a.qs + (src + 2 * i) * 32;
          int8_t* o = qs.data() + dst * 32 + 64 * i;
          std::memcpy(o, y, 16);
          std::memcpy(o + 16, y + 32, 16);
          std::memcpy(o + 32, y + 16, 16);
          std::memcpy(o + 48, y + 48, 16);
        }
        for (int k = 0; k < 8; k++) {
          d[dst + k] = a.d[src + GROUP_ORDER[k]];
          off[dst + k] = a.q4Offset[src + GROUP_ORDER[k]];
        }
      }
    }
  }
};

inline uint64_t scale4(const uint8_t* p) {
  uint16_t h[4];
  for (int k = 0; k < 4; k++) std::memcpy(&h[k], p + 36 * k, 2);
  uint64_t v = (uint64_t)h[0] | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 32 | (uint64_t)h[3] << 48;
  __asm__("" : "+r"(v));  // keep the packing in general registers (GCC would vectorize it into ~10 shuffles)
  return v;
}

// The 8 weight scales of a group (f16 at a stride of 18 bytes) in GROUP_ORDER, as floats.
Q4P_FN inline __m256 weightScales(const uint8_t* g) {
  return _mm256_cvtph_ps(_mm_set_epi64x((long long)scale4(g + 18), (long long)scale4(g)));
}

// Unsigned nibbles x signed activation quants, summed per 4 bytes into int32 lanes (exact).
Q4P_FN inline __m256i pairDot(__m256i lo, __m256i hi, const int8_t* y) {
  const __m256i ylo = _mm256_loadu_si256((const __m256i*)y), yhi = _mm256_loadu_si256((const __m256i*)(y + 32));
#if Q4P_VNNI
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, ylo), hi, yhi);
#else
  // Each int16 lane of a maddubs is at most 2 * 15 * 128 in magnitude, so the sum of two cannot saturate.
  const __m256i prod = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_maddubs_epi16(hi, yhi));
  return _mm256_madd_epi16(prod, _mm256_set1_epi16(1));
#endif
}

template <bool LONG>
Q4P_FN float dotRow(const uint8_t* w, const PreparedAct& p, const Act& a, size_t t) {
  const int groups = p.groups;
  const int8_t* y = p.qs.data() + t * groups * 256;
  const float* yd = p.d.data() + t * groups * 8;
  const int32_t* off = p.off.data() + t * groups * 8;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  for (int g = 0; g < groups; g++) {
    const uint8_t* grp = w + 144 * g;
    for (int line = 0; line < 144; line += 64) {
      if (LONG) _mm_prefetch((const char*)grp + 8192 + line, _MM_HINT_T1);
      else _mm_prefetch((const char*)grp + 4096 + line, _MM_HINT_T0);
    }
    __m256i s[4];
    for (int i = 0; i < 4; i++) {
      const uint8_t* blk = grp + 36 * i;
      const __m256i v = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(blk + 2))), _mm_loadu_si128((const __m128i*)(blk + 20)), 1);
      s[i] = pairDot(_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), y + 256 * g + 64 * i);
    }
    __m256i totals = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    totals = _mm256_add_epi32(totals, _mm256_loadu_si256((const __m256i*)(off + 8 * g)));
    const __m256 scale = _mm256_mul_ps(weightScales(grp), _mm256_loadu_ps(yd + 8 * g));
    acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(totals), acc);
  }
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  float sum = _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
  // Blocks past the last full group (cols not a multiple of 256), one at a time.
  for (int b = 8 * groups; b < a.blocks; b++) {
    const uint8_t* blk = w + 18 * b;
    const size_t ab = t * a.blocks + b;
    const int8_t* yb = a.qs + ab * 32;
    int sumi = a.q4Offset[ab];
    for (int i = 0; i < 16; i++) sumi += (blk[2 + i] & 0xF) * yb[i] + (blk[2 + i] >> 4) * yb[i + 16];
    uint16_t h;
    std::memcpy(&h, blk, 2);
    sum += (float)sumi * (_cvtsh_ss(h) * a.d[ab]);
  }
  return sum;
}

// Rows in tiles of 8, each tile kept in cache while every token passes over it.
Q4P_FN void rows(const Job& job, int r0, int r1) {
  const Act& a = *job.act;
  const PreparedAct p(a);
  const bool longRows = a.cols >= LONG_ROW;
  for (int rt = r0; rt < r1; rt += 8) {
    const int re = rt + 8 < r1 ? rt + 8 : r1;
    for (int t = 0; t < a.nTokens; t++) {
      for (int r = rt; r < re; r++) {
        const uint8_t* w = job.w + (size_t)r * job.rowBytes;
        job.out[(size_t)t * job.rows + r] = longRows ? dotRow<true>(w, p, a, (size_t)t) : dotRow<false>(w, p, a, (size_t)t);
      }
    }
  }
}

}  // namespace Q4P_NS
}  // namespace moe
