// Causal grouped-query attention over the KV cache, and SwiGLU (g = silu(g) * u), for the decode path.
// Attention works in double like the TypeScript reference (src/engine/attention.ts): the dot products,
// softmax and weighted sums are f64 (AVX2 does 4 lanes at a time), only the result is rounded to f32.
// K and V are f32 or f16 (the KV cache's storage type); f16 values are widened exactly to f32 (F16C on the
// AVX2 path, fp16.h on the portable one) and then take the same f64 arithmetic as f32 ones.
// SwiGLU's AVX2 path is f32 with a vectorized exp accurate to a few ulp; the portable one is scalar f64.
#include "attention.h"
#include "fp16.h"
#include "napi-args.h"
#include "thread-pool.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define AVX2_FN __attribute__((target("avx2,fma")))
// The attention kernels also read f16 K/V (avx2Usable() requires F16C too).
#define AVX2_F16C_FN __attribute__((target("avx2,fma,f16c")))
#endif

namespace moe {
namespace {

struct AttnArgs {
  const float* q;
  const void* keys;    // float or uint16_t (f16 bits), as f16 says
  const void* values;
  float* out;
  int start, nTokens, nHead, nHeadKv, headDim;
  bool f16;
};

// One K/V element as a double: f32 widened, f16 widened exactly through f32.
inline double kvValue(const float* p, int i) { return (double)p[i]; }
inline double kvValue(const uint16_t* p, int i) { return (double)fp16ToFloat(p[i]); }

// Per-thread scratch reused across calls: scores/weights for one (token, head) and the query in f64.
struct AttnScratch {
  std::vector<double> scores;
  std::vector<double> qd;
  std::vector<double> acc;
};

AttnScratch& scratch(size_t positions, size_t headDim) {
  thread_local AttnScratch s;
  if (s.scores.size() < positions) s.scores.resize(positions);
  if (s.qd.size() < headDim) s.qd.resize(headDim);
  if (s.acc.size() < headDim) s.acc.resize(headDim);
  return s;
}

// scores[0..n) -> softmax weights in place (max-subtracted exp, then divided by the sum), as the reference.
void softmaxInPlace(double* scores, int n) {
  double max = -INFINITY;
  for (int p = 0; p < n; p++) if (scores[p] > max) max = scores[p];
  double sum = 0;
  for (int p = 0; p < n; p++) {
    const double e = std::exp(scores[p] - max);
    scores[p] = e;
    sum += e;
  }
  for (int p = 0; p < n; p++) scores[p] = scores[p] / sum;
}

// Query head h for every token of the batch; T is the K/V element type (float, or uint16_t f16 bits).
template <typename T>
void attendHeadPortable(const AttnArgs& a, int h) {
  const T* keys = (const T*)a.keys;
  const T* values = (const T*)a.values;
  const int group = a.nHead / a.nHeadKv, d = a.headDim;
  const size_t qRow = (size_t)a.nHead * d, kvRow = (size_t)a.nHeadKv * d;
  const double scale = 1 / std::sqrt((double)d);
  AttnScratch& s = scratch((size_t)a.start + a.nTokens, d);
  double* scores = s.scores.data();
  double* acc = s.acc.data();
  const size_t kvOff = (size_t)(h / group) * d;
  for (int t = 0; t < a.nTokens; t++) {
    const int n = a.start + t + 1;
    const float* q = a.q + t * qRow + (size_t)h * d;
    for (int p = 0; p < n; p++) {
      const T* k = keys + p * kvRow + kvOff;
      double dot = 0;
      for (int i = 0; i < d; i++) dot += (double)q[i] * kvValue(k, i);
      scores[p] = dot * scale;
    }
    softmaxInPlace(scores, n);
    for (int i = 0; i < d; i++) acc[i] = 0;
    for (int p = 0; p < n; p++) {
      const T* v = values + p * kvRow + kvOff;
      const double w = scores[p];
      for (int i = 0; i < d; i++) acc[i] += w * kvValue(v, i);
    }
    float* o = a.out + t * qRow + (size_t)h * d;
    for (int i = 0; i < d; i++) o[i] = (float)acc[i];
  }
}

void swigluPortable(float* g, const float* u, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const double z = g[i];
    g[i] = (float)(z / (1 + std::exp(-z)) * (double)u[i]);
  }
}

#if defined(__x86_64__)

AVX2_FN inline double hsum(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// Elements p[0..4) widened to f64: from f32, or from f16 through F16C (exact, as fp16ToFloat).
AVX2_F16C_FN inline __m256d load4d(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
AVX2_F16C_FN inline __m256d load4d(const uint16_t* p) {
  return _mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i*)p)));
}

// sum_i qd[i] * k[i] in f64 (k widened from f32 or f16).
template <typename T>
AVX2_F16C_FN inline double dotF64(const double* qd, const T* k, int d) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int i = 0;
  for (; i + 8 <= d; i += 8) {
    a0 = _mm256_fmadd_pd(_mm256_loadu_pd(qd + i), load4d(k + i), a0);
    a1 = _mm256_fmadd_pd(_mm256_loadu_pd(qd + i + 4), load4d(k + i + 4), a1);
  }
  if (i + 4 <= d) {
    a0 = _mm256_fmadd_pd(_mm256_loadu_pd(qd + i), load4d(k + i), a0);
    i += 4;
  }
  double dot = hsum(_mm256_add_pd(a0, a1));
  for (; i < d; i++) dot += qd[i] * kvValue(k, i);
  return dot;
}

// exp(x) for x <= 0 in f64, 4 lanes: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n ln2 is
// exact), exp(r) by its Taylor series to r^13/13! (truncation below 2^-52 relative), times 2^n built in
// the exponent bits. Below -708 (where 2^n would leave the normal range) the result is 0.
AVX2_FN inline __m256d expNonPositiveF64(__m256d x) {
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634074)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), x);
  r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
  static const double invFact[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                   1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0,
                                   1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
  __m256d p = _mm256_set1_pd(invFact[0]);
  for (int k = 1; k < 14; k++) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(invFact[k]));
  const __m256i e = _mm256_slli_epi64(
      _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023)), 52);
  const __m256d y = _mm256_mul_pd(p, _mm256_castsi256_pd(e));
  return _mm256_andnot_pd(_mm256_cmp_pd(x, _mm256_set1_pd(-708.0), _CMP_LT_OQ), y);
}

// softmaxInPlace with 4 lanes: the same max, exp(s - max) (to ~1 ulp of f64), sum and division.
AVX2_FN void softmaxInPlaceAvx2(double* scores, int n) {
  double max = -INFINITY;
  int p = 0;
  if (n >= 4) {
    __m256d m = _mm256_loadu_pd(scores);
    for (p = 4; p + 4 <= n; p += 4) m = _mm256_max_pd(m, _mm256_loadu_pd(scores + p));
    const __m128d h = _mm_max_pd(_mm256_castpd256_pd128(m), _mm256_extractf128_pd(m, 1));
    max = _mm_cvtsd_f64(_mm_max_sd(h, _mm_unpackhi_pd(h, h)));
  }
  for (; p < n; p++) if (scores[p] > max) max = scores[p];
  const __m256d vmax = _mm256_set1_pd(max);
  __m256d vsum = _mm256_setzero_pd();
  for (p = 0; p + 4 <= n; p += 4) {
    const __m256d e = expNonPositiveF64(_mm256_sub_pd(_mm256_loadu_pd(scores + p), vmax));
    _mm256_storeu_pd(scores + p, e);
    vsum = _mm256_add_pd(vsum, e);
  }
  if (p < n) {  // the tail through a masked load, so every position gets the same exp
    const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - p), _mm256_setr_epi64x(0, 1, 2, 3));
    const __m256d x = _mm256_sub_pd(_mm256_maskload_pd(scores + p, mask), vmax);
    const __m256d e = _mm256_and_pd(expNonPositiveF64(x), _mm256_castsi256_pd(mask));
    _mm256_maskstore_pd(scores + p, mask, e);
    vsum = _mm256_add_pd(vsum, e);
  }
  const double sum = hsum(vsum);
  const __m256d vs = _mm256_set1_pd(sum);
  for (p = 0; p + 4 <= n; p += 4) _mm256_storeu_pd(scores + p, _mm256_div_pd(_mm256_loadu_pd(scores + p), vs));
  for (; p < n; p++) scores[p] = scores[p] / sum;
}


// The dot products of qd with 4 key rows k0, k0 + stride, ... in f64, written to out[0..4).
template <typename T>
AVX2_F16C_FN inline void dot4F64(const double* qd, const T* k0, size_t stride, int d, double* out) {
  const T* k1 = k0 + stride;
  const T* k2 = k1 + stride;
  const T* k3 = k2 + stride;
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  int i = 0;
  for (; i + 4 <= d; i += 4) {
    const __m256d qv = _mm256_loadu_pd(qd + i);
    a0 = _mm256_fmadd_pd(qv, load4d(k0 + i), a0);
    a1 = _mm256_fmadd_pd(qv, load4d(k1 + i), a1);
    a2 = _mm256_fmadd_pd(qv, load4d(k2 + i), a2);
    a3 = _mm256_fmadd_pd(qv, load4d(k3 + i), a3);
  }
  // Horizontal sums: hadd pairs lanes within 128-bit halves, then the halves are added.
  const __m256d h01 = _mm256_hadd_pd(a0, a1);  // a0[0]+a0[1], a1[0]+a1[1], a0[2]+a0[3], a1[2]+a1[3]
  const __m256d h23 = _mm256_hadd_pd(a2, a3);
  const __m256d lo = _mm256_permute2f128_pd(h01, h23, 0x20);
  const __m256d hi = _mm256_permute2f128_pd(h01, h23, 0x31);
  _mm256_storeu_pd(out, _mm256_add_pd(lo, hi));
  for (; i < d; i++) {
    out[0] += qd[i] * kvValue(k0, i);
    out[1] += qd[i] * kvValue(k1, i);
    out[2] += qd[i] * kvValue(k2, i);
    out[3] += qd[i] * kvValue(k3, i);
  }
}

// Asks for one head's slice of a K or V row (d elements) to be brought into the cache. Each position's row
// lies a whole kv row from the last (n_head_kv * head_dim elements: 4 KiB in f16, 8 in f32 for 16 x 128),
// so every slice is on a new page, where the hardware prefetchers stop. Measured (16 layers x 16 heads x
// 128, 151 positions, K/V cold, 2-core VM): f16 1.7 -> 1.2..1.5 ms per token, f32 2.3..2.7 -> 2.1..2.4.
template <typename T>
AVX2_F16C_FN inline void prefetchSlice(const T* p, int d, int hint) {
  const char* c = (const char*)p;
  const size_t bytes = (size_t)d * sizeof(T);
  for (size_t o = 0; o < bytes; o += 64) {
    if (hint == 0) _mm_prefetch(c + o, _MM_HINT_T0);
    else _mm_prefetch(c + o, _MM_HINT_T1);
  }
}

// How many positions ahead of the dot products the key rows are prefetched.
constexpr int kKeyPrefetchAhead = 8;

// Query head h for every token of the batch (the unit of work a pool thread takes); T as in the portable one.
template <typename T>
AVX2_F16C_FN void attendHeadAvx2(const AttnArgs& a, int h) {
  const int group = a.nHead / a.nHeadKv, d = a.headDim;
  const size_t qRow = (size_t)a.nHead * d, kvRow = (size_t)a.nHeadKv * d;
  const double scale = 1 / std::sqrt((double)d);
  AttnScratch& s = scratch((size_t)a.start + a.nTokens, d);
  double* scores = s.scores.data();
  double* qd = s.qd.data();
  double* acc = s.acc.data();
  const T* keys = (const T*)a.keys + (size_t)(h / group) * d;
  const T* values = (const T*)a.values + (size_t)(h / group) * d;
  for (int t = 0; t < a.nTokens; t++) {
    const int n = a.start + t + 1;
    const float* q = a.q + t * qRow + (size_t)h * d;
    for (int i = 0; i < d; i++) qd[i] = q[i];
    int p = 0;
    for (int j = 0; j < kKeyPrefetchAhead && j < n; j++) prefetchSlice(keys + j * kvRow, d, 0);
    for (; p + 4 <= n; p += 4) {
      // key rows a few positions ahead, and this position's value rows (to L2) for the weighted sum
      for (int j = 0; j < 4; j++) {
        if (p + kKeyPrefetchAhead + j < n) prefetchSlice(keys + (p + kKeyPrefetchAhead + j) * kvRow, d, 0);
        prefetchSlice(values + (p + j) * kvRow, d, 1);
      }
      dot4F64(qd, keys + p * kvRow, kvRow, d, scores + p);
      for (int j = 0; j < 4; j++) scores[p + j] *= scale;
    }
    for (; p < n; p++) {
      prefetchSlice(values + p * kvRow, d, 1);
      scores[p] = dotF64(qd, keys + p * kvRow, d) * scale;
    }
    softmaxInPlaceAvx2(scores, n);
    // Weighted sum of the value rows, row by row (rows are contiguous; a column-block order would stride
    // by the whole kv row and thrash the L1 sets) into f64 accumulators that stay in L1. Two rows per
    // pass: fma(w1, v1, fma(w0, v0, acc)) is the same sequence of operations as two passes, with half
    // the loads and stores of acc.
    for (int i = 0; i < d; i++) acc[i] = 0;
    const T* v = values;
    p = 0;
    for (; p + 2 <= n; p += 2, v += 2 * kvRow) {
      const __m256d w0 = _mm256_broadcast_sd(scores + p), w1 = _mm256_broadcast_sd(scores + p + 1);
      const T* v1 = v + kvRow;
      int i = 0;
      for (; i + 4 <= d; i += 4) {
        const __m256d c = _mm256_fmadd_pd(w0, load4d(v + i), _mm256_loadu_pd(acc + i));
        _mm256_storeu_pd(acc + i, _mm256_fmadd_pd(w1, load4d(v1 + i), c));
      }
      for (; i < d; i++) acc[i] = std::fma(scores[p + 1], kvValue(v1, i), std::fma(scores[p], kvValue(v, i), acc[i]));
    }
    for (; p < n; p++, v += kvRow) {
      const __m256d w = _mm256_broadcast_sd(scores + p);
      int i = 0;
      for (; i + 4 <= d; i += 4) {
        _mm256_storeu_pd(acc + i, _mm256_fmadd_pd(w, load4d(v + i), _mm256_loadu_pd(acc + i)));
      }
      for (; i < d; i++) acc[i] = std::fma(scores[p], kvValue(v, i), acc[i]);
    }
    float* o = a.out + t * qRow + (size_t)h * d;
    for (int i = 0; i < d; i++) o[i] = (float)acc[i];
  }
}

// exp(x) for x <= 0 in f32, 8 lanes: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
// n ln2), exp(r) by the Cephes expf polynomial, times 2^n built in the exponent bits. Below -87.3 (where
// 2^n would leave the normal range) the result is 0 instead of a subnormal.
AVX2_FN inline __m256 expNonPositive(__m256 x) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ), e);
}

// silu(z) * u = z * sigmoid(z) * u with t = exp(-|z|) in (0, 1], so nothing overflows:
// sigmoid(z) = 1 / (1 + t) for z >= 0 and t / (1 + t) for z < 0.
AVX2_FN inline __m256 swiglu8(__m256 z, __m256 u) {
  const __m256 absZ = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
  const __m256 t = expNonPositive(_mm256_sub_ps(_mm256_setzero_ps(), absZ));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 num = _mm256_blendv_ps(one, t, _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_mul_ps(_mm256_mul_ps(z, _mm256_div_ps(num, _mm256_add_ps(one, t))), u);
}

AVX2_FN void swigluAvx2(float* g, const float* u, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(g + i, swiglu8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
  if (i < n) {  // the tail through masked loads, so every element gets the same arithmetic
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)), lane);
    const __m256 r = swiglu8(_mm256_maskload_ps(g + i, mask), _mm256_maskload_ps(u + i, mask));
    _mm256_maskstore_ps(g + i, mask, r);
  }
}

// dst[i] = f16 bits of src[i], 8 at a time through F16C (round to nearest even, as floatToFp16; NaNs stay
// NaN, with their top payload bits, which floatToFp16 drops).
AVX2_F16C_FN void toF16Avx2(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128((__m128i*)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; i++) dst[i] = floatToFp16(src[i]);
}

#endif  // __x86_64__

bool (*avx2Chosen)() = nullptr;

bool avx2() {
#if defined(__x86_64__)
  return avx2Chosen && avx2Chosen();
#else
  return false;
#endif
}

std::string str(uint64_t v) { return std::to_string(v); }

struct AttnJob {
  const AttnArgs* a;
  bool avx2;
};

// One pool chunk = one query head for all tokens. Every head's outputs come from the same arithmetic
// whichever thread runs it, so the result does not depend on the thread count. (One head per chunk, so a
// helper that wakes late delays the caller by one head at most.)
void attendChunk(void* ctx, int h) {
  const AttnJob& job = *(const AttnJob*)ctx;
#if defined(__x86_64__)
  if (job.avx2) {
    if (job.a->f16) attendHeadAvx2<uint16_t>(*job.a, h);
    else attendHeadAvx2<float>(*job.a, h);
    return;
  }
#endif
  if (job.a->f16) attendHeadPortable<uint16_t>(*job.a, h);
  else attendHeadPortable<float>(*job.a, h);
}

// Below this much K/V read per extra thread (bytes, summed over heads and tokens), a second thread costs
// more than it can save. Measured on the 2-core VM (16 heads x 128, one token): with the pool helpers
// still spinning after the QKV matmul, as in the decode, 2 threads were never slower from 16 positions
// (256 KiB) up; in the decode (60..110 positions, K/V cold) attention took 2.4..4.2 ms/token on 2 threads
// against 4.3..4.8 on 1. Waking helpers that sleep costs ~40 us, which small reads cannot win back.
constexpr double kMinBytesPerExtraThread = 256 * 1024;

void runAttention(const AttnArgs& a, int threads) {
  // K/V read, counted in f32 bytes: every head reads n rows of headDim floats twice (keys, values) per
  // token. f16 K/V is counted the same: half the bytes, but the same f64 arithmetic per element.
  const double positions = (double)a.nTokens * a.start + (double)a.nTokens * (a.nTokens + 1) / 2;
  const double bytes = positions * a.nHead * a.headDim * 8;
  const double useful = bytes / kMinBytesPerExtraThread;
  if (useful < threads) threads = useful < 1 ? 1 : (int)useful;
  if (threads > a.nHead) threads = a.nHead;
  AttnJob job{&a, avx2()};
  if (threads <= 1) {
    for (int h = 0; h < a.nHead; h++) attendChunk(&job, h);
    return;
  }
  poolRun(threads, a.nHead, attendChunk, &job);
}

// causalAttention(q, keys, values, start, nTokens, nHead, nHeadKv, headDim, out[, threads])
Napi::Value CausalAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "causalAttention: expected (q, keys, values, start, nTokens, nHead, nHeadKv, headDim, out[, threads])";
  const char* kvTypes = "a Float32Array, or a Uint16Array of f16 bits (keys and values of the same type)";
  if (info.Length() < 9) return throwType(env, usage);
  AttnArgs a{};
  size_t qLen, kLen, vLen, outLen;
  float* q;
  void* k;
  void* v;
  if (!typedArray(env, info[0], napi_float32_array, &q, &qLen)) return throwType(env, "causalAttention: q must be a Float32Array");
  a.f16 = typedArray(env, info[1], napi_uint16_array, &k, &kLen);
  if (!a.f16 && !typedArray(env, info[1], napi_float32_array, &k, &kLen)) {
    return throwType(env, std::string("causalAttention: keys must be ") + kvTypes);
  }
  if (!typedArray(env, info[2], a.f16 ? napi_uint16_array : napi_float32_array, &v, &vLen)) {
    return throwType(env, std::string("causalAttention: values must be ") + kvTypes);
  }
  if (!typedArray(env, info[8], napi_float32_array, &a.out, &outLen)) return throwType(env, "causalAttention: out must be a Float32Array");
  int64_t start, nTokens, nHead, nHeadKv, headDim;
  const int64_t big = 1 << 24;  // each count far below where size products could overflow 64 bits
  if (!intArg(info[3], 0, big, &start)) return throwRange(env, "causalAttention: start must be an integer from 0 to 2^24");
  if (!intArg(info[4], 0, big, &nTokens)) return throwRange(env, "causalAttention: nTokens must be an integer from 0 to 2^24");
  if (!intArg(info[5], 1, 1 << 16, &nHead)) return throwRange(env, "causalAttention: nHead must be an integer from 1 to 65536");
  if (!intArg(info[6], 1, 1 << 16, &nHeadKv)) return throwRange(env, "causalAttention: nHeadKv must be an integer from 1 to 65536");
  if (!intArg(info[7], 1, 1 << 16, &headDim)) return throwRange(env, "causalAttention: headDim must be an integer from 1 to 65536");
  int64_t threads = 1;
  if (info.Length() > 9 && !info[9].IsUndefined() && !intArg(info[9], 1, 256, &threads)) {
    return throwRange(env, "causalAttention: threads must be an integer from 1 to 256");
  }
  if (nHead % nHeadKv != 0) {
    return throwRange(env, "causalAttention: nHead " + str(nHead) + " is not a multiple of nHeadKv " + str(nHeadKv));
  }
  if (start + nTokens > INT32_MAX / 2) return throwRange(env, "causalAttention: start + nTokens is too large");
  const uint64_t qNeed = (uint64_t)nTokens * nHead * headDim;
  const uint64_t kvNeed = (uint64_t)(start + nTokens) * nHeadKv * headDim;
  if (qLen < qNeed) return throwRange(env, "causalAttention: q has " + str(qLen) + " values, need " + str(qNeed));
  if (kLen < kvNeed) return throwRange(env, "causalAttention: keys has " + str(kLen) + " values, need " + str(kvNeed));
  if (vLen < kvNeed) return throwRange(env, "causalAttention: values has " + str(vLen) + " values, need " + str(kvNeed));
  if (outLen < qNeed) return throwRange(env, "causalAttention: out has " + str(outLen) + " values, need " + str(qNeed));
  a.q = q;
  a.keys = k;
  a.values = v;
  a.start = (int)start;
  a.nTokens = (int)nTokens;
  a.nHead = (int)nHead;
  a.nHeadKv = (int)nHeadKv;
  a.headDim = (int)headDim;
  if (nTokens == 0) return env.Undefined();
  runAttention(a, (int)threads);
  return env.Undefined();
}

// storeF16(src, dst, at, n): dst[at + i] = f16 bits of src[i] for i < n (the f16 KV cache's write).
Napi::Value StoreF16(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) return throwType(env, "storeF16: expected (src, dst, at, n)");
  float* src;
  uint16_t* dst;
  size_t srcLen, dstLen;
  if (!typedArray(env, info[0], napi_float32_array, &src, &srcLen)) return throwType(env, "storeF16: src must be a Float32Array");
  if (!typedArray(env, info[1], napi_uint16_array, &dst, &dstLen)) return throwType(env, "storeF16: dst must be a Uint16Array");
  int64_t at, n;
  if (!intArg(info[2], 0, INT64_C(1) << 40, &at)) return throwRange(env, "storeF16: at must be a non-negative integer");
  if (!intArg(info[3], 0, INT64_C(1) << 40, &n)) return throwRange(env, "storeF16: n must be a non-negative integer");
  if (srcLen < (uint64_t)n) return throwRange(env, "storeF16: src has " + str(srcLen) + " values, need " + str(n));
  if (dstLen < (uint64_t)(at + n)) return throwRange(env, "storeF16: dst has " + str(dstLen) + " values, need " + str(at + n));
#if defined(__x86_64__)
  if (avx2()) {
    toF16Avx2(src, dst + at, (size_t)n);
    return env.Undefined();
  }
#endif
  for (int64_t i = 0; i < n; i++) dst[at + i] = floatToFp16(src[i]);
  return env.Undefined();
}

// swiglu(g, u, n): g[i] = silu(g[i]) * u[i] for i < n
Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3) return throwType(env, "swiglu: expected (g, u, n)");
  float* g;
  float* u;
  size_t gLen, uLen;
  if (!typedArray(env, info[0], napi_float32_array, &g, &gLen)) return throwType(env, "swiglu: g must be a Float32Array");
  if (!typedArray(env, info[1], napi_float32_array, &u, &uLen)) return throwType(env, "swiglu: u must be a Float32Array");
  int64_t n;
  if (!intArg(info[2], 0, INT64_C(1) << 40, &n)) return throwRange(env, "swiglu: n must be a non-negative integer");
  if (gLen < (uint64_t)n) return throwRange(env, "swiglu: g has " + str(gLen) + " values, need " + str(n));
  if (uLen < (uint64_t)n) return throwRange(env, "swiglu: u has " + str(uLen) + " values, need " + str(n));
  swigluInPlace(g, u, (size_t)n);
  return env.Undefined();
}

}  // namespace

void swigluInPlace(float* g, const float* u, size_t n) {
#if defined(__x86_64__)
  if (avx2()) return swigluAvx2(g, u, n);
#endif
  swigluPortable(g, u, n);
}

void RegisterAttention(Napi::Env env, Napi::Object exports, bool (*useAvx2)()) {
  avx2Chosen = useAvx2;
  exports.Set("causalAttention", Napi::Function::New(env, CausalAttention));
  exports.Set("swiglu", Napi::Function::New(env, Swiglu));
  exports.Set("storeF16", Napi::Function::New(env, StoreF16));
}

}  // namespace moe
