// Makes Metal Shading Language (the conservative MSL 3.0 subset Metallic uses) compile as C++17
// for the CPU simulator. The .metal sources stay unchanged on disk; gen_kernels.py feeds a
// lightly rewritten copy (attributes stripped, `threadgroup T x[N];` declarations turned into
// shared per-threadgroup storage, function constants and swizzles turned into C++) through the
// host compiler with this header in front.
//
// What runs where: every simulated thread is a fiber; the collectives and barriers below call
// into the runtime (sim_runtime.h), which makes the lanes rendezvous and exchange values.
//
// Not covered on purpose: textures, samplers, half literals (1.0h), bfloat, swizzle assignment
// (v.xy = ...), matrix types other than simdgroup_matrix, intersection/raytracing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "sim_runtime.h"

#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 300
#endif
#define METALLIC_SIM 1

// Constants metal_stdlib provides as macros.
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define HUGE_VALF __builtin_huge_valf()
#define FLT_MAX 3.402823466e+38f
#define FLT_MIN 1.175494351e-38f
#define HALF_MAX 65504.0f

// MSL's scalar types. `half` is a real IEEE binary16: arithmetic on it rounds to half after
// every operation (GCC evaluates in float and rounds back), like the GPU.
typedef _Float16 half;
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;

// The kernels are compiled twice (gen_kernels.py): plainly, and with the memory-traffic
// instrumentation (MSIM_COUNTING_TU). The inline namespace gives the two builds' copies of
// everything below different link names, so the linker cannot merge an instrumented inline
// function into the plain build or the reverse.
#ifdef MSIM_COUNTING_TU
#define MSIM_BUILD counting_build
#else
#define MSIM_BUILD plain_build
#endif

namespace metal {
inline namespace MSIM_BUILD {

using ::half;
using ::uint;
using ::ushort;
using ::uchar;
using ::ulong;

// ---------------------------------------------------------------------------------------------
// Scalar traits. std::is_arithmetic does not know _Float16 in C++17, so keep our own.
template <class T> struct is_scalar_t : std::is_arithmetic<T> {};
template <> struct is_scalar_t<_Float16> : std::true_type {};
template <class T> constexpr bool is_scalar_v = is_scalar_t<std::remove_cv_t<T>>::value;
template <class T> constexpr bool is_float_v = std::is_floating_point<T>::value || std::is_same<T, _Float16>::value;

// ---------------------------------------------------------------------------------------------
// Vectors. Storage matches Metal's layout: an n-vector of T is aligned to its size (a 3-vector
// takes the room of a 4-vector); packed_ vectors have T's alignment and no padding.
template <class T, int N, bool P> struct vstore;
template <class T> struct alignas(2 * sizeof(T)) vstore<T, 2, false> {
    union { T v[2]; struct { T x, y; }; };
};
template <class T> struct alignas(4 * sizeof(T)) vstore<T, 3, false> {
    union { T v[3]; struct { T x, y, z; }; };
};
template <class T> struct alignas(4 * sizeof(T)) vstore<T, 4, false> {
    union { T v[4]; struct { T x, y, z, w; }; };
};
template <class T> struct vstore<T, 2, true> {
    union { T v[2]; struct { T x, y; }; };
};
template <class T> struct vstore<T, 3, true> {
    union { T v[3]; struct { T x, y, z; }; };
};
template <class T> struct vstore<T, 4, true> {
    union { T v[4]; struct { T x, y, z, w; }; };
};

template <class T, int N, bool P = false> struct vec;

template <class T> struct vec_count { static constexpr int value = 1; };
template <class T, int N, bool P> struct vec_count<vec<T, N, P>> { static constexpr int value = N; };
template <class... A> constexpr int count_components() { return (0 + ... + vec_count<std::decay_t<A>>::value); }

template <class T, int N, bool P> struct vec : vstore<T, N, P> {
    using value_type = T;
    static constexpr int size = N;
    vec() = default;
    // Scalar -> vector: every component gets the value (MSL's implicit scalar promotion).
    template <class S, std::enable_if_t<is_scalar_v<S>, int> = 0> vec(S s) {
        for (int i = 0; i < N; ++i) this->v[i] = T(s);
    }
    // Components from scalars and smaller vectors: float4(a, b, c, d), float4(f2, f2), ...
    template <class A0, class A1, class... A, std::enable_if_t<count_components<A0, A1, A...>() == N, int> = 0>
    vec(A0 a0, A1 a1, A... a) {
        int i = 0;
        put(i, a0);
        put(i, a1);
        (put(i, a), ...);
    }
    // packed <-> unpacked of the same element type converts implicitly, like MSL.
    vec(const vec<T, N, !P>& o) {
        for (int i = 0; i < N; ++i) this->v[i] = o.v[i];
    }
    // Element type conversions are explicit: float4(h4).
    template <class U, bool Q, std::enable_if_t<!std::is_same<U, T>::value, int> = 0>
    explicit vec(const vec<U, N, Q>& o) {
        for (int i = 0; i < N; ++i) this->v[i] = T(o.v[i]);
    }

    T& operator[](int i) { return this->v[i]; }
    const T& operator[](int i) const { return this->v[i]; }

    // Read-only swizzles; gen_kernels.py rewrites `v.xy` into `v.xy()`.
    vec<T, 2> xy() const { return vec<T, 2>(this->v[0], this->v[1]); }
    vec<T, 2> yz() const { return vec<T, 2>(this->v[1], this->v[2]); }
    vec<T, 2> zw() const { return vec<T, 2>(this->v[2], this->v[3]); }
    vec<T, 3> xyz() const { return vec<T, 3>(this->v[0], this->v[1], this->v[2]); }

private:
    template <class S> void put(int& i, S s) {
        if constexpr (is_scalar_v<S>) {
            this->v[i++] = T(s);
        } else {
            for (int k = 0; k < S::size; ++k) this->v[i++] = T(s.v[k]);
        }
    }
};

template <class T> struct is_vec : std::false_type {};
template <class T, int N, bool P> struct is_vec<vec<T, N, P>> : std::true_type {};

// Elementwise operators. A scalar operand is converted to the vector's element type.
#define MSIM_VEC_BINOP(op)                                                                         \
    template <class T, int N, bool P, bool Q>                                                      \
    vec<T, N> operator op(const vec<T, N, P>& a, const vec<T, N, Q>& b) {                          \
        vec<T, N> r;                                                                               \
        for (int i = 0; i < N; ++i) r.v[i] = T(a.v[i] op b.v[i]);                                  \
        return r;                                                                                  \
    }                                                                                              \
    template <class T, int N, bool P, class S, std::enable_if_t<is_scalar_v<S>, int> = 0>          \
    vec<T, N> operator op(const vec<T, N, P>& a, S s) {                                            \
        vec<T, N> r;                                                                               \
        for (int i = 0; i < N; ++i) r.v[i] = T(a.v[i] op T(s));                                    \
        return r;                                                                                  \
    }                                                                                              \
    template <class T, int N, bool P, class S, std::enable_if_t<is_scalar_v<S>, int> = 0>          \
    vec<T, N> operator op(S s, const vec<T, N, P>& a) {                                            \
        vec<T, N> r;                                                                               \
        for (int i = 0; i < N; ++i) r.v[i] = T(T(s) op a.v[i]);                                    \
        return r;                                                                                  \
    }                                                                                              \
    template <class T, int N, bool P, class B>                                                     \
    vec<T, N, P>& operator op##=(vec<T, N, P>& a, const B& b) {                                    \
        a = vec<T, N, P>(a op b);                                                                  \
        return a;                                                                                  \
    }
MSIM_VEC_BINOP(+)
MSIM_VEC_BINOP(-)
MSIM_VEC_BINOP(*)
MSIM_VEC_BINOP(/)
MSIM_VEC_BINOP(%)
MSIM_VEC_BINOP(&)
MSIM_VEC_BINOP(|)
MSIM_VEC_BINOP(^)
MSIM_VEC_BINOP(<<)
MSIM_VEC_BINOP(>>)
#undef MSIM_VEC_BINOP

#define MSIM_VEC_CMP(op)                                                                           \
    template <class T, int N, bool P, bool Q>                                                      \
    vec<bool, N> operator op(const vec<T, N, P>& a, const vec<T, N, Q>& b) {                       \
        vec<bool, N> r;                                                                            \
        for (int i = 0; i < N; ++i) r.v[i] = a.v[i] op b.v[i];                                     \
        return r;                                                                                  \
    }                                                                                              \
    template <class T, int N, bool P, class S, std::enable_if_t<is_scalar_v<S>, int> = 0>          \
    vec<bool, N> operator op(const vec<T, N, P>& a, S s) {                                         \
        vec<bool, N> r;                                                                            \
        for (int i = 0; i < N; ++i) r.v[i] = a.v[i] op T(s);                                       \
        return r;                                                                                  \
    }
MSIM_VEC_CMP(<)
MSIM_VEC_CMP(<=)
MSIM_VEC_CMP(>)
MSIM_VEC_CMP(>=)
MSIM_VEC_CMP(==)
MSIM_VEC_CMP(!=)
#undef MSIM_VEC_CMP

template <class T, int N, bool P> vec<T, N> operator-(const vec<T, N, P>& a) {
    vec<T, N> r;
    for (int i = 0; i < N; ++i) r.v[i] = T(-a.v[i]);
    return r;
}
template <class T, int N, bool P> vec<T, N> operator~(const vec<T, N, P>& a) {
    vec<T, N> r;
    for (int i = 0; i < N; ++i) r.v[i] = T(~a.v[i]);
    return r;
}
template <int N, bool P> vec<bool, N> operator!(const vec<bool, N, P>& a) {
    vec<bool, N> r;
    for (int i = 0; i < N; ++i) r.v[i] = !a.v[i];
    return r;
}

#define MSIM_VEC_TYPES(T, name)                                                                    \
    typedef vec<T, 2> name##2;                                                                     \
    typedef vec<T, 3> name##3;                                                                     \
    typedef vec<T, 4> name##4;                                                                     \
    typedef vec<T, 2, true> packed_##name##2;                                                      \
    typedef vec<T, 3, true> packed_##name##3;                                                      \
    typedef vec<T, 4, true> packed_##name##4;
MSIM_VEC_TYPES(float, float)
MSIM_VEC_TYPES(half, half)
MSIM_VEC_TYPES(int, int)
MSIM_VEC_TYPES(uint, uint)
MSIM_VEC_TYPES(short, short)
MSIM_VEC_TYPES(ushort, ushort)
MSIM_VEC_TYPES(char, char)
MSIM_VEC_TYPES(uchar, uchar)
MSIM_VEC_TYPES(long, long)
MSIM_VEC_TYPES(ulong, ulong)
MSIM_VEC_TYPES(bool, bool)
#undef MSIM_VEC_TYPES

static_assert(sizeof(float3) == 16 && alignof(float4) == 16 && sizeof(half4) == 8, "Metal vector layout");
static_assert(sizeof(packed_float3) == 12 && alignof(packed_float4) == 4, "Metal packed vector layout");

// ---------------------------------------------------------------------------------------------
// Math. Scalars of float and half (half computes in float and rounds once), vectors elementwise.
// fast:: and precise:: are the same functions here: the simulator computes in IEEE float; the
// GPU's fast-math error bounds are not modelled.
template <class F, class T, int N, bool P> vec<T, N> map1(const vec<T, N, P>& a, F f) {
    vec<T, N> r;
    for (int i = 0; i < N; ++i) r.v[i] = f(a.v[i]);
    return r;
}

#define MSIM_UNARY(name, expr)                                                                     \
    inline float name(float x) { return expr; }                                                    \
    inline half name(half h) {                                                                     \
        float x = float(h);                                                                        \
        return half(expr);                                                                         \
    }                                                                                              \
    template <class T, int N, bool P, std::enable_if_t<is_float_v<T>, int> = 0>                    \
    vec<T, N> name(const vec<T, N, P>& a) {                                                        \
        return map1(a, [](T t) { return name(t); });                                               \
    }
MSIM_UNARY(exp, __builtin_expf(x))
MSIM_UNARY(exp2, __builtin_exp2f(x))
MSIM_UNARY(exp10, __builtin_powf(10.0f, x))
MSIM_UNARY(log, __builtin_logf(x))
MSIM_UNARY(log2, __builtin_log2f(x))
MSIM_UNARY(sqrt, __builtin_sqrtf(x))
MSIM_UNARY(rsqrt, 1.0f / __builtin_sqrtf(x))
MSIM_UNARY(sin, __builtin_sinf(x))
MSIM_UNARY(cos, __builtin_cosf(x))
MSIM_UNARY(tanh, __builtin_tanhf(x))
MSIM_UNARY(floor, __builtin_floorf(x))
MSIM_UNARY(ceil, __builtin_ceilf(x))
MSIM_UNARY(round, __builtin_roundf(x))
MSIM_UNARY(rint, __builtin_rintf(x))
MSIM_UNARY(trunc, __builtin_truncf(x))
MSIM_UNARY(fabs, __builtin_fabsf(x))
MSIM_UNARY(abs, __builtin_fabsf(x))
MSIM_UNARY(erf, __builtin_erff(x))
#undef MSIM_UNARY

inline int abs(int x) { return x < 0 ? -x : x; }
inline bool isnan(float x) { return x != x; }
inline bool isnan(half x) { return x != x; }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline bool isinf(half x) { return __builtin_isinf(float(x)); }
inline float pow(float x, float y) { return __builtin_powf(x, y); }
inline float powr(float x, float y) { return __builtin_powf(x, y); }
inline float fmod(float x, float y) { return __builtin_fmodf(x, y); }
inline float copysign(float x, float y) { return __builtin_copysignf(x, y); }

// max/min/clamp for every scalar type (fmax/fmin for floats), vectors elementwise.
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> T max(T a, T b) { return a < b ? b : a; }
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> T min(T a, T b) { return b < a ? b : a; }
inline float fmax(float a, float b) { return __builtin_fmaxf(a, b); }
inline float fmin(float a, float b) { return __builtin_fminf(a, b); }
template <class T, int N, bool P, bool Q> vec<T, N> max(const vec<T, N, P>& a, const vec<T, N, Q>& b) {
    vec<T, N> r;
    for (int i = 0; i < N; ++i) r.v[i] = max(a.v[i], b.v[i]);
    return r;
}
template <class T, int N, bool P, bool Q> vec<T, N> min(const vec<T, N, P>& a, const vec<T, N, Q>& b) {
    vec<T, N> r;
    for (int i = 0; i < N; ++i) r.v[i] = min(a.v[i], b.v[i]);
    return r;
}
template <class T, int N, bool P> vec<T, N> max(const vec<T, N, P>& a, T b) { return max(a, vec<T, N>(b)); }
template <class T, int N, bool P> vec<T, N> min(const vec<T, N, P>& a, T b) { return min(a, vec<T, N>(b)); }
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <class T, int N, bool P> vec<T, N> clamp(const vec<T, N, P>& x, T lo, T hi) {
    return map1(x, [&](T t) { return clamp(t, lo, hi); });
}
inline float saturate(float x) { return clamp(x, 0.0f, 1.0f); }

inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline half fma(half a, half b, half c) { return half(__builtin_fmaf(float(a), float(b), float(c))); }
template <class T, int N, bool P, bool Q, bool R>
vec<T, N> fma(const vec<T, N, P>& a, const vec<T, N, Q>& b, const vec<T, N, R>& c) {
    vec<T, N> r;
    for (int i = 0; i < N; ++i) r.v[i] = fma(a.v[i], b.v[i], c.v[i]);
    return r;
}
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> T mix(T x, T y, T a) { return x + (y - x) * a; }

template <class T, int N, bool P, bool Q> T dot(const vec<T, N, P>& a, const vec<T, N, Q>& b) {
    T s = a.v[0] * b.v[0];
    for (int i = 1; i < N; ++i) s += a.v[i] * b.v[i];
    return s;
}
template <class T, int N, bool P> T length(const vec<T, N, P>& a) { return sqrt(dot(a, a)); }

// select(a, b, c): c ? b : a.
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> T select(T a, T b, bool c) { return c ? b : a; }
template <class T, int N, bool P, bool Q>
vec<T, N> select(const vec<T, N, P>& a, const vec<T, N, Q>& b, const vec<bool, N>& c) {
    vec<T, N> r;
    for (int i = 0; i < N; ++i) r.v[i] = c.v[i] ? b.v[i] : a.v[i];
    return r;
}
template <int N, bool P> bool all(const vec<bool, N, P>& c) {
    for (int i = 0; i < N; ++i)
        if (!c.v[i]) return false;
    return true;
}
template <int N, bool P> bool any(const vec<bool, N, P>& c) {
    for (int i = 0; i < N; ++i)
        if (c.v[i]) return true;
    return false;
}

namespace fast {
using metal::cos; using metal::exp; using metal::exp2; using metal::log; using metal::log2;
using metal::rsqrt; using metal::sin; using metal::sqrt; using metal::tanh; using metal::pow;
using metal::powr; using metal::max; using metal::min; using metal::fmax; using metal::fmin;
using metal::abs; using metal::fabs; using metal::floor; using metal::ceil; using metal::clamp;
}  // namespace fast
namespace precise {
using namespace fast;
}  // namespace precise

// Reinterprets bits, like MSL's as_type<T>(x); sizes must match.
template <class To, class From> To as_type(const From& f) {
    static_assert(sizeof(To) == sizeof(From), "as_type: sizes differ");
    To t;
    std::memcpy(&t, &f, sizeof t);
    return t;
}

// ---------------------------------------------------------------------------------------------
// Barriers.
enum class mem_flags : int { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }

inline void threadgroup_barrier(mem_flags, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    msim::threadgroup_barrier(file, line);
}
inline void simdgroup_barrier(mem_flags, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    msim::simd_collective(nullptr, 0, 0, nullptr, nullptr, "simdgroup_barrier", file, line);
}

// ---------------------------------------------------------------------------------------------
// SIMD-group collectives. Every lane of the simdgroup must call the same one at the same line.
namespace simd_detail {
template <class T> T get(const msim::Slot& s) {
    T t;
    std::memcpy(&t, s.v, sizeof t);
    return t;
}
template <class T> void set(msim::Slot& s, const T& t) { std::memcpy(s.v, &t, sizeof t); }
template <class T> T add(T a, T b) { return a + b; }
template <class T> T mx(T a, T b) { return metal::max(a, b); }
template <class T> T mn(T a, T b) { return metal::min(a, b); }

// Reduction in lane order, so results are deterministic run to run.
template <class T, T (*F)(T, T)> void reduce(const msim::Slot* in, msim::Slot* out, int n) {
    T acc = get<T>(in[0]);
    for (int i = 1; i < n; ++i) acc = F(acc, get<T>(in[i]));
    for (int i = 0; i < n; ++i) set(out[i], acc);
}
template <class T> void prefix_exclusive_sum(const msim::Slot* in, msim::Slot* out, int n) {
    T acc = T(0);
    for (int i = 0; i < n; ++i) {
        set(out[i], acc);
        acc = acc + get<T>(in[i]);
    }
}
template <class T> void prefix_inclusive_sum(const msim::Slot* in, msim::Slot* out, int n) {
    T acc = T(0);
    for (int i = 0; i < n; ++i) {
        acc = acc + get<T>(in[i]);
        set(out[i], acc);
    }
}
// Lane i reads lane param(i); a source outside the simdgroup leaves the lane's own value.
template <class T> void shuffle(const msim::Slot* in, msim::Slot* out, int n) {
    for (int i = 0; i < n; ++i) {
        const int64_t s = in[i].param;
        set(out[i], get<T>(in[(s >= 0 && s < n) ? s : i]));
    }
}
template <class T> void shuffle_down(const msim::Slot* in, msim::Slot* out, int n) {
    for (int i = 0; i < n; ++i) {
        const int64_t s = i + in[i].param;
        set(out[i], get<T>(in[s < n ? s : i]));
    }
}
template <class T> void shuffle_up(const msim::Slot* in, msim::Slot* out, int n) {
    for (int i = 0; i < n; ++i) {
        const int64_t s = i - in[i].param;
        set(out[i], get<T>(in[s >= 0 ? s : i]));
    }
}
template <class T> void shuffle_xor(const msim::Slot* in, msim::Slot* out, int n) {
    for (int i = 0; i < n; ++i) {
        const int64_t s = i ^ in[i].param;
        set(out[i], get<T>(in[s < n ? s : i]));
    }
}
template <class T> void broadcast_first(const msim::Slot* in, msim::Slot* out, int n) {
    for (int i = 0; i < n; ++i) set(out[i], get<T>(in[0]));
}
inline void any_op(const msim::Slot* in, msim::Slot* out, int n) {
    bool r = false;
    for (int i = 0; i < n; ++i) r = r || get<bool>(in[i]);
    for (int i = 0; i < n; ++i) set(out[i], r);
}
inline void all_op(const msim::Slot* in, msim::Slot* out, int n) {
    bool r = true;
    for (int i = 0; i < n; ++i) r = r && get<bool>(in[i]);
    for (int i = 0; i < n; ++i) set(out[i], r);
}
template <class T> T run(const T& v, int64_t param, msim::CollectiveFn fn, const char* what, const char* file, int line) {
    static_assert(sizeof(T) <= 16, "simd collective value wider than 16 bytes");
    T r;
    msim::simd_collective(&v, sizeof v, param, &r, fn, what, file, line);
    return r;
}
}  // namespace simd_detail

#define MSIM_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
template <class T> T simd_sum(T v, MSIM_SITE) {
    return simd_detail::run(v, 0, simd_detail::reduce<T, simd_detail::add<T>>, "simd_sum", file, line);
}
template <class T> T simd_max(T v, MSIM_SITE) {
    return simd_detail::run(v, 0, simd_detail::reduce<T, simd_detail::mx<T>>, "simd_max", file, line);
}
template <class T> T simd_min(T v, MSIM_SITE) {
    return simd_detail::run(v, 0, simd_detail::reduce<T, simd_detail::mn<T>>, "simd_min", file, line);
}
template <class T> T simd_prefix_exclusive_sum(T v, MSIM_SITE) {
    return simd_detail::run(v, 0, simd_detail::prefix_exclusive_sum<T>, "simd_prefix_exclusive_sum", file, line);
}
template <class T> T simd_prefix_inclusive_sum(T v, MSIM_SITE) {
    return simd_detail::run(v, 0, simd_detail::prefix_inclusive_sum<T>, "simd_prefix_inclusive_sum", file, line);
}
template <class T> T simd_shuffle(T v, ushort lane, MSIM_SITE) {
    return simd_detail::run(v, lane, simd_detail::shuffle<T>, "simd_shuffle", file, line);
}
template <class T> T simd_broadcast(T v, ushort lane, MSIM_SITE) {
    return simd_detail::run(v, lane, simd_detail::shuffle<T>, "simd_broadcast", file, line);
}
template <class T> T simd_broadcast_first(T v, MSIM_SITE) {
    return simd_detail::run(v, 0, simd_detail::broadcast_first<T>, "simd_broadcast_first", file, line);
}
template <class T> T simd_shuffle_down(T v, ushort delta, MSIM_SITE) {
    return simd_detail::run(v, delta, simd_detail::shuffle_down<T>, "simd_shuffle_down", file, line);
}
template <class T> T simd_shuffle_up(T v, ushort delta, MSIM_SITE) {
    return simd_detail::run(v, delta, simd_detail::shuffle_up<T>, "simd_shuffle_up", file, line);
}
template <class T> T simd_shuffle_xor(T v, ushort mask, MSIM_SITE) {
    return simd_detail::run(v, mask, simd_detail::shuffle_xor<T>, "simd_shuffle_xor", file, line);
}
inline bool simd_any(bool v, MSIM_SITE) { return simd_detail::run(v, 0, simd_detail::any_op, "simd_any", file, line); }
inline bool simd_all(bool v, MSIM_SITE) { return simd_detail::run(v, 0, simd_detail::all_op, "simd_all", file, line); }

// ---------------------------------------------------------------------------------------------
// simdgroup_matrix. Every lane keeps the whole 8x8 matrix (the GPU spreads it over the lanes);
// each operation is a simdgroup rendezvous, so non-uniform use aborts as on the GPU.
template <class T, int Cols, int Rows> struct simdgroup_matrix {
    T e[Rows][Cols];
    simdgroup_matrix() = default;
    // MSL: a diagonal matrix with the value on the diagonal.
    explicit simdgroup_matrix(T diag) {
        for (int r = 0; r < Rows; ++r)
            for (int c = 0; c < Cols; ++c) e[r][c] = r == c ? diag : T(0);
    }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;

template <class T, int Cols, int Rows> simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value) {
    simdgroup_matrix<T, Cols, Rows> m;
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) m.e[r][c] = value;
    return m;
}

inline void simd_uniform(const char* what, const char* file, int line) {
    msim::simd_collective(nullptr, 0, 0, nullptr, nullptr, what, file, line);
}

// Element (r, c) comes from src[(origin.y + r) * elements_per_row + origin.x + c]; with
// transpose, from the same place with r and c swapped. Kernels should offset the pointer and
// leave origin at zero: that is unambiguous on every implementation.
namespace simd_detail {
// Memory-traffic counting: on the GPU the lanes share an 8x8 matrix, each holding two elements
// (Apple does not document which; assumed here: lane l has elements 2l and 2l + 1 in row-major
// order), so each lane counts the load or store of its two elements at the operation's call site,
// while the simulator's own copies of the whole matrix are not counted. Only in the counting
// build of the kernels (MSIM_COUNTING_TU, gen_kernels.py's *.count.sim.cpp).
template <class U> void count_matrix_share(const U* p, int rows, int cols, ulong elements_per_row, ulong2 origin,
                                           bool transpose, bool store, const char* file, int line) {
    const int lane = msim::count_lane();
    if (lane < 0) return;
    const uintptr_t site = (reinterpret_cast<uintptr_t>(file) << 16) ^ uintptr_t(line) ^ (uintptr_t(1) << 63);
    for (int e = 2 * lane; e < 2 * lane + 2 && e < rows * cols; ++e) {
        const ulong r = ulong(e / cols), c = ulong(e % cols);
        const ulong rr = transpose ? c : r, cc = transpose ? r : c;
        msim::count_access(p + (origin.y + rr) * elements_per_row + origin.x + cc, sizeof(U), store, site);
    }
}
}  // namespace simd_detail

template <class T, class U, int C, int R>
void simdgroup_load(simdgroup_matrix<T, C, R>& d, const U* src, ulong elements_per_row = C, ulong2 origin = ulong2(0, 0),
                    bool transpose = false, MSIM_SITE) {
    // Each lane loads its own copy, without a rendezvous: loads are the most frequent matrix
    // operation, and a load in divergent code still trips the multiply or store that uses it.
#ifdef MSIM_COUNTING_TU
    const bool paused = msim::count_pause(true);
#endif
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            const ulong rr = transpose ? c : r, cc = transpose ? r : c;
            d.e[r][c] = T(src[(origin.y + rr) * elements_per_row + origin.x + cc]);
        }
#ifdef MSIM_COUNTING_TU
    msim::count_pause(paused);
    simd_detail::count_matrix_share(src, R, C, elements_per_row, origin, transpose, false, file, line);
#endif
}
// The store and the multiply are done once per simdgroup, by the last lane to arrive, from the
// first lane's operands (the operands are uniform across the simdgroup, as Metal requires); each
// lane hands over a pointer to its own operands through the rendezvous. 32 redundant 8x8x8
// products per operation made prefill matmuls ~10x slower.
namespace simd_detail {
template <class T, class U, int C, int R> struct store_args {
    const simdgroup_matrix<T, C, R>* a;
    U* dst;
    ulong elements_per_row;
    ulong2 origin;
    bool transpose;
};
template <class T, class U, int C, int R> void store_op(const msim::Slot* in, msim::Slot*, int) {
    const auto* s = get<const store_args<T, U, C, R>*>(in[0]);
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            const ulong rr = s->transpose ? c : r, cc = s->transpose ? r : c;
            s->dst[(s->origin.y + rr) * s->elements_per_row + s->origin.x + cc] = U(s->a->e[r][c]);
        }
}
template <class T, class A, class B, class C2, int N> struct mma_args {
    simdgroup_matrix<T, N, N>* d;
    const simdgroup_matrix<A, N, N>* a;
    const simdgroup_matrix<B, N, N>* b;
    const simdgroup_matrix<C2, N, N>* c;
};
template <class T, class A, class B, class C2, int N> void mma_op(const msim::Slot* in, msim::Slot*, int n) {
    const auto* m = get<const mma_args<T, A, B, C2, N>*>(in[0]);
    simdgroup_matrix<T, N, N> r;
    for (int i = 0; i < N; ++i) {
        for (int j = 0; j < N; ++j) r.e[i][j] = T(m->c->e[i][j]);
        // k outside j so the compiler vectorizes over j; each element still sums in k order.
        for (int k = 0; k < N; ++k) {
            const T aik = T(m->a->e[i][k]);
            for (int j = 0; j < N; ++j) r.e[i][j] += aik * T(m->b->e[k][j]);
        }
    }
    for (int l = 0; l < n; ++l) *get<const mma_args<T, A, B, C2, N>*>(in[l])->d = r;
}
}  // namespace simd_detail

template <class T, class U, int C, int R>
void simdgroup_store(const simdgroup_matrix<T, C, R>& a, U* dst, ulong elements_per_row = C, ulong2 origin = ulong2(0, 0),
                     bool transpose = false, MSIM_SITE) {
    const simd_detail::store_args<T, U, C, R> args{&a, dst, elements_per_row, origin, transpose};
    const void* p = &args;
#ifdef MSIM_COUNTING_TU
    simd_detail::count_matrix_share<U>(dst, R, C, elements_per_row, origin, transpose, true, file, line);
    const bool paused = msim::count_pause(true);  // the last lane stores for all
#endif
    msim::simd_collective(&p, sizeof p, 0, nullptr, simd_detail::store_op<T, U, C, R>, "simdgroup_store", file, line);
#ifdef MSIM_COUNTING_TU
    msim::count_pause(paused);
#endif
}
// d = a * b + c, accumulating in the destination's type.
template <class T, class A, class B, class C2, int N>
void simdgroup_multiply_accumulate(simdgroup_matrix<T, N, N>& d, const simdgroup_matrix<A, N, N>& a,
                                   const simdgroup_matrix<B, N, N>& b, const simdgroup_matrix<C2, N, N>& c, MSIM_SITE) {
    const simd_detail::mma_args<T, A, B, C2, N> args{&d, &a, &b, &c};
    const void* p = &args;
    msim::simd_collective(&p, sizeof p, 0, nullptr, simd_detail::mma_op<T, A, B, C2, N>,
                          "simdgroup_multiply_accumulate", file, line);
}
template <class T, class A, class B, int N>
void simdgroup_multiply(simdgroup_matrix<T, N, N>& d, const simdgroup_matrix<A, N, N>& a,
                        const simdgroup_matrix<B, N, N>& b, MSIM_SITE) {
    const simdgroup_matrix<T, N, N> zero(T(0));
    simdgroup_multiply_accumulate(d, a, b, zero, file, line);
}

// ---------------------------------------------------------------------------------------------
// Atomics. Device memory is shared by threadgroups on different worker threads, so these are
// real atomic operations; memory_order is accepted and treated as relaxed-or-stronger.
enum memory_order { memory_order_relaxed, memory_order_acquire, memory_order_release, memory_order_acq_rel, memory_order_seq_cst };

template <class T> struct atomic {
    T value;
};
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
typedef atomic<bool> atomic_bool;

template <class T> void atomic_store_explicit(volatile atomic<T>* a, T v, memory_order) {
    __atomic_store(&a->value, &v, __ATOMIC_SEQ_CST);
}
template <class T> T atomic_load_explicit(volatile atomic<T>* a, memory_order) {
    T r;
    __atomic_load(&a->value, &r, __ATOMIC_SEQ_CST);
    return r;
}
template <class T> T atomic_exchange_explicit(volatile atomic<T>* a, T v, memory_order) {
    T r;
    __atomic_exchange(&a->value, &v, &r, __ATOMIC_SEQ_CST);
    return r;
}
template <class T>
bool atomic_compare_exchange_weak_explicit(volatile atomic<T>* a, T* expected, T desired, memory_order, memory_order) {
    return __atomic_compare_exchange(&a->value, expected, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
// Read-modify-write through compare-exchange: one code path for int, uint and float.
template <class T, class F> T atomic_rmw(volatile atomic<T>* a, F f) {
    T old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, T(f(old)), memory_order_relaxed, memory_order_relaxed)) {
    }
    return old;
}
template <class T> T atomic_fetch_add_explicit(volatile atomic<T>* a, T v, memory_order) {
    return atomic_rmw(a, [&](T o) { return o + v; });
}
template <class T> T atomic_fetch_sub_explicit(volatile atomic<T>* a, T v, memory_order) {
    return atomic_rmw(a, [&](T o) { return o - v; });
}
template <class T> T atomic_fetch_max_explicit(volatile atomic<T>* a, T v, memory_order) {
    return atomic_rmw(a, [&](T o) { return max(o, v); });
}
template <class T> T atomic_fetch_min_explicit(volatile atomic<T>* a, T v, memory_order) {
    return atomic_rmw(a, [&](T o) { return min(o, v); });
}
template <class T> T atomic_fetch_or_explicit(volatile atomic<T>* a, T v, memory_order) {
    return atomic_rmw(a, [&](T o) { return o | v; });
}
template <class T> T atomic_fetch_and_explicit(volatile atomic<T>* a, T v, memory_order) {
    return atomic_rmw(a, [&](T o) { return o & v; });
}

// ---------------------------------------------------------------------------------------------
// Function constants: gen_kernels.py rewrites
//     constant T name [[function_constant(i)]];
// into a function_constant_t<T, i> object that reads the pipeline's value when converted.
// Reading a constant the pipeline was not given aborts (Metal refuses such a pipeline).
template <class T, int I> struct function_constant_t {
    const char* name;  // declaration, for the message when the pipeline lacks the value
    const char* file;
    int line;
    operator T() const {
        if constexpr (std::is_floating_point<T>::value)
            return T(msim::fc_float(I, name, file, line));
        else
            return T(msim::fc_int(I, name, file, line));
    }
};
template <class T, int I> bool is_function_constant_defined(function_constant_t<T, I>) { return msim::fc_defined(I); }

#undef MSIM_SITE
}  // inline namespace MSIM_BUILD
}  // namespace metal

// ---------------------------------------------------------------------------------------------
// Glue used by generated code.
namespace msim {
inline namespace MSIM_BUILD {
// `threadgroup T x[N];` inside a kernel becomes `auto& x = msim::tg_var<T[N]>(__FILE__, __LINE__);`.
template <class T> T& tg_var(const char* file, int line) {
    return *static_cast<T*>(tg_decl(sizeof(T), alignof(T), file, line));
}

// Kernel parameter proxies: convert to whatever the parameter's declared type is, so the
// launcher never has to spell out template-dependent types.
struct BufPtr {
    void* p;
    template <class T> operator T*() const { return static_cast<T*>(p); }
};
struct BufRef {
    void* p;
    template <class T> operator T&() const { return *static_cast<T*>(p); }
};
struct Builtin {
    const uint32_t* v;  // three components
    template <class T> operator T() const {
        if constexpr (metal::is_vec<T>::value) {
            T r;
            for (int i = 0; i < T::size; ++i) r.v[i] = typename T::value_type(v[i]);
            return r;
        } else {
            return T(v[0]);
        }
    }
};
}  // inline namespace MSIM_BUILD
}  // namespace msim

// The MSL address-space qualifiers and `kernel` carry no meaning on the CPU. Defined last so
// nothing above is affected; generated code includes no standard headers after this point.
#define device
#define constant
#define threadgroup
#define thread
#define kernel
