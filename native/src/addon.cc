// N-API entry point: argument checking, activation conversion, thread split and kernel-path choice.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "attention.h"
#include "kernels.h"
#include "matmul.h"
#include "napi-args.h"
#include "quantize-act.h"
#include "thread-pool.h"

namespace moe {

// io.cc: openFile, closeFile, readInto (positioned reads off the JS thread).
void RegisterIo(Napi::Env env, Napi::Object exports);
// moe-combine.cc: moeCombine (the MoE layer's weighted sum of expert outputs).
void RegisterMoeCombine(Napi::Env env, Napi::Object exports, bool (*useAvx2)());
// expert-batch.cc: expertBatch (experts' FFNs on the pool), and the pool's serving-thread entry points.
void RegisterExpertBatch(Napi::Env env, Napi::Object exports);

namespace {

// Process-wide kernel path: 'auto' (the best the CPU has), or 'avx2' / 'portable' forced (tests compare them).
enum PathMode : int { PATH_AUTO, PATH_AVX2, PATH_PORTABLE };
std::atomic<int> pathMode{PATH_AUTO};

bool useAvx2() {
  static const bool usable = avx2Usable();
  return usable && pathMode.load(std::memory_order_relaxed) != PATH_PORTABLE;
}

bool useAvx512() {
  static const bool usable = avx512Usable();
  return usable && pathMode.load(std::memory_order_relaxed) == PATH_AUTO;
}

// Rows are split into contiguous chunks run by the thread pool; every row is computed by the same code
// whichever thread runs it, so the result does not depend on the thread count.
struct RowsTask { RowsKernel kernel; const Job* job; int chunkRows; };

void runRowsChunk(void* ctx, int chunk) {
  const RowsTask& t = *(const RowsTask*)ctx;
  const int r0 = chunk * t.chunkRows;
  t.kernel(*t.job, r0, std::min(r0 + t.chunkRows, t.job->rows));
}

void runRows(RowsKernel kernel, const Job& job, int threads) {
  if (threads > job.rows) threads = job.rows;
  if (threads <= 1) {
    kernel(job, 0, job.rows);
    return;
  }
  // A few chunks per thread, so that a helper that starts late leaves part of its share to the others;
  // multiples of 16 rows keep the kernels' row groups whole.
  constexpr int CHUNKS_PER_THREAD = 4;
  int chunkRows = (job.rows + threads * CHUNKS_PER_THREAD - 1) / (threads * CHUNKS_PER_THREAD);
  chunkRows = (chunkRows + 15) / 16 * 16;
  const RowsTask task{kernel, &job, chunkRows};
  poolRun(threads, (job.rows + chunkRows - 1) / chunkRows, runRowsChunk, (void*)&task);
}

}  // namespace

namespace {
RowsKernel kernelFor(int type) {
  RowsKernel kernel = useAvx512() ? avx512Kernel(type) : nullptr;
  if (!kernel && useAvx2()) kernel = avx2Kernel(type);
  return kernel ? kernel : portableKernel(type);
}
}  // namespace

void matmulInto(int type, const uint8_t* w, int rows, int cols, const float* x, int nTokens, float* out, int threads) {
  TypeGeometry g;
  typeGeometry(type, &g);
  ActBuffers act(g.act, x, nTokens, cols);
  const Job job{w, (size_t)(cols / g.blockSize) * g.typeSize, rows, &act.view(), out};
  runRows(kernelFor(type), job, threads);
}

void matmulRowRangeAct(int type, const uint8_t* w, int rows, const Act& act, float* out, int r0, int r1) {
  TypeGeometry g;
  typeGeometry(type, &g);
  const Job job{w, (size_t)(act.cols / g.blockSize) * g.typeSize, rows, &act, out};
  kernelFor(type)(job, r0, r1);
}


namespace {

// matmul(type, w: Uint8Array, rows, cols, x: Float32Array, nTokens, out: Float32Array, threads)
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 7) return throwType(env, "matmul: expected (type, w, rows, cols, x, nTokens, out[, threads])");
  int64_t type, rows, cols, nTokens, threads = 1;
  if (!intArg(info[0], 0, 1 << 20, &type)) return throwType(env, "matmul: type must be a ggml type id");
  TypeGeometry g;
  if (!typeGeometry((int)type, &g)) return throwRange(env, "matmul: no kernel for ggml type " + std::to_string(type));
  if (!intArg(info[2], 1, INT32_MAX, &rows)) return throwRange(env, "matmul: rows must be a positive integer");
  if (!intArg(info[3], 1, INT32_MAX, &cols)) return throwRange(env, "matmul: cols must be a positive integer");
  if (!intArg(info[5], 1, INT32_MAX, &nTokens)) return throwRange(env, "matmul: nTokens must be a positive integer");
  if (info.Length() > 7 && !info[7].IsUndefined() && !intArg(info[7], 1, 256, &threads)) {
    return throwRange(env, "matmul: threads must be an integer from 1 to 256");
  }
  if (cols % g.blockSize != 0) {
    return throwRange(env, "matmul: cols " + std::to_string(cols) + " is not a multiple of the block size " +
                               std::to_string(g.blockSize));
  }
  const uint8_t* w;
  const float* x;
  float* out;
  size_t wBytes, xLen, outLen;
  if (!typedArray(env, info[1], napi_uint8_array, &w, &wBytes)) return throwType(env, "matmul: w must be a Uint8Array");
  if (!typedArray(env, info[4], napi_float32_array, &x, &xLen)) return throwType(env, "matmul: x must be a Float32Array");
  if (!typedArray(env, info[6], napi_float32_array, &out, &outLen)) return throwType(env, "matmul: out must be a Float32Array");
  const size_t rowBytes = (size_t)(cols / g.blockSize) * g.typeSize;
  if (wBytes / rowBytes < (size_t)rows) {
    return throwRange(env, "matmul: w has " + std::to_string(wBytes) + " bytes, need " +
                               std::to_string(rowBytes) + " x " + std::to_string(rows) + " rows");
  }
  if (xLen / (size_t)cols < (size_t)nTokens) {
    return throwRange(env, "matmul: x has " + std::to_string(xLen) + " values, need " + std::to_string(cols) +
                               " x " + std::to_string(nTokens) + " tokens");
  }
  if (outLen / (size_t)rows < (size_t)nTokens) {
    return throwRange(env, "matmul: out has " + std::to_string(outLen) + " values, need " +
                               std::to_string(rows) + " x " + std::to_string(nTokens) + " tokens");
  }
  matmulInto((int)type, w, (int)rows, (int)cols, x, (int)nTokens, out, (int)threads);
  return env.Undefined();
}

// Several products of one input (attention q, k, v): the input converted once per activation type, and
// all their rows split into chunks of one pool job, so the threads meet once instead of once per product.
struct ManyChunk { int matrix, r0, r1; };
struct ManyTask {
  std::vector<RowsKernel> kernels;
  std::vector<Job> jobs;
  std::vector<ManyChunk> chunks;
};

void runManyChunk(void* ctx, int chunk) {
  const ManyTask& t = *(const ManyTask*)ctx;
  const ManyChunk& c = t.chunks[(size_t)chunk];
  t.kernels[(size_t)c.matrix](t.jobs[(size_t)c.matrix], c.r0, c.r1);
}

// matmulSameInput(types: number[], ws: Uint8Array[], rows: number[], outs: Float32Array[], x: Float32Array,
//                 cols, nTokens, threads): outs[i] = ws[i] . x, as matmul gives each (the same bits).
Napi::Value MatmulSameInput(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 8 || !info[0].IsArray() || !info[1].IsArray() || !info[2].IsArray() || !info[3].IsArray()) {
    return throwType(env, "matmulSameInput: expected (types[], ws[], rows[], outs[], x, cols, nTokens, threads)");
  }
  Napi::Array types = info[0].As<Napi::Array>(), ws = info[1].As<Napi::Array>(), rowsArr = info[2].As<Napi::Array>(),
              outs = info[3].As<Napi::Array>();
  const uint32_t m = types.Length();
  if (ws.Length() != m || rowsArr.Length() != m || outs.Length() != m) return throwRange(env, "matmulSameInput: the four arrays differ in length");
  int64_t cols, nTokens, threads;
  const float* x;
  size_t xLen;
  if (!typedArray(env, info[4], napi_float32_array, &x, &xLen)) return throwType(env, "matmulSameInput: x must be a Float32Array");
  if (!intArg(info[5], 1, INT32_MAX, &cols)) return throwRange(env, "matmulSameInput: cols must be a positive integer");
  if (!intArg(info[6], 1, INT32_MAX, &nTokens)) return throwRange(env, "matmulSameInput: nTokens must be a positive integer");
  if (!intArg(info[7], 1, 256, &threads)) return throwRange(env, "matmulSameInput: threads must be an integer from 1 to 256");
  if (xLen / (size_t)cols < (size_t)nTokens) return throwRange(env, "matmulSameInput: x is shorter than cols x nTokens");
  ManyTask task;
  std::vector<ActKind> kinds;
  std::vector<std::unique_ptr<ActBuffers>> acts;  // one conversion of x per activation type
  int totalRows = 0;
  for (uint32_t i = 0; i < m; i++) {
    const std::string which = "matmulSameInput: matrix " + std::to_string(i) + ": ";
    int64_t type, rows;
    TypeGeometry g;
    if (!intArg(types.Get(i), 0, 1 << 20, &type) || !typeGeometry((int)type, &g)) return throwRange(env, which + "no kernel for its type");
    if (!intArg(rowsArr.Get(i), 1, INT32_MAX, &rows)) return throwRange(env, which + "rows must be a positive integer");
    if (cols % g.blockSize != 0) return throwRange(env, which + "cols is not a multiple of its block size");
    const uint8_t* w;
    float* out;
    size_t wBytes, outLen;
    if (!typedArray(env, ws.Get(i), napi_uint8_array, &w, &wBytes)) return throwType(env, which + "w must be a Uint8Array");
    if (!typedArray(env, outs.Get(i), napi_float32_array, &out, &outLen)) return throwType(env, which + "out must be a Float32Array");
    const size_t rowBytes = (size_t)(cols / g.blockSize) * g.typeSize;
    if (wBytes / rowBytes < (size_t)rows) return throwRange(env, which + "w is too short for its rows");
    if (outLen / (size_t)rows < (size_t)nTokens) return throwRange(env, which + "out is too short");
    size_t k = 0;
    while (k < kinds.size() && kinds[k] != g.act) k++;
    if (k == kinds.size()) {
      kinds.push_back(g.act);
      acts.push_back(std::make_unique<ActBuffers>(g.act, x, (int)nTokens, (int)cols));
    }
    task.kernels.push_back(kernelFor((int)type));
    task.jobs.push_back(Job{w, rowBytes, (int)rows, &acts[k]->view(), out});
    totalRows += (int)rows;
  }
  // As runRows: a few chunks per thread, multiples of 16 rows (the kernels' row groups stay whole).
  constexpr int CHUNKS_PER_THREAD = 4;
  int chunkRows = (totalRows + (int)threads * CHUNKS_PER_THREAD - 1) / ((int)threads * CHUNKS_PER_THREAD);
  chunkRows = std::max(16, (chunkRows + 15) / 16 * 16);
  for (uint32_t i = 0; i < m; i++) {
    for (int r0 = 0; r0 < task.jobs[i].rows; r0 += chunkRows) task.chunks.push_back(ManyChunk{(int)i, r0, std::min(task.jobs[i].rows, r0 + chunkRows)});
  }
  poolRun((int)threads, (int)task.chunks.size(), runManyChunk, &task);
  return env.Undefined();
}

Napi::Value CpuFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#if defined(__x86_64__)
  __builtin_cpu_init();
  o.Set("avx2", Napi::Boolean::New(env, __builtin_cpu_supports("avx2")));
  o.Set("fma", Napi::Boolean::New(env, __builtin_cpu_supports("fma")));
  o.Set("f16c", Napi::Boolean::New(env, __builtin_cpu_supports("f16c")));
  o.Set("avx512", Napi::Boolean::New(env, __builtin_cpu_supports("avx512f")));
#else
  for (const char* k : {"avx2", "fma", "f16c", "avx512"}) o.Set(k, Napi::Boolean::New(env, false));
#endif
  o.Set("kernelPath", Napi::String::New(env, useAvx512() ? "avx512" : useAvx2() ? "avx2" : "portable"));
  return o;
}

Napi::Value SetKernelPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  if (path != "auto" && path != "avx2" && path != "portable") {
    return throwRange(env, "setKernelPath: expected 'auto', 'avx2' or 'portable'");
  }
  pathMode.store(path == "auto" ? PATH_AUTO : path == "avx2" ? PATH_AVX2 : PATH_PORTABLE);
  return env.Undefined();
}

Napi::Value SumBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint8_t* p;
  size_t n;
  if (info.Length() < 1 || !typedArray(env, info[0], napi_uint8_array, &p, &n)) {
    return throwType(env, "sumBytes: expected a Uint8Array");
  }
  return Napi::Number::New(env, useAvx2() ? sumBytesAvx2(p, n) : sumBytesPortable(p, n));
}

// parkThreads(): pool helpers spinning for the next product go to sleep now (other threads need the cores).
Napi::Value ParkThreads(const Napi::CallbackInfo& info) {
  poolPark();
  return info.Env().Undefined();
}

Napi::Value Version(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), 1); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("version", Napi::Function::New(env, Version));
  exports.Set("matmul", Napi::Function::New(env, Matmul));
  exports.Set("matmulSameInput", Napi::Function::New(env, MatmulSameInput));
  exports.Set("cpuFeatures", Napi::Function::New(env, CpuFeatures));
  exports.Set("setKernelPath", Napi::Function::New(env, SetKernelPath));
  exports.Set("sumBytes", Napi::Function::New(env, SumBytes));
  exports.Set("parkThreads", Napi::Function::New(env, ParkThreads));
  RegisterIo(env, exports);
  RegisterAttention(env, exports, useAvx2);
  RegisterMoeCombine(env, exports, useAvx2);
  RegisterExpertBatch(env, exports);
  return exports;
}

}  // namespace
}  // namespace moe

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return moe::Init(env, exports); }

NODE_API_MODULE(moe_native, InitModule)
