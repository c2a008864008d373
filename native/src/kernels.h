// Shared declarations of the matmul kernels: the activation layout after vec-dot-type conversion, the job
// a kernel computes, and the per-path kernel tables.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

// ggml type ids (ggml.h enum ggml_type) of the weight types we compute with.
enum TypeId : int {
  T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
  T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30,
};

// What ggml converts the activation row to before the dot product ("vec_dot_type").
enum class ActKind { F32, F16, BF16, Q8_0, Q8_1, Q8_K };

struct TypeGeometry { int blockSize; int typeSize; ActKind act; };
// False for types we have no kernel for.
bool typeGeometry(int type, TypeGeometry* out);

// Activation rows after conversion, unpacked from ggml's block structs into flat arrays (same numbers).
// Token t: f32/h/qs start at t*cols; d/s at t*blocks; bsums (Q8_K, one per 16 values) at t*cols/16;
// q4Offset at t*blocks.
struct Act {
  int nTokens;
  int cols;
  int blocks;              // cols / block size of the activation type (1-element blocks for float kinds)
  const float* f32;        // F32
  const uint16_t* h;       // F16 / BF16 bits
  const int8_t* qs;        // Q8_0 / Q8_1 / Q8_K quants
  const float* d;          // block scales (Q8_0/Q8_1: the stored f16 value widened; Q8_K: f32)
  const float* s;          // Q8_1: f16(d * sum(qs)) widened
  const int16_t* bsums;    // Q8_K: sums of 16 quants
  const int32_t* q4Offset; // Q8_0: -8 * sum of the block's quants (Q4_0's -8 offset, for SIMD)
};

struct Job {
  const uint8_t* w;  // rows of weights in ggml block format
  size_t rowBytes;
  int rows;
  const Act* act;
  float* out;        // out[t * rows + r]
};

// Computes out for rows [r0, r1) and every token. Each (row, token) output is computed by the same
// sequence of operations whatever r0, r1 and nTokens are, so results do not depend on the thread split.
using RowsKernel = void (*)(const Job& job, int r0, int r1);

RowsKernel portableKernel(int type);
RowsKernel avx2Kernel(int type);  // nullptr where there is none (or not x86-64)
bool avx2Usable();                // compiled in and the CPU has avx2 + fma + f16c
RowsKernel avx512Kernel(int type);  // AVX-512 VNNI kernels (Q4_0 so far), nullptr elsewhere
bool avx512Usable();              // avx2Usable() and the CPU has avx512f/vl/bw/vnni/vbmi

double sumBytesPortable(const uint8_t* p, size_t n);
double sumBytesAvx2(const uint8_t* p, size_t n);

}  // namespace moe
