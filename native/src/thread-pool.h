// A process-wide pool of helper threads for splitting one product over several cores without starting
// threads on every call (starting them costs about as much as a 2.4 MB product gains from a second core).
#pragma once
#include <cstdint>

namespace moe {

// Calls fn(ctx, chunk) once for every chunk in [0, nChunks), on the calling thread and on up to
// `threads - 1` pool helpers (created on first need, at most 255), and returns when all chunks are done.
// Chunks are claimed one at a time from a shared counter, so a helper that wakes late just takes fewer.
// Which thread runs a chunk is unspecified: fn must give the same result wherever it runs.
// Safe to call from several threads at once: a caller that finds the pool busy runs every chunk itself.
void poolRun(int threads, int nChunks, void (*fn)(void* ctx, int chunk), void* ctx);

// Makes helpers that are spinning for the next job go to sleep now (other threads need the cores).
void poolPark();

// Lends the calling thread to the pool as a helper (the expert pool's workers do this) until the word
// *release (shared memory the lender owns) is not 0: the lender stores 1 there, then calls
// poolWakeServers() so that a sleeping lent thread sees it. While any thread is lent, the pool's own
// helper threads stay asleep. Returns whether any job came while it served.
bool poolServe(const int32_t* release);
void poolWakeServers();
// Threads lent now, and chunks lent threads have run since the process started (tests, stats).
int poolLentThreads();
uint64_t poolLentChunks();

}  // namespace moe
