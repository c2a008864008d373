// Experts' feed-forward blocks computed on the thread pool, one expert per chunk:
// down . (silu(gate . x) * (up . x)) for the tokens routed to each expert, reading the weights where the
// RAM cache holds them. The arithmetic is the one src/experts/ffn.ts composes from the matmul and swiglu
// exports (same kernels, same order), so an expert gives the same bits here, in a worker, or resident.
// Also the entry points by which the expert pool's workers lend their threads to the pool (poolServe).
#include <napi.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "attention.h"
#include "kernels.h"
#include "matmul.h"
#include "napi-args.h"
#include "quantize-act.h"
#include "thread-pool.h"

namespace moe {
namespace {

// One matrix inside a slab, as the descriptor gives it.
struct MatrixRef { const uint8_t* w; int type; int rows; int cols; };

struct ExpertRef {
  MatrixRef gate, up, down;
  int rowStart;  // first output row (and first entry of `rows`) of this expert
  int nTokens;
};

struct BatchJob {
  std::vector<ExpertRef> experts;
  const float* x;
  const int32_t* rows;  // rows[j]: the row of x that output row j is computed from
  float* out;           // output row j at out + j * nEmbd
  int nEmbd;
};

// Per-thread scratch, grown on demand and kept: gathered rows of x, and the gate/up products.
thread_local std::vector<float> scratchX, scratchG, scratchU;

float* grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

ActKind actOf(int type) {
  TypeGeometry g;
  typeGeometry(type, &g);
  return g.act;
}

// One expert per chunk: each thread streams whole experts (gate, up, down: 1-3 MB here), which measured
// faster than splitting experts into row pieces with a barrier between the gate/up and down phases
// (A/B, 100% cached decode: 16.0 vs 17.8 ms of expert compute per token, median of 6 pairs).
void runExpert(void* ctx, int index) {
  const BatchJob& b = *(const BatchJob*)ctx;
  const ExpertRef& e = b.experts[(size_t)index];
  const int n = e.nTokens;
  const int32_t* rows = b.rows + e.rowStart;
  // The expert's tokens as contiguous rows of x: in place when they already are, else gathered.
  bool contiguous = true;
  for (int i = 1; i < n && contiguous; i++) contiguous = rows[i] == rows[0] + i;
  const float* xe = b.x + (size_t)rows[0] * b.nEmbd;
  if (!contiguous) {
    float* g = grow(scratchX, (size_t)n * b.nEmbd);
    for (int i = 0; i < n; i++) std::memcpy(g + (size_t)i * b.nEmbd, b.x + (size_t)rows[i] * b.nEmbd, sizeof(float) * b.nEmbd);
    xe = g;
  }
  const int ff = e.gate.rows;
  const size_t hidden = (size_t)n * ff;
  float* g = grow(scratchG, hidden);
  float* u = grow(scratchU, hidden);
  // x converted once for gate and up (the same conversion matmulInto would make for each).
  const ActBuffers forGate(actOf(e.gate.type), xe, n, e.gate.cols);
  matmulRowRangeAct(e.gate.type, e.gate.w, ff, forGate.view(), g, 0, ff);
  if (actOf(e.up.type) == actOf(e.gate.type)) {
    matmulRowRangeAct(e.up.type, e.up.w, ff, forGate.view(), u, 0, ff);
  } else {
    matmulInto(e.up.type, e.up.w, ff, e.up.cols, xe, n, u, 1);
  }
  swigluInPlace(g, u, hidden);
  matmulInto(e.down.type, e.down.w, e.down.rows, e.down.cols, g, n, b.out + (size_t)e.rowStart * b.nEmbd, 1);
}

std::string str(double v) { return std::to_string((long long)v); }

// Values per expert in the descriptor: slab, rowStart, nTokens, then for gate, up, down: offset,
// byteLength, type, rows, cols.
constexpr int DESC_STRIDE = 18;

// expertBatch(slabs: Uint8Array[], desc: Float64Array, x: Float32Array, rows: Int32Array,
//             out: Float32Array, nEmbd, threads)
Napi::Value ExpertBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 7 || !info[0].IsArray()) {
    return throwType(env, "expertBatch: expected (slabs: Uint8Array[], desc, x, rows, out, nEmbd, threads)");
  }
  Napi::Array slabArray = info[0].As<Napi::Array>();
  std::vector<const uint8_t*> slabs(slabArray.Length());
  std::vector<size_t> slabBytes(slabArray.Length());
  for (uint32_t i = 0; i < slabArray.Length(); i++) {
    if (!typedArray(env, slabArray.Get(i), napi_uint8_array, &slabs[i], &slabBytes[i])) {
      return throwType(env, "expertBatch: slabs must be Uint8Arrays");
    }
  }
  const double* desc;
  const float* x;
  const int32_t* rows;
  float* out;
  size_t descLen, xLen, rowsLen, outLen;
  if (!typedArray(env, info[1], napi_float64_array, &desc, &descLen)) return throwType(env, "expertBatch: desc must be a Float64Array");
  if (!typedArray(env, info[2], napi_float32_array, &x, &xLen)) return throwType(env, "expertBatch: x must be a Float32Array");
  if (!typedArray(env, info[3], napi_int32_array, &rows, &rowsLen)) return throwType(env, "expertBatch: rows must be an Int32Array");
  if (!typedArray(env, info[4], napi_float32_array, &out, &outLen)) return throwType(env, "expertBatch: out must be a Float32Array");
  int64_t nEmbd, threads;
  if (!intArg(info[5], 1, INT32_MAX, &nEmbd)) return throwRange(env, "expertBatch: nEmbd must be a positive integer");
  if (!intArg(info[6], 1, 256, &threads)) return throwRange(env, "expertBatch: threads must be an integer from 1 to 256");
  if (descLen % DESC_STRIDE != 0) return throwRange(env, "expertBatch: desc length is not a multiple of " + std::to_string(DESC_STRIDE));
  const size_t xRows = xLen / (size_t)nEmbd;

  BatchJob job{{}, x, rows, out, (int)nEmbd};
  job.experts.resize(descLen / DESC_STRIDE);
  for (size_t i = 0; i < job.experts.size(); i++) {
    const double* d = desc + i * DESC_STRIDE;
    const std::string which = "expertBatch: expert " + std::to_string(i) + ": ";
    ExpertRef& e = job.experts[i];
    const double slab = d[0], rowStart = d[1], nTokens = d[2];
    if (!(slab >= 0 && slab < (double)slabs.size() && slab == (int)slab)) return throwRange(env, which + "slab index out of range");
    if (!(nTokens >= 1 && rowStart >= 0 && rowStart == (int64_t)rowStart && nTokens == (int64_t)nTokens &&
          rowStart + nTokens <= (double)rowsLen)) {
      return throwRange(env, which + "rows [" + str(rowStart) + ", +" + str(nTokens) + ") outside rows (" + std::to_string(rowsLen) + ")");
    }
    e.rowStart = (int)rowStart;
    e.nTokens = (int)nTokens;
    if ((rowStart + nTokens) * (double)nEmbd > (double)outLen) return throwRange(env, which + "output rows outside out");
    for (int j = 0; j < e.nTokens; j++) {
      const int32_t r = rows[e.rowStart + j];
      if (r < 0 || (size_t)r >= xRows) return throwRange(env, which + "row " + std::to_string(r) + " outside x (" + std::to_string(xRows) + " rows)");
    }
    MatrixRef* ms[3] = {&e.gate, &e.up, &e.down};
    for (int m = 0; m < 3; m++) {
      const double* md = d + 3 + 5 * m;
      const double offset = md[0], bytes = md[1], type = md[2], r = md[3], c = md[4];
      TypeGeometry g;
      if (!(type >= 0 && type == (int)type && typeGeometry((int)type, &g))) return throwRange(env, which + "no kernel for ggml type " + str(type));
      if (!(r >= 1 && c >= 1 && r <= INT32_MAX && c <= INT32_MAX && r == (int64_t)r && c == (int64_t)c)) return throwRange(env, which + "bad matrix shape");
      if ((int64_t)c % g.blockSize != 0) return throwRange(env, which + "cols " + str(c) + " is not a multiple of the block size");
      const double need = (double)((int64_t)c / g.blockSize) * g.typeSize * r;
      if (!(offset >= 0 && bytes >= need && offset + bytes <= (double)slabBytes[(size_t)slab])) {
        return throwRange(env, which + "matrix bytes outside its slab or too few for its shape");
      }
      *ms[m] = MatrixRef{slabs[(size_t)slab] + (size_t)offset, (int)type, (int)r, (int)c};
    }
    if (e.gate.cols != nEmbd || e.up.cols != nEmbd || e.up.rows != e.gate.rows || e.down.cols != e.gate.rows || e.down.rows != nEmbd) {
      return throwRange(env, which + "matrix shapes do not chain (gate/up [ff, nEmbd], down [nEmbd, ff])");
    }
  }
  if (!job.experts.empty()) poolRun((int)threads, (int)job.experts.size(), runExpert, &job);
  return env.Undefined();
}

// poolServe(release: Int32Array on a SharedArrayBuffer): blocks the calling thread (a worker) as a pool
// helper until release[0] is not 0 (and poolWakeServers() has been called after setting it).
Napi::Value PoolServe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t* release;
  size_t n;
  if (info.Length() < 1 || !typedArray(env, info[0], napi_int32_array, &release, &n) || n < 1) {
    return throwType(env, "poolServe: expected an Int32Array (shared) whose [0] releases the thread");
  }
  return Napi::Boolean::New(env, poolServe(release));
}

Napi::Value PoolWakeServers(const Napi::CallbackInfo& info) {
  poolWakeServers();
  return info.Env().Undefined();
}

// poolLending(): { lent: threads lent now, chunks: chunks lent threads have run so far }
Napi::Value PoolLending(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("lent", Napi::Number::New(env, poolLentThreads()));
  o.Set("chunks", Napi::Number::New(env, (double)poolLentChunks()));
  return o;
}

}  // namespace

void RegisterExpertBatch(Napi::Env env, Napi::Object exports) {
  exports.Set("expertBatch", Napi::Function::New(env, ExpertBatch));
  exports.Set("poolServe", Napi::Function::New(env, PoolServe));
  exports.Set("poolWakeServers", Napi::Function::New(env, PoolWakeServers));
  exports.Set("poolLending", Napi::Function::New(env, PoolLending));
}

}  // namespace moe
