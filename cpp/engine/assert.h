// METALLIC_ASSERT(cond): a debug check of an invariant the code relies on without testing it at
// run time (a visible-key range inside its chunk, a cache write inside the context, scratch
// memory big enough). Active where CMake defines METALLIC_ASSERTS (Debug and RelWithDebInfo
// builds, the sanitizer job's among them): a failure prints the condition and aborts. In Release
// builds the condition is not evaluated, so it must have no side effects; keep checks cheap.
#pragma once

#if defined(METALLIC_ASSERTS)
#include <cstdio>
#include <cstdlib>

namespace metallic {
[[noreturn]] inline void assert_failed(const char* cond, const char* file, int line) {
    std::fprintf(stderr, "metallic: assertion failed: %s (%s:%d)\n", cond, file, line);
    std::abort();
}
}  // namespace metallic

#define METALLIC_ASSERT(cond) ((cond) ? void(0) : ::metallic::assert_failed(#cond, __FILE__, __LINE__))
#else
// Unevaluated, but the names in it count as used (no unused-variable warnings in Release).
#define METALLIC_ASSERT(cond) void(sizeof(bool(cond)))
#endif
