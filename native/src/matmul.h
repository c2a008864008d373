// The matmul behind the `matmul` export, for other native code (expert-batch.cc).
#pragma once
#include <cstdint>

namespace moe {

// out[t * rows + r] = W[r] . x[t] for nTokens rows of x (cols values each), W being `rows` rows of ggml
// type `type` (typeGeometry(type) must know it; cols a multiple of its block size). The activation is
// converted to the type's vec-dot type first, as ggml does; `threads` splits the rows over the thread
// pool without changing any bit of the result.
void matmulInto(int type, const uint8_t* w, int rows, int cols, const float* x, int nTokens, float* out, int threads);

}  // namespace moe
