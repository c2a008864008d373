// AVX2 + FMA + F16C kernels, compiled with per-function target attributes so the addon still loads on
// any x86-64 CPU (addon.cc only calls them when the CPU has these features). Elsewhere: none.
#include "kernels.h"

#if defined(__x86_64__)
#include "fp16.h"
#include <immintrin.h>
#include <cstring>
#include <vector>

#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

#define Q4P_FN AVX2_FN
#define Q4P_NS q4_0_avx2
#define Q4P_VNNI 0
#define Q4P_VBMI 0
#include "kernels-q4_0-pairs.h"

namespace moe {
namespace {

AVX2_FN inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2_FN inline __m256i sumPairs16(__m256i v) { return _mm256_madd_epi16(v, _mm256_set1_epi16(1)); }

// Signed int8 x int8 dot of 32 pairs into 8 int32 lanes (maddubs needs one unsigned operand: move the
// sign of a onto b). Exact: |a| <= 128, |b| <= 127.
AVX2_FN inline __m256i dotI8(__m256i a, __m256i absA, __m256i b) {
  return sumPairs16(_mm256_maddubs_epi16(absA, _mm256_sign_epi8(b, a)));
}

AVX2_FN inline float halfToFloat(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

AVX2_FN inline __m256i load256(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }
AVX2_FN inline __m128i load128(const void* p) { return _mm_loadu_si128((const __m128i*)p); }

// Software prefetch of the weights 2 KiB ahead: with large activation rows (e.g. 14336 values) the
// hardware prefetcher alone leaves one thread at about half its read bandwidth.
constexpr int PREFETCH_AHEAD = 2048;
template <int BYTES>
AVX2_FN inline void prefetchAhead(const uint8_t* p) {
  for (int line = 0; line < BYTES; line += 64) _mm_prefetch((const char*)p + PREFETCH_AHEAD + line, _MM_HINT_T0);
}

// ---- 32-value blocks with Q8_0 / Q8_1 activations

// Weight scales of 8 consecutive blocks (f16 at a fixed stride) as floats.
template <int BYTES>
AVX2_FN inline __m256 scales8(const uint8_t* w) {
  __m128i h = _mm_cvtsi32_si128(readU16(w));
  h = _mm_insert_epi16(h, readU16(w + 1 * BYTES), 1);
  h = _mm_insert_epi16(h, readU16(w + 2 * BYTES), 2);
  h = _mm_insert_epi16(h, readU16(w + 3 * BYTES), 3);
  h = _mm_insert_epi16(h, readU16(w + 4 * BYTES), 4);
  h = _mm_insert_epi16(h, readU16(w + 5 * BYTES), 5);
  h = _mm_insert_epi16(h, readU16(w + 6 * BYTES), 6);
  h = _mm_insert_epi16(h, readU16(w + 7 * BYTES), 7);
  return _mm256_cvtph_ps(h);
}

// 8 blocks' int32x8 partial sums -> one int32x8 of the 8 block totals, in block order.
AVX2_FN inline __m256i blockTotals(const __m256i* p) {
  const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
  const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
  const __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
  // h0123 = [b0..b3 low-half sums | b0..b3 high-half sums]; likewise h4567 for b4..b7.
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                          _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

// Blocks of 32 values with Q8_0 / Q8_1 activations (Q4_0: kernels-q4_0-pairs.h), one (row, token) at a time. Per group of 8 blocks the
// exact integer block sums are gathered into one vector and scaled by the 8 products d_w * d_x with one
// FMA; the min terms of Q4_1/Q5_1 (m * s) likewise. (Running 2 or 4 rows through a group together to share
// activation loads measured slower for Q8_0 on Zen 4.)
template <class B>
struct Blocks32 {
  template <bool PREFETCH>
  AVX2_FN static float dotOne(const uint8_t* w, const Act& a, size_t t) {
    const int nb = a.blocks;
    const int8_t* y = a.qs + t * a.cols;
    const float* yd = a.d + t * nb;
    const float* ys = a.s ? a.s + t * nb : nullptr;
    __m256 acc = _mm256_setzero_ps(), accMin = _mm256_setzero_ps();
    int b = 0;
    for (; b + 8 <= nb; b += 8) {
      const uint8_t* group = w + B::bytes * b;
      if (PREFETCH) prefetchAhead<8 * B::bytes>(group);
      __m256i p[8];
      for (int i = 0; i < 8; i++) p[i] = B::dot(B::unpack(group + B::bytes * i), load256(y + 32 * (b + i)));
      __m256i totals = blockTotals(p);
      const __m256 scale = _mm256_mul_ps(scales8<B::bytes>(group), _mm256_loadu_ps(yd + b));
      acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(totals), acc);
      if (B::hasMin) accMin = _mm256_fmadd_ps(scales8<B::bytes>(group + 2), _mm256_loadu_ps(ys + b), accMin);
    }
    float tail = 0.0f;
    for (; b < nb; b++) {
      const uint8_t* blk = w + B::bytes * b;
      const __m256i p = B::dot(B::unpack(blk), load256(y + 32 * b));
      const __m128i p4 = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
      const __m128i p2 = _mm_add_epi32(p4, _mm_unpackhi_epi64(p4, p4));
      const int sumi = _mm_cvtsi128_si32(_mm_add_epi32(p2, _mm_shuffle_epi32(p2, 1)));
      tail += (float)sumi * (halfToFloat(blk) * yd[b]);
      if (B::hasMin) tail += halfToFloat(blk + 2) * ys[b];
    }
    return hsum(_mm256_add_ps(acc, accMin)) + tail;
  }

  // Rows in tiles of 8, kept in cache while every token passes over them. Short rows (activations well
  // inside L1) do better with the hardware prefetcher alone (Q8_0 ~10% at 1024 values).
  AVX2_FN static void rows(const Job& job, int r0, int r1) {
    const Act& a = *job.act;
    const bool prefetch = a.cols >= 4096;
    for (int rt = r0; rt < r1; rt += 8) {
      const int re = rt + 8 < r1 ? rt + 8 : r1;
      for (int t = 0; t < a.nTokens; t++) {
        for (int r = rt; r < re; r++) {
          const uint8_t* w = job.w + (size_t)r * job.rowBytes;
          job.out[(size_t)t * job.rows + r] = prefetch ? dotOne<true>(w, a, (size_t)t) : dotOne<false>(w, a, (size_t)t);
        }
      }
    }
  }
};

// Signed quants: keep the value and its absolute value for dotI8.
struct SignedQ { __m256i q, absQ; };

AVX2_FN inline SignedQ signedQ(__m256i q) { return SignedQ{q, _mm256_sign_epi8(q, q)}; }

// 16 bytes of nibbles -> 32 bytes: low nibbles (values 0..15) then high nibbles (values 16..31).
AVX2_FN inline __m256i nibbles32(const uint8_t* p) {
  const __m128i raw = load128(p);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
}

// 32 bits -> 32 bytes, 0x10 where bit k (value k) is set.
AVX2_FN inline __m256i fifthBits(const uint8_t* p) {
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
      _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000));
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

struct Q8_0B {
  static constexpr int bytes = 34;
  static constexpr bool hasMin = false;
  using Unpacked = SignedQ;
  AVX2_FN static Unpacked unpack(const uint8_t* blk) { return signedQ(load256(blk + 2)); }
  AVX2_FN static __m256i dot(const Unpacked& u, __m256i y) { return dotI8(u.q, u.absQ, y); }
};

struct Q5_0B {
  static constexpr int bytes = 22;
  static constexpr bool hasMin = false;
  using Unpacked = SignedQ;
  AVX2_FN static Unpacked unpack(const uint8_t* blk) {
    const __m256i q = _mm256_or_si256(nibbles32(blk + 6), fifthBits(blk + 2));
    return signedQ(_mm256_sub_epi8(q, _mm256_set1_epi8(16)));
  }
  AVX2_FN static __m256i dot(const Unpacked& u, __m256i y) { return dotI8(u.q, u.absQ, y); }
};

// Unsigned quants with a min (m * s of the Q8_1 block added per block).
struct Q4_1B {
  static constexpr int bytes = 20;
  static constexpr bool hasMin = true;
  using Unpacked = __m256i;
  AVX2_FN static Unpacked unpack(const uint8_t* blk) { return nibbles32(blk + 4); }
  AVX2_FN static __m256i dot(const Unpacked& u, __m256i y) { return sumPairs16(_mm256_maddubs_epi16(u, y)); }
};

struct Q5_1B {
  static constexpr int bytes = 24;
  static constexpr bool hasMin = true;
  using Unpacked = __m256i;
  AVX2_FN static Unpacked unpack(const uint8_t* blk) { return _mm256_or_si256(nibbles32(blk + 8), fifthBits(blk + 4)); }
  AVX2_FN static __m256i dot(const Unpacked& u, __m256i y) { return sumPairs16(_mm256_maddubs_epi16(u, y)); }
};

// ---- float weights (F32 / F16 / BF16): 16 values per step in two accumulators, scalar tail.

struct F32W {
  AVX2_FN static __m256 w8(const uint8_t* w, int i) { return _mm256_loadu_ps((const float*)w + i); }
  AVX2_FN static __m256 x8(const Act& a, size_t i) { return _mm256_loadu_ps(a.f32 + i); }
  AVX2_FN static float w1(const uint8_t* w, int i) { float v; std::memcpy(&v, w + 4 * i, 4); return v; }
  AVX2_FN static float x1(const Act& a, size_t i) { return a.f32[i]; }
};

struct F16W {
  AVX2_FN static __m256 w8(const uint8_t* w, int i) { return _mm256_cvtph_ps(load128(w + 2 * i)); }
  AVX2_FN static __m256 x8(const Act& a, size_t i) { return _mm256_cvtph_ps(load128(a.h + i)); }
  AVX2_FN static float w1(const uint8_t* w, int i) { return halfToFloat(w + 2 * i); }
  AVX2_FN static float x1(const Act& a, size_t i) { return _cvtsh_ss(a.h[i]); }
};

struct BF16W {
  AVX2_FN static __m256 widen(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  AVX2_FN static float one(uint16_t h) { const uint32_t u = (uint32_t)h << 16; float f; std::memcpy(&f, &u, 4); return f; }
  AVX2_FN static __m256 w8(const uint8_t* w, int i) { return widen(load128(w + 2 * i)); }
  AVX2_FN static __m256 x8(const Act& a, size_t i) { return widen(load128(a.h + i)); }
  AVX2_FN static float w1(const uint8_t* w, int i) { uint16_t h; std::memcpy(&h, w + 2 * i, 2); return one(h); }
  AVX2_FN static float x1(const Act& a, size_t i) { return one(a.h[i]); }
};

template <class F>
struct Floats {
  template <int NT>
  AVX2_FN static void dot(const uint8_t* w, const Act& a, int t0, float* res) {
    const int n = a.cols;
    __m256 acc0[NT], acc1[NT];
    for (int k = 0; k < NT; k++) acc0[k] = acc1[k] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m256 wa = F::w8(w, i), wb = F::w8(w, i + 8);
      for (int k = 0; k < NT; k++) {
        const size_t x = (size_t)(t0 + k) * n + i;
        acc0[k] = _mm256_fmadd_ps(wa, F::x8(a, x), acc0[k]);
        acc1[k] = _mm256_fmadd_ps(wb, F::x8(a, x + 8), acc1[k]);
      }
    }
    for (int k = 0; k < NT; k++) {
      float sum = hsum(_mm256_add_ps(acc0[k], acc1[k]));
      for (int j = i; j < n; j++) sum += F::w1(w, j) * F::x1(a, (size_t)(t0 + k) * n + j);
      res[k] = sum;
    }
  }
};

// ---- K-quants with Q8_K activations: exact int32 lanes per super-block, one FMA per super-block.

// Q4_K / Q5_K: the 8 six-bit scales (int16 lanes 0-7) and 8 mins (lanes 8-15) of a super-block,
// unpacked with 32-bit masks (same result as kScaleMin for j = 0..7).
AVX2_FN inline __m256i kScalesMins(const uint8_t* p) {
  uint32_t u0, u1, u2;
  std::memcpy(&u0, p, 4);
  std::memcpy(&u1, p + 4, 4);
  std::memcpy(&u2, p + 8, 4);
  const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
  const uint32_t mins47 = ((u2 >> 4) & low4) | (((u1 >> 6) & low2) << 4);
  const uint32_t mins03 = u1 & low6;
  const uint32_t scales47 = (u2 & low4) | (((u0 >> 6) & low2) << 4);
  const uint32_t scales03 = u0 & low6;
  return _mm256_cvtepu8_epi16(_mm_set_epi32((int)mins47, (int)mins03, (int)scales47, (int)scales03));
}

// int16 lane l of a 128-bit vector (repeated in both halves) broadcast to all 16 lanes.
AVX2_FN inline __m256i lane16(__m256i both, int l) {
  return _mm256_shuffle_epi8(both, _mm256_set1_epi16((short)(0x0100 + 0x0202 * l)));
}

AVX2_FN inline float hsum128(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Weights prefetch with the distances measured for Q4_0 (kernels-q4_0-pairs.h): short rows 4 KiB ahead
// into L1, long rows (>= 4096 values) 8 KiB ahead into L2.
template <bool LONG, int BYTES>
AVX2_FN inline void prefetchRows(const uint8_t* p) {
  for (int line = 0; line < BYTES; line += 64) {
    if (LONG) _mm_prefetch((const char*)p + 8192 + line, _MM_HINT_T1);
    else _mm_prefetch((const char*)p + 4096 + line, _MM_HINT_T0);
  }
}

// Q5_K (HIGH = true, fifth bits in qh[32]); HIGH = false is Q4_K as the plain layout (Q4K below is faster).
template <bool HIGH>
struct QK45 {
  static constexpr int bytes = HIGH ? 176 : 144;
  static constexpr int qsOffset = HIGH ? 48 : 16;

  template <int NT>
  AVX2_FN static void dot(const uint8_t* w, const Act& a, int t0, float* res) {
    const int nb = a.blocks;
    __m256 acc[NT];
    __m128 accMin[NT];
    for (int k = 0; k < NT; k++) acc[k] = _mm256_setzero_ps(), accMin[k] = _mm_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), b16 = _mm256_set1_epi8(0x10);
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = w + bytes * b;
      prefetchAhead<bytes>(blk);
      const __m256i sm = kScalesMins(blk + 4);
      const __m256i scales = _mm256_permute2x128_si256(sm, sm, 0x00);
      const __m128i mins = _mm256_extracti128_si256(sm, 1);
      __m256i qh = HIGH ? load256(blk + 16) : _mm256_setzero_si256();
      __m256i sumi[NT];
      for (int k = 0; k < NT; k++) sumi[k] = _mm256_setzero_si256();
      for (int j = 0; j < 4; j++) {
        const __m256i raw = load256(blk + qsOffset + 32 * j);
        __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        if (HIGH) {  // bits 2j and 2j+1 of qh: shift them to bit 4 and keep it
          lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), b16));
          hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), b16));
          qh = _mm256_srli_epi16(qh, 2);
        }
        const __m256i s1 = lane16(scales, 2 * j), s2 = lane16(scales, 2 * j + 1);
        for (int k = 0; k < NT; k++) {
          const int8_t* y = a.qs + ((size_t)(t0 + k) * nb + b) * 256 + 64 * j;
          const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(y)), s1);
          const __m256i p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(y + 32)), s2);
          sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p1, p2));
        }
      }
      const float d = halfToFloat(blk), dmin = halfToFloat(blk + 2);
      for (int k = 0; k < NT; k++) {
        const size_t ab = (size_t)(t0 + k) * nb + b;
        const __m256i bs = load256(a.bsums + ab * 16);
        const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const __m128i prod = _mm_madd_epi16(mins, pairs);  // m_j * (bsums[2j] + bsums[2j+1]), exact
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[ab]), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
        accMin[k] = _mm_fmadd_ps(_mm_set1_ps(dmin * a.d[ab]), _mm_cvtepi32_ps(prod), accMin[k]);
      }
    }
    for (int k = 0; k < NT; k++) res[k] = hsum(acc[k]) - hsum128(accMin[k]);
  }
};

// Q4_K with a rearranged activation (Q4KAct): per 64 values (sub-blocks 2j, 2j+1) the quants are stored
// as [y 0-15 | y 32-47 | y 16-31 | y 48-63], so each 128-bit half of the nibble bytes, broadcast to both
// halves and shifted by 0 (low half) or 4 (high half), meets its activations directly: one scale vector
// [s_2j x8 | s_2j+1 x8] and one madd per 64 values instead of two of each plus two shuffles. The bsums
// come pre-added in pairs (one int16 per 32 values). Exact integer sums as before; only the lanes they
// land in (so the f32 summation order) differ.
struct Q4KAct {
  std::vector<int8_t> qs;
  std::vector<int16_t> pairs;
  Act act;

  explicit Q4KAct(const Act& a) : qs((size_t)a.nTokens * a.cols), pairs((size_t)a.nTokens * a.blocks * 8), act(a) {
    const size_t chunks = (size_t)a.nTokens * a.cols / 64;
    for (size_t c = 0; c < chunks; c++) {
      const int8_t* y = a.qs + 64 * c;
      int8_t* o = qs.data() + 64 * c;
      std::memcpy(o, y, 16);
      std::memcpy(o + 16, y + 32, 16);
      std::memcpy(o + 32, y + 16, 16);
      std::memcpy(o + 48, y + 48, 16);
      pairs[2 * c] = (int16_t)(a.bsums[4 * c] + a.bsums[4 * c + 1]);
      pairs[2 * c + 1] = (int16_t)(a.bsums[4 * c + 2] + a.bsums[4 * c + 3]);
    }
    act.qs = qs.data();
    act.bsums = pairs.data();
  }
};

template <bool LONG>
struct Q4K {
  template <int NT>
  AVX2_FN static void dot(const uint8_t* w, const Act& a, int t0, float* res) {
    const int nb = a.blocks;
    __m256 acc[NT];
    __m128 accMin[NT];
    for (int k = 0; k < NT; k++) acc[k] = _mm256_setzero_ps(), accMin[k] = _mm_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), shifts = _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0);
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = w + 144 * b;
      prefetchRows<LONG, 144>(blk);
      const __m256i sm = kScalesMins(blk + 4);
      const __m256i scales = _mm256_permute2x128_si256(sm, sm, 0x00);
      const __m128i mins = _mm256_extracti128_si256(sm, 1);
      __m256i sumi[NT];
      for (int k = 0; k < NT; k++) sumi[k] = _mm256_setzero_si256();
      for (int j = 0; j < 4; j++) {
        const uint8_t* q = blk + 16 + 32 * j;
        const __m256i v1 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_broadcastsi128_si256(load128(q)), shifts), m4);
        const __m256i v2 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_broadcastsi128_si256(load128(q + 16)), shifts), m4);
        // int16 lanes 0-7: scale 2j, lanes 8-15: scale 2j+1
        const long long lo = (long long)(0x0001000100010001ULL * (uint64_t)(0x0100 + 0x0202 * (2 * j)));
        const long long hi = (long long)(0x0001000100010001ULL * (uint64_t)(0x0100 + 0x0202 * (2 * j + 1)));
        const __m256i sc = _mm256_shuffle_epi8(scales, _mm256_set_epi64x(hi, hi, lo, lo));
        for (int k = 0; k < NT; k++) {
          const int8_t* y = a.qs + ((size_t)(t0 + k) * nb + b) * 256 + 64 * j;
          // each int16 lane is at most 2 * 15 * 128 in magnitude per maddubs: the sum of two cannot saturate
          const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(v1, load256(y)), _mm256_maddubs_epi16(v2, load256(y + 32)));
          sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(p, sc));
        }
      }
      const float d = halfToFloat(blk), dmin = halfToFloat(blk + 2);
      for (int k = 0; k < NT; k++) {
        const size_t ab = (size_t)(t0 + k) * nb + b;
        const __m128i prod = _mm_madd_epi16(mins, load128(a.bsums + ab * 8));  // m_j * pair sums, exact
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[ab]), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
        accMin[k] = _mm_fmadd_ps(_mm_set1_ps(dmin * a.d[ab]), _mm_cvtepi32_ps(prod), accMin[k]);
      }
    }
    for (int k = 0; k < NT; k++) res[k] = hsum(acc[k]) - hsum128(accMin[k]);
  }
};

// Q6_K: 6-bit values 0..63 with offset 32, taken off once per super-block as 32 * sum_g sc[g] * bsums[g]
// (exact, from the Q8_K bsums) instead of a second maddubs per 32 values. Each 32-value vector covers groups g, g+1 in its
// two 128-bit halves, so one shuffle of the widened scales gives [sc[g] x8 | sc[g+1] x8].
template <bool LONG>
struct Q6K {
  template <int NT>
  AVX2_FN static void dot(const uint8_t* w, const Act& a, int t0, float* res) {
    const int nb = a.blocks;
    __m256 acc[NT];
    for (int k = 0; k < NT; k++) acc[k] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = w + 210 * b;
      prefetchRows<LONG, 210>(blk);
      const __m256i sc16 = _mm256_cvtepi8_epi16(load128(blk + 192));
      __m256i sumi[NT];
      for (int k = 0; k < NT; k++) {
        // the offset: 32 * sum_g sc[g] * bsums[g], taken off here (int32 lanes, exact)
        const __m256i off = _mm256_madd_epi16(sc16, load256(a.bsums + ((size_t)(t0 + k) * nb + b) * 16));
        sumi[k] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5));
      }
      for (int n = 0; n < 2; n++) {
        const __m256i half = n == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00) : _mm256_permute2x128_si256(sc16, sc16, 0x11);
        const __m256i l0 = load256(blk + 64 * n), l1 = load256(blk + 64 * n + 32);
        const __m256i h = load256(blk + 128 + 32 * n);
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                               _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
        for (int v = 0; v < 4; v++) {
          // int16 lanes 0-7: scale of group 8n + 2v, lanes 8-15: of group 8n + 2v + 1
          const long long lo = (long long)(0x0001000100010001ULL * (uint64_t)(0x0100 + 0x0202 * (2 * v)));
          const long long hi = (long long)(0x0001000100010001ULL * (uint64_t)(0x0100 + 0x0202 * (2 * v + 1)));
          const __m256i scales = _mm256_shuffle_epi8(half, _mm256_set_epi64x(hi, hi, lo, lo));
          for (int k = 0; k < NT; k++) {
            const __m256i y = load256(a.qs + ((size_t)(t0 + k) * nb + b) * 256 + 128 * n + 32 * v);
            // each int16 lane is at most 2 * 63 * 128 in magnitude: no saturation
            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(_mm256_maddubs_epi16(q[v], y), scales));
          }
        }
      }
      const float d = halfToFloat(blk + 208);
      for (int k = 0; k < NT; k++) {
        const size_t ab = (size_t)(t0 + k) * nb + b;
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[ab]), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
      }
    }
    for (int k = 0; k < NT; k++) res[k] = hsum(acc[k]);
  }
};

// Unsigned bytes g and g + 1 of a 16-byte vector (repeated in both halves) as int16 lanes:
// lanes 0-7 = byte g, lanes 8-15 = byte g + 1 (the scales of two consecutive 16-value groups).
AVX2_FN inline __m256i pairScales(__m256i bytes, int g) {
  return _mm256_shuffle_epi8(bytes, _mm256_set_m128i(_mm_set1_epi16((short)(0x8000 | (g + 1))),
                                                     _mm_set1_epi16((short)(0x8000 | g))));
}

// Q2_K: 2-bit values, 16 groups with 4-bit scale and 4-bit min; mins x bsums in SIMD.
struct Q2_K {
  template <int NT>
  AVX2_FN static void dot(const uint8_t* w, const Act& a, int t0, float* res) {
    const int nb = a.blocks;
    __m256 acc[NT], accMin[NT];
    for (int k = 0; k < NT; k++) acc[k] = accMin[k] = _mm256_setzero_ps();
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = w + 84 * b;
      prefetchAhead<84>(blk);
      const __m128i sm = load128(blk);
      const __m128i scales = _mm_and_si128(sm, _mm_set1_epi8(0x0F));
      const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sm, 4), _mm_set1_epi8(0x0F)));
      const __m256i scalesBoth = _mm256_broadcastsi128_si256(scales);
      __m256i sumi[NT];
      for (int k = 0; k < NT; k++) sumi[k] = _mm256_setzero_si256();
      for (int n = 0; n < 2; n++) {
        const __m256i q = load256(blk + 16 + 32 * n);
        for (int j = 0; j < 4; j++) {
          const __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
          const __m256i sc = pairScales(scalesBoth, 8 * n + 2 * j);
          for (int k = 0; k < NT; k++) {
            const __m256i y = load256(a.qs + ((size_t)(t0 + k) * nb + b) * 256 + 128 * n + 32 * j);
            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(_mm256_maddubs_epi16(v, y), sc));
          }
        }
      }
      const float d = halfToFloat(blk + 80), dmin = halfToFloat(blk + 82);
      for (int k = 0; k < NT; k++) {
        const size_t ab = (size_t)(t0 + k) * nb + b;
        const __m256i prod = _mm256_madd_epi16(mins, load256(a.bsums + ab * 16));
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[ab]), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
        accMin[k] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * a.d[ab]), _mm256_cvtepi32_ps(prod), accMin[k]);
      }
    }
    for (int k = 0; k < NT; k++) res[k] = hsum(acc[k]) - hsum(accMin[k]);
  }
};

// Q3_K: 2 low bits in qs, the third in hmask (clear bit = value - 4), 16 signed 6-bit scales.
struct Q3_K {
  template <int NT>
  AVX2_FN static void dot(const uint8_t* w, const Act& a, int t0, float* res) {
    const int nb = a.blocks;
    __m256 acc[NT];
    for (int k = 0; k < NT; k++) acc[k] = _mm256_setzero_ps();
    const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4), off32 = _mm256_set1_epi16(32);
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = w + 110 * b;
      prefetchAhead<110>(blk);
      uint32_t u0, u1, u2;
      std::memcpy(&u0, blk + 96, 4);
      std::memcpy(&u1, blk + 100, 4);
      std::memcpy(&u2, blk + 104, 4);
      const uint32_t low4 = 0x0f0f0f0f, low2 = 0x03030303;
      const __m128i sc = _mm_set_epi32((int)(((u1 >> 4) & low4) | (((u2 >> 6) & low2) << 4)),
                                       (int)(((u0 >> 4) & low4) | (((u2 >> 4) & low2) << 4)),
                                       (int)((u1 & low4) | (((u2 >> 2) & low2) << 4)),
                                       (int)((u0 & low4) | ((u2 & low2) << 4)));
      const __m256i scalesBoth = _mm256_broadcastsi128_si256(sc);  // scale + 32, as unsigned bytes
      const __m256i hm = load256(blk);
      __m256i sumi[NT];
      for (int k = 0; k < NT; k++) sumi[k] = _mm256_setzero_si256();
      for (int n = 0; n < 2; n++) {
        const __m256i q = load256(blk + 32 + 32 * n);
        for (int j = 0; j < 4; j++) {
          const __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
          const __m256i bit = _mm256_set1_epi8((char)(1 << (4 * n + j)));
          const __m256i minus4 = _mm256_andnot_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), four);
          const __m256i scale = _mm256_sub_epi16(pairScales(scalesBoth, 8 * n + 2 * j), off32);
          for (int k = 0; k < NT; k++) {
            const __m256i y = load256(a.qs + ((size_t)(t0 + k) * nb + b) * 256 + 128 * n + 32 * j);
            const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(v, y), _mm256_maddubs_epi16(minus4, y));
            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(p, scale));
          }
        }
      }
      const float d = halfToFloat(blk + 108);
      for (int k = 0; k < NT; k++) {
        const size_t ab = (size_t)(t0 + k) * nb + b;
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[ab]), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
      }
    }
    for (int k = 0; k < NT; k++) res[k] = hsum(acc[k]);
  }
};

// Driver for the kernel structs with K::dot<NT>(row, act, t0, res), which computes tokens t0 .. t0+NT-1
// of one weight row. Every token has its own accumulators and the same operation sequence whatever NT
// is, so batching tokens (which shares the weight unpacking) does not change any result bit.
// Rows in tiles of 8, tokens in groups of 4 (then singles): a tile's weights stay in cache while each
// token group's activations are read.
template <class K>
AVX2_FN void rowsAvx2(const Job& job, int r0, int r1) {
  const Act& a = *job.act;
  const int nT = a.nTokens;
  for (int rt = r0; rt < r1; rt += 8) {
    const int re = rt + 8 < r1 ? rt + 8 : r1;
    int t = 0;
    for (; t + 4 <= nT; t += 4) {
      for (int r = rt; r < re; r++) {
        float res[4];
        K::template dot<4>(job.w + (size_t)r * job.rowBytes, a, t, res);
        for (int k = 0; k < 4; k++) job.out[(size_t)(t + k) * job.rows + r] = res[k];
      }
    }
    for (; t < nT; t++) {
      for (int r = rt; r < re; r++) {
        float res[1];
        K::template dot<1>(job.w + (size_t)r * job.rowBytes, a, t, res);
        job.out[(size_t)t * job.rows + r] = res[0];
      }
    }
  }
}

// Q4_K: the activation rearranged once per call (Q4KAct), prefetch distance by row length.
AVX2_FN void rowsQ4K(const Job& job, int r0, int r1) {
  const Q4KAct prepared(*job.act);
  Job j = job;
  j.act = &prepared.act;
  if (j.act->cols >= 4096) rowsAvx2<Q4K<true>>(j, r0, r1);
  else rowsAvx2<Q4K<false>>(j, r0, r1);
}

// Q6_K: prefetch distance by row length.
AVX2_FN void rowsQ6K(const Job& job, int r0, int r1) {
  if (job.act->cols >= 4096) rowsAvx2<Q6K<true>>(job, r0, r1);
  else rowsAvx2<Q6K<false>>(job, r0, r1);
}

}  // namespace

RowsKernel avx2Kernel(int type) {
  switch (type) {
    case T_F32: return rowsAvx2<Floats<F32W>>;
    case T_F16: return rowsAvx2<Floats<F16W>>;
    case T_BF16: return rowsAvx2<Floats<BF16W>>;
    case T_Q8_0: return Blocks32<Q8_0B>::rows;
    case T_Q4_0: return q4_0_avx2::rows;
    case T_Q4_1: return Blocks32<Q4_1B>::rows;
    case T_Q5_0: return Blocks32<Q5_0B>::rows;
    case T_Q5_1: return Blocks32<Q5_1B>::rows;
    case T_Q4_K: return rowsQ4K;
    case T_Q5_K: return rowsAvx2<QK45<true>>;
    case T_Q6_K: return rowsQ6K;
    case T_Q2_K: return rowsAvx2<Q2_K>;
    case T_Q3_K: return rowsAvx2<Q3_K>;
    default: return nullptr;
  }
}

bool avx2Usable() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

AVX2_FN double sumBytesAvx2(const uint8_t* p, size_t n) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc0 = zero, acc1 = zero, acc2 = zero, acc3 = zero;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    acc0 = _mm256_add_epi64(acc0, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i)), zero));
    acc1 = _mm256_add_epi64(acc1, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 32)), zero));
    acc2 = _mm256_add_epi64(acc2, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 64)), zero));
    acc3 = _mm256_add_epi64(acc3, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 96)), zero));
  }
  const __m256i acc = _mm256_add_epi64(_mm256_add_epi64(acc0, acc1), _mm256_add_epi64(acc2, acc3));
  uint64_t lanes[4];
  _mm256_storeu_si256((__m256i*)lanes, acc);
  uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; i++) sum += p[i];
  return (double)sum;
}

}  // namespace moe

#else  // not x86-64: portable path only

namespace moe {
RowsKernel avx2Kernel(int) { return nullptr; }
bool avx2Usable() { return false; }
double sumBytesAvx2(const uint8_t* p, size_t n) { return sumBytesPortable(p, n); }
}  // namespace moe

#endif
