// Positioned reads into caller-owned buffers (ArrayBuffer or SharedArrayBuffer views), run on libuv's
// thread pool so the JS thread keeps computing while experts load.
//
//   openFile(path, direct) -> fd        synchronous open(2); direct = O_DIRECT
//   closeFile(fd)                       close(2); reads still in flight on fd then fail with EBADF
//   readInto(fd, position, dst) -> Promise<number>   fills all of dst from `position`, resolves with
//                                        dst.byteLength; rejects on an error or an early end of file
//   readIntoRegion(fd, position, region, at, length) -> Promise<number>
//                                        fills region[at, at + length) from `position`; on a direct fd it
//                                        may also overwrite the rest of region (see below)
//   pageOffsetOf(view) -> number         the view's start address mod 4096 (where a slot must put a
//                                        matrix so that O_DIRECT can land in it)
//   ioCounters() -> {zeroCopyReads, bouncedReads, bouncedBytes}   direct reads so far, process-wide
//   traceReads(on) -> Float64Array     starts (on) or stops recording when each read ran on its pool
//                                        thread; returns what was recorded since the last call as
//                                        [startNs, endNs, bytes]* on the CLOCK_MONOTONIC clock that
//                                        process.hrtime.bigint() reads (for the offload bench's timeline)
//
// O_DIRECT needs the file position, the length and the memory address to be multiples of the device's
// logical block size. Expert ranges inside a GGUF file are only 32-byte aligned, so rather than asking
// callers to align their slots we read the covering block-aligned range through a small aligned scratch
// buffer (at most kScratchBytes per pool thread, kept for the thread's life) and copy out the wanted
// bytes. That copy costs CPU the expert compute needs, so a caller can avoid it: readIntoRegion hands a
// larger region around the wanted bytes, and when the block-aligned covering range lands inside that
// region at an aligned address (the slot put the matrix at an address congruent to its file offset mod
// 4096, see src/experts/host-cache.ts), the read goes straight into the region: no scratch, no copy.
#include <napi.h>

#include "napi-args.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace moe {
namespace {

constexpr size_t kDirectAlign = 4096;          // safe for 512- and 4096-byte logical blocks
constexpr size_t kScratchBytes = 4u << 20;     // per direct read in flight

struct OpenFile { std::string path; bool direct; };

std::atomic<uint64_t> zeroCopyReads{0}, bouncedReads{0}, bouncedBytes{0};

// One aligned scratch buffer per pool thread, grown on demand up to kScratchBytes and kept: a fresh
// posix_memalign per read would mmap and fault in new pages every time.
struct Scratch {
  void* p = nullptr;
  size_t n = 0;
  ~Scratch() { free(p); }
  uint8_t* get(size_t want) {
    if (want > n) {
      free(p);
      p = nullptr;
      n = 0;
      if (posix_memalign(&p, kDirectAlign, want) != 0) { p = nullptr; return nullptr; }
      n = want;
    }
    return (uint8_t*)p;
  }
};
thread_local Scratch scratchBuffer;

std::atomic<bool> tracing{false};
std::mutex traceMutex;
std::vector<double> traceRecords;

double monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

// fd -> what was opened, for error messages and the direct flag. Worker threads have their own JS
// environments but share this process-wide table.
std::mutex filesMutex;
std::unordered_map<int, OpenFile> files;

std::string errnoText(int e) {
  char buf[256];
  // GNU strerror_r may return a static string instead of filling buf.
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  const char* s = strerror_r(e, buf, sizeof buf);
  return s;
#else
  if (strerror_r(e, buf, sizeof buf) != 0) return "errno " + std::to_string(e);
  return buf;
#endif
}

const char* errnoName(int e) {
  switch (e) {
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case EISDIR: return "EISDIR";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    case EPERM: return "EPERM";
    default: return "EUNKNOWN";
  }
}

Napi::Error makeError(Napi::Env env, const std::string& msg, const char* code, int err) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  if (err) e.Set("errno", Napi::Number::New(env, err));
  return e;
}

Napi::Value OpenFileFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    return throwType(env, "openFile: expected (path: string, direct: boolean)");
  }
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const bool direct = info.Length() > 1 && info[1].ToBoolean().Value();
  int flags = O_RDONLY | O_CLOEXEC;
#ifdef O_DIRECT
  if (direct) flags |= O_DIRECT;
#else
  if (direct) {
    makeError(env, "openFile: direct I/O (O_DIRECT) is not available on this platform: " + path, "ENOTSUP", 0)
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
#endif
  int fd;
  do fd = open(path.c_str(), flags); while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int e = errno;
    std::string msg = direct && e == EINVAL
        ? "the filesystem holding " + path + " refuses direct I/O (O_DIRECT): " + errnoText(e)
        : "cannot open " + path + ": " + errnoText(e);
    makeError(env, msg, errnoName(e), e).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Expert reads jump around the file: no point in the kernel reading ahead of them.
  if (!direct) (void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  {
    std::lock_guard<std::mutex> lock(filesMutex);
    files[fd] = OpenFile{path, direct};
  }
  return Napi::Number::New(env, fd);
}

Napi::Value CloseFileFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    return throwType(env, "closeFile: expected (fd: number)");
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  {
    std::lock_guard<std::mutex> lock(filesMutex);
    if (files.erase(fd) == 0) {
      makeError(env, "closeFile: fd " + std::to_string(fd) + " was not opened by openFile or is already closed", "EBADF", EBADF)
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  close(fd);  // errors on close of a read-only fd carry no information we could act on
  return env.Undefined();
}

// Reads exactly len bytes at pos into p, looping over short reads and EINTR. Returns 0, or an errno,
// or -1 for an early end of file (*got says how many bytes there were).
int preadFull(int fd, uint8_t* p, size_t len, uint64_t pos, size_t* got) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n = pread(fd, p + done, len - done, (off_t)(pos + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      *got = done;
      return errno;
    }
    if (n == 0) break;
    done += (size_t)n;
  }
  *got = done;
  return done == len ? 0 : -1;
}

class ReadWorker : public Napi::AsyncWorker {
 public:
  // Fills dst[0, length) from position; [region, region + regionLength) around dst may be overwritten
  // by a direct read that lands there without a copy (readInto passes dst itself as the region).
  ReadWorker(Napi::Env env, int fd, const OpenFile& file, uint64_t position, uint8_t* dst, size_t length,
             uint8_t* region, size_t regionLength, Napi::Object keepAlive)
      : Napi::AsyncWorker(env, "moeReadInto"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd), path_(file.path), direct_(file.direct), position_(position), dst_(dst), length_(length),
        region_(region), regionLength_(regionLength) {
    keep_ = Napi::Persistent(keepAlive);  // the buffer must outlive the read
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    if (!tracing.load(std::memory_order_relaxed)) return Read();
    const double t0 = monotonicNs();
    Read();
    const double t1 = monotonicNs();
    std::lock_guard<std::mutex> lock(traceMutex);
    traceRecords.insert(traceRecords.end(), {t0, t1, (double)length_});
  }

  void Read() {
    if (length_ == 0) return;
    if (!direct_) {
      size_t got = 0;
      const int r = preadFull(fd_, dst_, length_, position_, &got);
      if (r != 0) fail(r, got, position_ + got);
      return;
    }
    const uint64_t want0 = position_, want1 = position_ + length_;
    const uint64_t start = want0 / kDirectAlign * kDirectAlign;
    const uint64_t end = (want1 + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
    // Zero copy: the covering range, placed so that byte `position` lands on dst, is aligned in memory
    // and inside the region.
    uint8_t* const cover = dst_ - (want0 - start);
    if ((uintptr_t)cover % kDirectAlign == 0 && cover >= region_ && cover + (end - start) <= region_ + regionLength_) {
      size_t got = 0;
      const int r = preadFull(fd_, cover, (size_t)(end - start), start, &got);
      // The covering range may run past the end of the file (alignment padding): fine if the wanted bytes are there.
      if (r > 0 || start + got < want1) {
        const uint64_t have = std::max<uint64_t>(start + got, want0);
        fail(r > 0 ? r : -1, (size_t)(have - want0), have);
        return;
      }
      zeroCopyReads.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    // Otherwise through the scratch buffer, in chunks.
    bouncedReads.fetch_add(1, std::memory_order_relaxed);
    bouncedBytes.fetch_add(length_, std::memory_order_relaxed);
    const size_t scratchBytes = (size_t)std::min<uint64_t>(end - start, kScratchBytes);
    uint8_t* scratch = scratchBuffer.get(scratchBytes);
    if (!scratch) {
      fail(ENOMEM, 0, position_);
      return;
    }
    for (uint64_t at = start; at < end; at += scratchBytes) {
      const size_t chunk = (size_t)std::min<uint64_t>(scratchBytes, end - at);
      size_t got = 0;
      const int r = preadFull(fd_, (uint8_t*)scratch, chunk, at, &got);
      // The last chunk may run past the end of the file (alignment padding): fine if the wanted bytes are there.
      const uint64_t have = at + got;
      const uint64_t need = std::min<uint64_t>(at + chunk, want1);
      if (r > 0 || have < need) {
        fail(r > 0 ? r : -1, (size_t)(std::max(have, want0) - want0), std::max(have, want0));
        return;
      }
      const uint64_t c0 = std::max(at, want0), c1 = std::min<uint64_t>(at + chunk, want1);
      if (c1 > c0) memcpy(dst_ + (c0 - want0), scratch + (c0 - at), (size_t)(c1 - c0));
    }
  }

  void OnOK() override {
    deferred_.Resolve(Napi::Number::New(Env(), (double)length_));
  }

  void OnError(const Napi::Error& e) override {
    Napi::Error err = makeError(Env(), e.Message(), code_, errno_ > 0 ? errno_ : 0);
    err.Set("path", Napi::String::New(Env(), path_));
    err.Set("position", Napi::Number::New(Env(), (double)position_));
    err.Set("length", Napi::Number::New(Env(), (double)length_));
    deferred_.Reject(err.Value());
  }

 private:
  // Runs on the pool thread: only plain C++ here; the JS error is built in OnError.
  void fail(int err, size_t got, uint64_t at) {
    const std::string where = " (" + std::to_string(length_) + " bytes at offset " + std::to_string(position_) + ")";
    if (err < 0) {
      code_ = "EOF";
      errno_ = 0;
      SetError("unexpected end of file reading " + path_ + where + ": got " + std::to_string(got) +
               " bytes; the file is shorter than expected (did it change since it was opened?)");
      return;
    }
    code_ = errnoName(err);
    errno_ = err;
    std::string msg = "read error in " + path_ + where + " at offset " + std::to_string(at) + ": " + errnoText(err);
    if (direct_ && err == EINVAL) msg += " (the filesystem refuses direct I/O / O_DIRECT)";
    SetError(msg);
  }

  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_;
  const int fd_;
  const std::string path_;
  const bool direct_;
  const uint64_t position_;
  uint8_t* const dst_;
  const size_t length_;
  uint8_t* const region_;
  const size_t regionLength_;
  const char* code_ = "EIO";
  int errno_ = 0;
};

// The Uint8Array's data pointer and length; false (with a JS exception pending) if it is not one.
bool uint8View(Napi::Env env, Napi::Value v, const char* what, uint8_t** data, size_t* length) {
  if (typedArray(env, v, napi_uint8_array, data, length)) return true;
  throwType(env, std::string(what) + " must be a Uint8Array");
  return false;
}

// An integer JS number from 0 to 2^53 - 1; false (with a JS exception pending) otherwise.
bool nonNegativeInteger(Napi::Env env, Napi::Value v, const char* what, uint64_t* out) {
  int64_t n;
  if (!intArg(v, 0, INT64_C(9007199254740991), &n)) {
    throwRange(env, std::string(what) + " must be a non-negative integer");
    return false;
  }
  *out = (uint64_t)n;
  return true;
}

// Queues the read, or returns a rejected promise when fd is not open.
Napi::Value queueRead(Napi::Env env, int fd, uint64_t position, uint8_t* dst, size_t length, uint8_t* region,
                      size_t regionLength, Napi::Object keepAlive) {
  OpenFile file;
  {
    std::lock_guard<std::mutex> lock(filesMutex);
    auto it = files.find(fd);
    if (it == files.end()) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Reject(makeError(env, "readInto: fd " + std::to_string(fd) + " is not open (closed, or not opened by openFile)", "EBADF", EBADF).Value());
      return d.Promise();
    }
    file = it->second;
  }
  auto* w = new ReadWorker(env, fd, file, position, dst, length, region, regionLength, keepAlive);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// readInto(fd, position, dst: Uint8Array) -> Promise<number>
Napi::Value ReadIntoFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber()) {
    return throwType(env, "readInto: expected (fd: number, position: number, dst: Uint8Array)");
  }
  uint64_t position;
  if (!nonNegativeInteger(env, info[1], "readInto: position", &position)) return env.Undefined();
  uint8_t* data;
  size_t length;
  if (!uint8View(env, info[2], "readInto: dst", &data, &length)) return env.Undefined();
  return queueRead(env, info[0].As<Napi::Number>().Int32Value(), position, data, length, data, length, info[2].As<Napi::Object>());
}

// readIntoRegion(fd, position, region: Uint8Array, at, length) -> Promise<number>
Napi::Value ReadIntoRegionFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsNumber() || !info[3].IsNumber() || !info[4].IsNumber()) {
    return throwType(env, "readIntoRegion: expected (fd: number, position: number, region: Uint8Array, at: number, length: number)");
  }
  uint64_t position, at, length;
  if (!nonNegativeInteger(env, info[1], "readIntoRegion: position", &position) ||
      !nonNegativeInteger(env, info[3], "readIntoRegion: at", &at) ||
      !nonNegativeInteger(env, info[4], "readIntoRegion: length", &length)) return env.Undefined();
  uint8_t* region;
  size_t regionLength;
  if (!uint8View(env, info[2], "readIntoRegion: region", &region, &regionLength)) return env.Undefined();
  if (at > regionLength || length > regionLength - at) {
    return throwRange(env, "readIntoRegion: [at, at + length) must lie inside region");
  }
  return queueRead(env, info[0].As<Napi::Number>().Int32Value(), position, region + at, (size_t)length, region, regionLength,
                   info[2].As<Napi::Object>());
}

// pageOffsetOf(view: Uint8Array) -> number: the view's start address mod 4096.
Napi::Value PageOffsetOfFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data;
  size_t length;
  if (info.Length() < 1 || !uint8View(env, info[0], "pageOffsetOf: view", &data, &length)) return env.Undefined();
  return Napi::Number::New(env, (double)((uintptr_t)data % kDirectAlign));
}

Napi::Value TraceReadsFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  tracing.store(info.Length() > 0 && info[0].ToBoolean().Value());
  std::vector<double> taken;
  {
    std::lock_guard<std::mutex> lock(traceMutex);
    taken.swap(traceRecords);
  }
  Napi::Float64Array out = Napi::Float64Array::New(env, taken.size());
  if (!taken.empty()) memcpy(out.Data(), taken.data(), taken.size() * sizeof(double));
  return out;
}

Napi::Value IoCountersFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("zeroCopyReads", Napi::Number::New(env, (double)zeroCopyReads.load()));
  o.Set("bouncedReads", Napi::Number::New(env, (double)bouncedReads.load()));
  o.Set("bouncedBytes", Napi::Number::New(env, (double)bouncedBytes.load()));
  return o;
}

}  // namespace

void RegisterIo(Napi::Env env, Napi::Object exports) {
  exports.Set("openFile", Napi::Function::New(env, OpenFileFn));
  exports.Set("closeFile", Napi::Function::New(env, CloseFileFn));
  exports.Set("readInto", Napi::Function::New(env, ReadIntoFn));
  exports.Set("readIntoRegion", Napi::Function::New(env, ReadIntoRegionFn));
  exports.Set("pageOffsetOf", Napi::Function::New(env, PageOffsetOfFn));
  exports.Set("ioCounters", Napi::Function::New(env, IoCountersFn));
  exports.Set("traceReads", Napi::Function::New(env, TraceReadsFn));
}

}  // namespace moe
