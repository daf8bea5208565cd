// Thread-pool settings that must be in place before the OpenMP runtime starts.
#pragma once

namespace runway {

// libgomp reads OMP_WAIT_POLICY once, when it is loaded. Its default lets idle threads
// spin; on small machines shared with other work (2 cores, ctest -j2, a compiler
// running) a spinning thread and a descheduled one make every parallel region cost
// milliseconds: training steps measured 8x slower (docs/performance.md). When the
// variable is unset, this sets OMP_WAIT_POLICY=PASSIVE and re-executes the program
// with the same arguments, once. A user's explicit setting is left alone.
// Call it first thing in main().
void prefer_passive_omp_wait(char** argv);

}  // namespace runway
