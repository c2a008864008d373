// Q4_0 x Q8_0 kernel body shared by the AVX2 path (kernels-avx2.cc) and the AVX-512 VNNI path
// (kernels-avx512.cc). The including file first defines Q4P_FN (the function target attribute), Q4P_NS (a
// namespace of its own), Q4P_VNNI (1: vpdpbusd on 256-bit vectors, 0: maddubs + madd) and Q4P_VBMI (1:
// the weight scales gathered with one byte permute, 0: packed in general registers).
//
// Two blocks per vector: the 16 nibble bytes of blocks b and b+1 fill the two 128-bit halves, so one mask
// gives values 0-15 of both blocks and one shift + mask gives values 16-31. The activation is rearranged to
// that order once per call (every row reuses it). Per group of 8 blocks three hadds leave the 8 exact
// block sums in the order 0,2,4,6,1,3,5,7; the activation scales and Q4_0 offsets are stored in that order,
// so one FMA scales the group. Short rows go 4 at a time, group by group, sharing the activation loads
// and one final reduction (cheaper per row, and with the per-row prefetch into L2 about 10% closer to the
// read bandwidth than one row at a time). Several tokens (dotTokens): each weight group is unpacked once
// per row and applied to a tile of tokens, with weights and activations laid out blocks-in-lanes so that
// no horizontal adds are needed; only the integer work differs from the one-token path, and the integer
// sums are exact either way, so all variants give the same bits.
#include <immintrin.h>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace moe {
namespace Q4P_NS {

constexpr int GROUP_ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};
// Software prefetch, per row, this many bytes ahead of the group being read, into L2 (measured on Zen 4,
// one thread: without it the hardware prefetcher alone leaves the kernel near half the read bandwidth;
// for 4-row tiles of short rows 8 KiB into L2 beat 4 KiB into L1 by about 10%). Also measured at 1024
// values per row, all worse: 6, 12, 16, 24 KiB; T0 or NTA at 8 KiB (about half the speed); an extra T0
// prefetch 1-2 KiB ahead; prefetching only lines that start in the window, or only 2 lines per group.
constexpr int PREFETCH_AHEAD = 8192;
constexpr int LONG_ROW = 4096;  // values

struct PreparedAct {
  // Per token (tokenQs apart) and group, one token: 4 pairs x [b 0-15, b+1 0-15, b 16-31, b+1 16-31];
  // several tokens: blocks in lanes (see dotTokens), 8 vectors whose lane k holds 4 values of block
  // GROUP_ORDER[k].
  std::vector<int8_t> qs;
  std::vector<float> d;      // per token and group: activation scales in GROUP_ORDER
  std::vector<int32_t> off;  // likewise the -8 * sum(quants) offsets
  int groups;
  // Bytes from one token's quants to the next: one cache line more than they take, so that the tokens of
  // a tile do not all fall into the same L1 sets when a row is a multiple of 4 KiB (long rows).
  size_t tokenQs;
  bool blocksInLanes;

  explicit PreparedAct(const Act& a)
      : groups(a.blocks / 8), tokenQs((size_t)groups * 256 + 64), blocksInLanes(a.nTokens > 1) {
    qs.resize((size_t)a.nTokens * tokenQs);
    d.resize((size_t)a.nTokens * groups * 8);
    off.resize(d.size());
    for (int t = 0; t < a.nTokens; t++) {
      for (int g = 0; g < groups; g++) {
        const size_t src = (size_t)t * a.blocks + 8 * g, dst = ((size_t)t * groups + g) * 8;
        int8_t* o = qs.data() + t * tokenQs + (size_t)g * 256;
        if (blocksInLanes) {
          // Vector j, lane 4h + k: values 4j..4j+3 (j < 4) or 16 + 4(j-4).. (j >= 4) of block 2k + h.
          for (int j = 0; j < 8; j++) {
            for (int h = 0; h < 2; h++) {
              for (int k = 0; k < 4; k++) {
                std::memcpy(o + 32 * j + 16 * h + 4 * k, a.qs + (src + 2 * k + h) * 32 + (j < 4 ? 4 * j : 16 + 4 * (j - 4)), 4);
              }
            }
          }
        } else {
          for (int i = 0; i < 4; i++) {
            const int8_t* y = a.qs + (src + 2 * i) * 32;
            std::memcpy(o + 64 * i, y, 16);
            std::memcpy(o + 64 * i + 16, y + 32, 16);
            std::memcpy(o + 64 * i + 32, y + 16, 16);
            std::memcpy(o + 64 * i + 48, y + 48, 16);
          }
        }
        for (int k = 0; k < 8; k++) {
          d[dst + k] = a.d[src + GROUP_ORDER[k]];
          off[dst + k] = a.q4Offset[src + GROUP_ORDER[k]];
        }
      }
    }
  }
};

#if !Q4P_VBMI
inline uint64_t scale4(const uint8_t* p) {
  uint16_t h[4];
  for (int k = 0; k < 4; k++) std::memcpy(&h[k], p + 36 * k, 2);
  uint64_t v = (uint64_t)h[0] | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 32 | (uint64_t)h[3] << 48;
  __asm__("" : "+r"(v));  // keep the packing in general registers (GCC would vectorize it into ~10 shuffles)
  return v;
}
#endif

// The 8 weight scales of a group (f16 at a stride of 18 bytes) in GROUP_ORDER, as floats.
#if Q4P_VBMI
// One byte permute over the group's first 128 bytes (the last scale sits at bytes 126-127).
struct ScaleIndex {
  alignas(64) uint8_t idx[64];
  constexpr ScaleIndex() : idx{} {
    for (int k = 0; k < 8; k++) {
      idx[2 * k] = (uint8_t)(18 * GROUP_ORDER[k]);
      idx[2 * k + 1] = (uint8_t)(18 * GROUP_ORDER[k] + 1);
    }
  }
};
constexpr ScaleIndex SCALE_INDEX{};

Q4P_FN inline __m256 weightScales(const uint8_t* g) {
  const __m512i idx = _mm512_load_si512((const void*)SCALE_INDEX.idx);
  const __m512i h = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void*)g), idx, _mm512_loadu_si512((const void*)(g + 64)));
  return _mm256_cvtph_ps(_mm512_castsi512_si128(h));
}
#else
Q4P_FN inline __m256 weightScales(const uint8_t* g) {
  return _mm256_cvtph_ps(_mm_set_epi64x((long long)scale4(g + 18), (long long)scale4(g)));
}
#endif

// Unsigned nibbles x signed activation quants, summed per 4 bytes into int32 lanes (exact).
Q4P_FN inline __m256i pairDot(__m256i lo, __m256i hi, __m256i ylo, __m256i yhi) {
#if Q4P_VNNI
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, ylo), hi, yhi);
#else
  // Each int16 lane of a maddubs is at most 2 * 15 * 128 in magnitude, so the sum of two cannot saturate.
  const __m256i prod = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_maddubs_epi16(hi, yhi));
  return _mm256_madd_epi16(prod, _mm256_set1_epi16(1));
#endif
}

// Horizontal sums of 4 accumulators at once: lane k of the result is the sum of acc k's 8 lanes, added
// as (t0 + t1) + (t2 + t3) with t_i = lane i + lane i+4. Each lane's operations do not depend on the
// other accumulators, so a row gets the same bits whichever 3 rows share its reduction.
Q4P_FN inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
  const __m256 h1 = _mm256_hadd_ps(ab, cd);  // [a01 a23 c01 c23 | b01 b23 d01 d23]
  const __m256 h2 = _mm256_hadd_ps(h1, h1);  // [a c a c | b d b d]
  return _mm_unpacklo_ps(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1));
}

// The blocks past the last full group (cols not a multiple of 256) of one row times token t, one at a
// time, added to the row's reduced sum. Every path ends with this same function.
Q4P_FN inline float addTailBlocks(const uint8_t* row, const PreparedAct& p, const Act& a, size_t t, float sum) {
  for (int b = 8 * p.groups; b < a.blocks; b++) {
    const uint8_t* blk = row + 18 * b;
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

// R consecutive rows (starting at w, rowBytes apart) times token t, into out[0..R): per group the rows
// share the activation loads, and at the end one horizontal reduction. Every row's arithmetic is the
// same whatever R is, so results do not depend on how rows are tiled or split between threads.
template <int R>
Q4P_FN void dotRows(const uint8_t* w, size_t rowBytes, const PreparedAct& p, const Act& a, size_t t, float* out) {
  const int groups = p.groups;
  const int8_t* y = p.qs.data() + t * p.tokenQs;
  const float* yd = p.d.data() + t * groups * 8;
  const int32_t* off = p.off.data() + t * groups * 8;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
  for (int g = 0; g < groups; g++) {
    for (int r = 0; r < R; r++) {
      const uint8_t* grp = w + r * rowBytes + 144 * g;
      for (int line = 0; line < 144; line += 64) _mm_prefetch((const char*)grp + PREFETCH_AHEAD + line, _MM_HINT_T1);
    }
    __m256i yv[8];
    for (int k = 0; k < 8; k++) yv[k] = _mm256_loadu_si256((const __m256i*)(y + 256 * g + 32 * k));
    const __m256i o = _mm256_loadu_si256((const __m256i*)(off + 8 * g));
    const __m256 ad = _mm256_loadu_ps(yd + 8 * g);
    for (int r = 0; r < R; r++) {
      const uint8_t* grp = w + r * rowBytes + 144 * g;
      __m256i s[4];
      for (int i = 0; i < 4; i++) {
        const uint8_t* blk = grp + 36 * i;
        const __m256i v = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(blk + 2))), _mm_loadu_si128((const __m128i*)(blk + 20)), 1);
        s[i] = pairDot(_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), yv[2 * i], yv[2 * i + 1]);
      }
      __m256i totals = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
      totals = _mm256_add_epi32(totals, o);
      const __m256 scale = _mm256_mul_ps(weightScales(grp), ad);
      acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(totals), acc[r]);
    }
  }
  float sums[4];
  _mm_storeu_ps(sums, reduce4(acc[0], acc[R > 1 ? 1 : 0], acc[R > 2 ? 2 : 0], acc[R > 3 ? 3 : 0]));
  for (int r = 0; r < R; r++) out[r] = addTailBlocks(w + r * rowBytes, p, a, t, sums[r]);
}

// Within each 128-bit half, the 4 x 4 transpose of int32 lanes: out[j] lane k = in[k] lane j. Applied to
// the unpacked pairs (half h of in[k]: values of block 2k + h) it puts each block in a lane of its own, in
// GROUP_ORDER: lane 4h + k of every out[j] holds 4 values of block 2k + h.
Q4P_FN inline void transpose4(const __m256i* in, __m256i* out) {
  const __m256i t0 = _mm256_unpacklo_epi32(in[0], in[1]), t1 = _mm256_unpacklo_epi32(in[2], in[3]);
  const __m256i t2 = _mm256_unpackhi_epi32(in[0], in[1]), t3 = _mm256_unpackhi_epi32(in[2], in[3]);
  out[0] = _mm256_unpacklo_epi64(t0, t1);
  out[1] = _mm256_unpackhi_epi64(t0, t1);
  out[2] = _mm256_unpacklo_epi64(t2, t3);
  out[3] = _mm256_unpackhi_epi64(t2, t3);
}

// The group's 8 exact integer block sums plus the Q4_0 offsets, in GROUP_ORDER, from the blocks-in-lanes
// weights and activation: every product lands in its block's lane, so no horizontal adds.
Q4P_FN inline __m256i blockTotals(const __m256i* wv, const int8_t* y, const int32_t* off) {
#if Q4P_VNNI
  __m256i sum = _mm256_loadu_si256((const __m256i*)off);
  for (int j = 0; j < 8; j++) sum = _mm256_dpbusd_epi32(sum, wv[j], _mm256_loadu_si256((const __m256i*)(y + 32 * j)));
  return sum;
#else
  // Each int16 lane of a maddubs is at most 2 * 15 * 128 in magnitude, so the sum of 8 cannot overflow.
  __m256i prod = _mm256_maddubs_epi16(wv[0], _mm256_loadu_si256((const __m256i*)y));
  for (int j = 1; j < 8; j++) prod = _mm256_add_epi16(prod, _mm256_maddubs_epi16(wv[j], _mm256_loadu_si256((const __m256i*)(y + 32 * j))));
  return _mm256_add_epi32(_mm256_madd_epi16(prod, _mm256_set1_epi16(1)), _mm256_loadu_si256((const __m256i*)off));
#endif
}

// One row times T consecutive tokens from t0, out[t * outStride]: each weight group is loaded, unpacked
// and its scales converted once and then applied to every token of the tile. Each (row, token) output
// goes through exactly dotRows' operations (the same exact integer block sums and offsets, scale product,
// FMA into its own accumulator in group order, the same reduce4 lane and tail blocks), so it has dotRows'
// bits. More rows per tile (sharing the activation loads) measured no faster, nor 512-bit vectors holding
// two rows: the dot product instructions bound it (about 1 per cycle on Zen 4).
template <int T>
Q4P_FN void dotTokens(const uint8_t* w, const PreparedAct& p, const Act& a, size_t t0, float* out, size_t outStride) {
  const int groups = p.groups;
  const size_t tokenQs = p.tokenQs, tokenScales = (size_t)groups * 8;
  const int8_t* y = p.qs.data() + t0 * tokenQs;
  const float* yd = p.d.data() + t0 * tokenScales;
  const int32_t* off = p.off.data() + t0 * tokenScales;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc[T];
  for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
  for (int g = 0; g < groups; g++) {
    const uint8_t* grp = w + 144 * g;
    for (int line = 0; line < 144; line += 64) _mm_prefetch((const char*)grp + PREFETCH_AHEAD + line, _MM_HINT_T1);
    __m256i lo[4], hi[4];
    for (int i = 0; i < 4; i++) {
      const uint8_t* blk = grp + 36 * i;
      const __m256i v = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(blk + 2))), _mm_loadu_si128((const __m128i*)(blk + 20)), 1);
      lo[i] = _mm256_and_si256(v, m4);
      hi[i] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    }
    __m256i wv[8];
    transpose4(lo, wv);
    transpose4(hi, wv + 4);
    const __m256 ws = weightScales(grp);
    for (int t = 0; t < T; t++) {
      const __m256i totals = blockTotals(wv, y + t * tokenQs + 256 * g, off + t * tokenScales + 8 * g);
      const __m256 scale = _mm256_mul_ps(ws, _mm256_loadu_ps(yd + t * tokenScales + 8 * g));
      acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(totals), acc[t]);
    }
  }
  for (int t = 0; t < T; t += 4) {
    float sums[4];
    _mm_storeu_ps(sums, reduce4(acc[t], acc[t + 1 < T ? t + 1 : t], acc[t + 2 < T ? t + 2 : t], acc[t + 3 < T ? t + 3 : t]));
    for (int k = 0; k < 4 && t + k < T; k++) out[(t + k) * outStride] = addTailBlocks(w, p, a, t0 + t + k, sums[k]);
  }
}

// Tokens per tile of the several-token path (measured on Zen 4 with 2048 x 1024 and 1024 x 2048 matrices
// from RAM, 17-64 tokens: 8 about 12% faster than 4 on both the AVX2 and the VNNI path). Rows of 4096
// values or more take 4 (8 tokens' activations overflow L1: 512 x 8192 + 256 x 16384, 17 tokens, 10%).
constexpr int TILE_TOKENS = 8;
constexpr int LONG_TILE_TOKENS = 4;

// Rows [rt, re) times T tokens from t0.
template <int T>
Q4P_FN void tileRows(const Job& job, const PreparedAct& p, int rt, int re, int t0) {
  for (int r = rt; r < re; r++) {
    dotTokens<T>(job.w + (size_t)r * job.rowBytes, p, *job.act, (size_t)t0, job.out + (size_t)t0 * job.rows + r, (size_t)job.rows);
  }
}

// Rows [rt, re) times every token, TT tokens at a time and the rest in one smaller tile.
template <int TT>
Q4P_FN void tokenTiles(const Job& job, const PreparedAct& p, int rt, int re) {
  static_assert(TT >= 1 && TT <= 8, "the rest below goes up to 7 tokens");
  const int n = job.act->nTokens;
  int t = 0;
  for (; t + TT <= n; t += TT) tileRows<TT>(job, p, rt, re, t);
  switch (n - t) {
    case 1: tileRows<1>(job, p, rt, re, t); break;
    case 2: tileRows<2>(job, p, rt, re, t); break;
    case 3: tileRows<3>(job, p, rt, re, t); break;
    case 4: tileRows<4>(job, p, rt, re, t); break;
    case 5: tileRows<5>(job, p, rt, re, t); break;
    case 6: tileRows<6>(job, p, rt, re, t); break;
    case 7: tileRows<7>(job, p, rt, re, t); break;
    default: break;
  }
}

// One token: short rows 4 at a time (sharing activation loads and reductions), long rows one at a time
// (their activation no longer fits L1 next to 4 weight streams). Several tokens: each row times a tile
// of tokens, the token tiles outside the rows so that a tile's activations stay in cache while the rows
// pass over them. Both in tiles of 8 rows, each tile kept in cache while every token passes over it.
Q4P_FN void rows(const Job& job, int r0, int r1) {
  const Act& a = *job.act;
  const PreparedAct p(a);
  const bool longRows = a.cols >= LONG_ROW;
  for (int rt = r0; rt < r1; rt += 8) {
    const int re = rt + 8 < r1 ? rt + 8 : r1;
    if (a.nTokens == 1) {
      int r = rt;
      if (!longRows) {
        for (; r + 4 <= re; r += 4) dotRows<4>(job.w + (size_t)r * job.rowBytes, job.rowBytes, p, a, 0, job.out + r);
      }
      for (; r < re; r++) dotRows<1>(job.w + (size_t)r * job.rowBytes, job.rowBytes, p, a, 0, job.out + r);
      continue;
    }
    if (longRows) {
      tokenTiles<LONG_TILE_TOKENS>(job, p, rt, re);
    } else {
      tokenTiles<TILE_TOKENS>(job, p, rt, re);
    }
  }
}

}  // namespace Q4P_NS
}  // namespace moe
