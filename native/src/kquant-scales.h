// Unpacking of the packed 6-bit scales of K-quant super-blocks (layouts of ggml-common.h).
#pragma once
#include <cstdint>

namespace moe {

// Q4_K / Q5_K: 8 (scale, min) pairs of 6 bits packed in 12 bytes.
static inline void kScaleMin(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q3_K: 16 signed 6-bit scales (stored with +32) packed in 12 bytes.
static inline void q3kScales(const uint8_t* sc, int8_t out[16]) {
  for (int i = 0; i < 4; i++) {
    const int hi = sc[8 + i];
    out[i] = (int8_t)(((sc[i] & 0xF) | ((hi & 3) << 4)) - 32);
    out[4 + i] = (int8_t)(((sc[4 + i] & 0xF) | (((hi >> 2) & 3) << 4)) - 32);
    out[8 + i] = (int8_t)(((sc[i] >> 4) | (((hi >> 4) & 3) << 4)) - 32);
    out[12 + i] = (int8_t)(((sc[4 + i] >> 4) | (((hi >> 6) & 3) << 4)) - 32);
  }
}

}  // namespace moe
