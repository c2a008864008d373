// The matmul behind the `matmul` export, for other native code (expert-batch.cc).
#pragma once
#include <cstdint>

#include "kernels.h"

namespace moe {

// out[t * rows + r] = W[r] . x[t] for nTokens rows of x (cols values each), W being `rows` rows of ggml
// type `type` (typeGeometry(type) must know it; cols a multiple of its block size). The activation is
// converted to the type's vec-dot type first, as ggml does; `threads` splits the rows over the thread
// pool without changing any bit of the result.
void matmulInto(int type, const uint8_t* w, int rows, int cols, const float* x, int nTokens, float* out, int threads);

// Rows [r0, r1) of the same product (same bits), the activation already converted to
// typeGeometry(type).act (ActBuffers), so that products of one input convert it once; r0 and r1
// multiples of 16 (or r1 = rows) keep the kernels' row groups whole.
void matmulRowRangeAct(int type, const uint8_t* w, int rows, const Act& act, float* out, int r0, int r1);

}  // namespace moe
