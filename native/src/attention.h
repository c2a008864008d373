// Decode-path elementwise kernels outside matmul: causal attention over the KV cache and SwiGLU.
#pragma once
#include <napi.h>

namespace moe {

// Registers causalAttention, storeF16 and swiglu on exports. useAvx2 is addon.cc's kernel-path choice (so
// setKernelPath('portable') forces the plain C++ paths here too).
void RegisterAttention(Napi::Env env, Napi::Object exports, bool (*useAvx2)());

// g[i] = silu(g[i]) * u[i] for i < n (the kernel behind the swiglu export; same path choice).
void swigluInPlace(float* g, const float* u, size_t n);

}  // namespace moe
