// Helper threads wait for a job by spinning a short while (a decode step issues dense products back to
// back, tens of microseconds apart, and waking a sleeping thread costs about as much), then sleep on a
// condition variable. Jobs are published through one 64-bit word: (job sequence << 32) | next chunk.
// Helpers are the pool's own threads, or threads that lend themselves with poolServe (the expert pool's
// workers): while any lent thread serves, the pool's own threads stay asleep, so the cores are not
// shared by two sets of spinning helpers.
#include "thread-pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpuRelax() { _mm_pause(); }
#else
static inline void cpuRelax() { std::this_thread::yield(); }
#endif

namespace moe {
namespace {

constexpr int MAX_HELPERS = 255;
// How long an idle helper spins for the next job before it sleeps. Covers the back-to-back products of
// one layer (q, k, v); the spin yields the core every few microseconds, because on a busy machine a
// helper spinning without yielding took the core from the thread that was about to call the next product
// (measured on a 2-core VM with another process busy: 200 us of plain spinning made a decode step's
// dense products 2x slower, with yields they ran as fast as on one thread). 0-150 us measured alike on
// an idle machine.
constexpr std::chrono::microseconds SPIN_TIME{100};
// Chunk field of `claim` while a job's fields are being written: no chunk can be claimed.
constexpr uint32_t CLOSED = 0x7fffffff;

using ChunkFn = void (*)(void*, int);

struct Pool {
  std::mutex callers;  // held by the one caller whose job the helpers run
  uint32_t seq = 0;    // last published job (guarded by callers)
  int nHelpers = 0;    // guarded by callers

  // The current job's fields, written between the CLOSED and the open store of its sequence in claim.
  std::atomic<ChunkFn> fn{nullptr};
  std::atomic<void*> ctx{nullptr};
  std::atomic<int> nChunks{0};
  std::atomic<int> helpersWanted{0};
  // (job sequence << 32) | helpers that joined the job (at most helpersWanted take part).
  std::atomic<uint64_t> joined{0};
  // (job sequence << 32) | next unclaimed chunk. Chunks are claimed by compare-and-swap that keeps the
  // sequence, so a helper still holding an older job's fields can never take a chunk of a newer job.
  std::atomic<uint64_t> claim{CLOSED};
  std::atomic<int> done{0};  // chunks of the current job finished by helpers

  std::atomic<uint32_t> parkSeq{0};
  std::mutex sleepMutex;
  std::atomic<int> sleepers{0};        // own threads asleep on `wake`
  std::condition_variable wake;
  std::atomic<int> servers{0};         // lent threads (poolServe) now serving
  std::atomic<int> serverSleepers{0};  // lent threads asleep on `serverWake`
  std::condition_variable serverWake;
  std::atomic<uint64_t> lentChunks{0}; // chunks run by lent threads (tests check that they take part)
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: helpers may still be waiting on it at process exit
  return *p;
}

inline uint32_t seqOf(uint64_t v) { return (uint32_t)(v >> 32); }
inline uint32_t chunkOf(uint64_t v) { return (uint32_t)v; }
inline bool isNewJob(uint64_t v, uint32_t lastSeq) { return seqOf(v) != lastSeq && chunkOf(v) != CLOSED; }

// The next chunk of job `seq`, or -1 when it has none left or is over.
int claimChunk(Pool& p, uint32_t seq, int nChunks) {
  uint64_t v = p.claim.load(std::memory_order_acquire);
  for (;;) {
    if (seqOf(v) != seq || chunkOf(v) >= (uint32_t)nChunks) return -1;
    if (p.claim.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
      return (int)chunkOf(v);
    }
  }
}

// Takes one of job `seq`'s helper places; false when the job wants no more helpers or is over.
bool join(Pool& p, uint32_t seq) {
  // A later job's value here goes with a later sequence in `joined`, which fails the check below.
  const uint32_t wanted = (uint32_t)p.helpersWanted.load(std::memory_order_acquire);
  uint64_t v = p.joined.load(std::memory_order_acquire);
  for (;;) {
    if (seqOf(v) != seq || chunkOf(v) >= wanted) return false;
    if (p.joined.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) return true;
  }
}

// Runs chunks of job `seq` until none is left; returns how many it ran.
int workOn(Pool& p, uint32_t seq) {
  // If these loads see a later job's fields, that job was published after `seq` ended, so every claim
  // below fails on the sequence check and nothing runs.
  const ChunkFn fn = p.fn.load(std::memory_order_acquire);
  void* const ctx = p.ctx.load(std::memory_order_acquire);
  const int n = p.nChunks.load(std::memory_order_acquire);
  int ran = 0;
  for (int c; (c = claimChunk(p, seq, n)) >= 0; ran++) fn(ctx, c);
  return ran;
}

// Waits for a job newer than lastSeq: spins up to SPIN_TIME (less if parked), then sleeps. An own
// thread (release == nullptr) does not spin while lent threads serve, and sleeps until a job comes when
// none does. A lent thread also returns, with *released set, once its *release word is not 0.
uint64_t waitForJob(Pool& p, uint32_t lastSeq, uint32_t* lastPark, const int32_t* release, bool* released) {
  const bool lent = release != nullptr;
  auto releasedNow = [&] { return lent && __atomic_load_n(release, __ATOMIC_ACQUIRE) != 0; };
  auto stayOut = [&] { return !lent && p.servers.load(std::memory_order_acquire) > 0; };
  const auto deadline = std::chrono::steady_clock::now() + SPIN_TIME;
  for (unsigned i = 1;; i++) {
    if (releasedNow()) return *released = true, 0;
    if (stayOut()) break;
    const uint64_t v = p.claim.load(std::memory_order_acquire);
    if (isNewJob(v, lastSeq)) return v;
    if (p.parkSeq.load(std::memory_order_relaxed) != *lastPark) break;
    if ((i & 15) == 0) {
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::yield();  // lets a thread waiting for this core run (a busy machine)
    }
    cpuRelax();
  }
  std::unique_lock<std::mutex> lock(p.sleepMutex);
  // seq_cst pairs with poolRun's store of the job then load of the sleeper counts: one side sees the other.
  std::atomic<int>& sleepers = lent ? p.serverSleepers : p.sleepers;
  std::condition_variable& cv = lent ? p.serverWake : p.wake;
  sleepers.fetch_add(1, std::memory_order_seq_cst);
  uint64_t v = 0;
  for (;;) {
    if (releasedNow()) break;
    v = p.claim.load(std::memory_order_seq_cst);
    if (isNewJob(v, lastSeq) && !stayOut()) break;
    cv.wait(lock);
  }
  sleepers.fetch_sub(1, std::memory_order_relaxed);
  *lastPark = p.parkSeq.load(std::memory_order_relaxed);
  if (releasedNow()) return *released = true, 0;
  return v;
}

void helperMain(Pool* p, uint32_t lastSeq) {
  uint32_t lastPark = p->parkSeq.load(std::memory_order_relaxed);
  bool released = false;
  for (;;) {
    lastSeq = seqOf(waitForJob(*p, lastSeq, &lastPark, nullptr, &released));
    if (p->servers.load(std::memory_order_acquire) > 0 || !join(*p, lastSeq)) continue;
    const int ran = workOn(*p, lastSeq);
    if (ran > 0) p->done.fetch_add(ran, std::memory_order_release);
  }
}

// Starts helpers up to `want` (fewer if the system has no more threads to give); returns how many exist.
int growTo(Pool& p, int want) {
  while (p.nHelpers < want) {
    try {
      std::thread(helperMain, &p, p.seq).detach();
    } catch (...) {
      break;
    }
    p.nHelpers++;
  }
  return p.nHelpers;
}

void runAlone(int nChunks, ChunkFn fn, void* ctx) {
  for (int c = 0; c < nChunks; c++) fn(ctx, c);
}

}  // namespace

void poolRun(int threads, int nChunks, ChunkFn fn, void* ctx) {
  if (threads <= 1 || nChunks <= 1) return runAlone(nChunks, fn, ctx);
  Pool& p = pool();
  std::unique_lock<std::mutex> caller(p.callers, std::try_to_lock);
  if (!caller.owns_lock()) return runAlone(nChunks, fn, ctx);  // another caller has the helpers
  const int want = std::min({threads - 1, MAX_HELPERS, nChunks - 1});
  const int servers = p.servers.load(std::memory_order_seq_cst);
  const int helpers = servers > 0 ? std::min(servers, want) : std::min(growTo(p, want), want);
  if (helpers == 0) return runAlone(nChunks, fn, ctx);

  const uint32_t seq = ++p.seq;
  p.claim.store(((uint64_t)seq << 32) | CLOSED, std::memory_order_seq_cst);
  p.fn.store(fn, std::memory_order_release);
  p.ctx.store(ctx, std::memory_order_release);
  p.nChunks.store(nChunks, std::memory_order_release);
  p.helpersWanted.store(helpers, std::memory_order_release);
  p.done.store(0, std::memory_order_relaxed);
  p.joined.store((uint64_t)seq << 32, std::memory_order_release);
  p.claim.store((uint64_t)seq << 32, std::memory_order_seq_cst);
  const bool lentSleep = p.serverSleepers.load(std::memory_order_seq_cst) > 0;
  const bool ownSleep = p.sleepers.load(std::memory_order_seq_cst) > 0 && p.servers.load(std::memory_order_seq_cst) == 0;
  if (lentSleep || ownSleep) {
    { std::lock_guard<std::mutex> g(p.sleepMutex); }
    if (lentSleep) p.serverWake.notify_all();
    if (ownSleep) p.wake.notify_all();
  }

  const int mine = workOn(p, seq);
  for (unsigned i = 1; p.done.load(std::memory_order_acquire) + mine < nChunks; i++) {
    if ((i & 255) == 0) std::this_thread::yield();  // a helper was preempted mid-chunk
    else cpuRelax();
  }
}

void poolPark() { pool().parkSeq.fetch_add(1, std::memory_order_relaxed); }

int poolLentThreads() { return pool().servers.load(std::memory_order_acquire); }
uint64_t poolLentChunks() { return pool().lentChunks.load(std::memory_order_relaxed); }

bool poolServe(const int32_t* release) {
  Pool& p = pool();
  p.servers.fetch_add(1, std::memory_order_seq_cst);
  // Jobs published before this thread counted as a server did not count on it: wait for newer ones.
  uint32_t lastSeq = seqOf(p.claim.load(std::memory_order_acquire));
  uint32_t lastPark = p.parkSeq.load(std::memory_order_relaxed);
  bool released = false;
  bool served = false;
  while (!released) {
    const uint64_t v = waitForJob(p, lastSeq, &lastPark, release, &released);
    if (released) break;
    served = true;
    lastSeq = seqOf(v);
    if (!join(p, lastSeq)) continue;
    const int ran = workOn(p, lastSeq);
    if (ran > 0) {
      p.lentChunks.fetch_add((uint64_t)ran, std::memory_order_relaxed);
      p.done.fetch_add(ran, std::memory_order_release);
    }
  }
  p.servers.fetch_sub(1, std::memory_order_seq_cst);
  return served;
}

void poolWakeServers() {
  Pool& p = pool();
  { std::lock_guard<std::mutex> g(p.sleepMutex); }
  p.serverWake.notify_all();
}

}  // namespace moe
