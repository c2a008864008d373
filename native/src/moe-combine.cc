// The MoE layer's combine: every token's output is the sum, in its selection order, of its k expert
// outputs each scaled by its routing weight, all in f32 exactly as the TypeScript reference
// (src/engine/moe-layer.ts moeCombineReference) computes it: s = y0*w0, then s = s + y*w per slot, each
// product and sum rounded to f32. No FMA: the AVX2 path's target leaves FMA out and the portable path
// turns contraction off, so a*b+c is never fused (fusing would change the bits).
#include "napi-args.h"

#include <cstdint>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define NO_CONTRACT
#endif

namespace moe {
namespace {

struct CombineArgs {
  const float* ys;         // expert outputs, rows of nEmbd
  const int32_t* offsets;  // [t * k + slot]: index in ys of the row of token t's slot-th expert
  const float* weights;    // [t * k + slot]: its routing weight
  float* out;              // nTokens rows of nEmbd
  int nTokens, k, nEmbd;
};

NO_CONTRACT void combinePortable(const CombineArgs& a) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  for (int t = 0; t < a.nTokens; t++) {
    float* o = a.out + (size_t)t * a.nEmbd;
    const float* y0 = a.ys + a.offsets[(size_t)t * a.k];
    const float w0 = a.weights[(size_t)t * a.k];
    for (int c = 0; c < a.nEmbd; c++) o[c] = y0[c] * w0;
    for (int slot = 1; slot < a.k; slot++) {
      const float* y = a.ys + a.offsets[(size_t)t * a.k + slot];
      const float w = a.weights[(size_t)t * a.k + slot];
      for (int c = 0; c < a.nEmbd; c++) {
        const float p = y[c] * w;
        o[c] = o[c] + p;
      }
    }
  }
}

#if defined(__x86_64__)
// 8 columns at a time over all k slots, so the running sums stay in a register.
__attribute__((target("avx2"))) void combineAvx2(const CombineArgs& a) {
  for (int t = 0; t < a.nTokens; t++) {
    float* o = a.out + (size_t)t * a.nEmbd;
    const int32_t* off = a.offsets + (size_t)t * a.k;
    const float* w = a.weights + (size_t)t * a.k;
    int c = 0;
    for (; c + 8 <= a.nEmbd; c += 8) {
      __m256 s = _mm256_mul_ps(_mm256_loadu_ps(a.ys + off[0] + c), _mm256_set1_ps(w[0]));
      for (int slot = 1; slot < a.k; slot++) {
        s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_loadu_ps(a.ys + off[slot] + c), _mm256_set1_ps(w[slot])));
      }
      _mm256_storeu_ps(o + c, s);
    }
    for (; c < a.nEmbd; c++) {
      __m128 s = _mm_mul_ss(_mm_set_ss(a.ys[off[0] + c]), _mm_set_ss(w[0]));
      for (int slot = 1; slot < a.k; slot++) {
        s = _mm_add_ss(s, _mm_mul_ss(_mm_set_ss(a.ys[off[slot] + c]), _mm_set_ss(w[slot])));
      }
      o[c] = _mm_cvtss_f32(s);
    }
  }
}
#endif

bool (*avx2Chosen)() = nullptr;

Napi::Value fail(Napi::Env env, bool type, const std::string& msg) {
  return type ? throwType(env, "moeCombine: " + msg) : throwRange(env, "moeCombine: " + msg);
}

// moeCombine(ys, offsets, weights, nTokens, k, nEmbd, out)
Napi::Value MoeCombine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 7) return fail(env, true, "expected (ys, offsets, weights, nTokens, k, nEmbd, out)");
  CombineArgs a{};
  size_t ysLen, offLen, wLen, outLen;
  float* ys;
  int32_t* offsets;
  float* weights;
  if (!typedArray(env, info[0], napi_float32_array, &ys, &ysLen)) return fail(env, true, "ys must be a Float32Array");
  if (!typedArray(env, info[1], napi_int32_array, &offsets, &offLen)) return fail(env, true, "offsets must be an Int32Array");
  if (!typedArray(env, info[2], napi_float32_array, &weights, &wLen)) return fail(env, true, "weights must be a Float32Array");
  if (!typedArray(env, info[6], napi_float32_array, &a.out, &outLen)) return fail(env, true, "out must be a Float32Array");
  int64_t nTokens, k, nEmbd;
  if (!intArg(info[3], 0, INT32_MAX, &nTokens)) return fail(env, false, "nTokens must be a non-negative integer");
  if (!intArg(info[4], 1, 1 << 16, &k)) return fail(env, false, "k must be an integer from 1 to 65536");
  if (!intArg(info[5], 1, INT32_MAX, &nEmbd)) return fail(env, false, "nEmbd must be a positive integer");
  const uint64_t slots = (uint64_t)nTokens * k;
  if (offLen < slots || wLen < slots) {
    return fail(env, false, "offsets/weights have " + std::to_string(offLen) + "/" + std::to_string(wLen) +
                                " values, need nTokens * k = " + std::to_string(slots));
  }
  if (outLen < (uint64_t)nTokens * nEmbd) return fail(env, false, "out is shorter than nTokens * nEmbd");
  for (uint64_t i = 0; i < slots; i++) {
    if (offsets[i] < 0 || (uint64_t)offsets[i] + nEmbd > ysLen) {
      return fail(env, false, "offsets[" + std::to_string(i) + "] = " + std::to_string(offsets[i]) +
                                  " puts a row outside ys (" + std::to_string(ysLen) + " values)");
    }
  }
  a.ys = ys;
  a.offsets = offsets;
  a.weights = weights;
  a.nTokens = (int)nTokens;
  a.k = (int)k;
  a.nEmbd = (int)nEmbd;
#if defined(__x86_64__)
  if (avx2Chosen && avx2Chosen()) {
    combineAvx2(a);
    return env.Undefined();
  }
#endif
  combinePortable(a);
  return env.Undefined();
}

}  // namespace

void RegisterMoeCombine(Napi::Env env, Napi::Object exports, bool (*useAvx2)()) {
  avx2Chosen = useAvx2;
  exports.Set("moeCombine", Napi::Function::New(env, MoeCombine));
}

}  // namespace moe
