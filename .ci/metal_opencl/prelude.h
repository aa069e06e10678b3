// Prelude for type-checking Metal kernels with clang in C++ for OpenCL mode
// (.ci/check_metal_address_spaces.py). The point is address spaces: MSL's device, threadgroup,
// thread and constant map onto OpenCL's __global, __local, __private and __constant, which clang
// keeps apart, so a device pointer passed where threadgroup memory is expected (or the reverse)
// is an error here although a plain C++ compile (the simulator) accepts it.
//
// Only declarations: the check runs with -fsyntax-only and never generates code. Functions take
// generic (unqualified) pointers where MSL accepts any address space.
#pragma once

#pragma OPENCL EXTENSION cl_khr_fp16 : enable

#define device __global
#define threadgroup __local
#define thread __private
#define constant __constant
#define kernel

#define __METAL_VERSION__ 300
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define FLT_MAX 3.402823466e+38f

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long int64_t;
typedef unsigned long uint64_t;
typedef unsigned long size_t;

namespace metal {

template <class T, int N> struct vec;
template <class T> struct vec<T, 2> {
    T x, y;
    vec() = default;
    vec(T s);
    vec(T a, T b);
    template <class U> explicit vec(vec<U, 2> o);
    T& operator[](int i);
    vec<T, 2> xy() const;
};
template <class T> struct vec<T, 3> {
    T x, y, z;
    vec() = default;
    vec(T s);
    vec(T a, T b, T c);
    vec(vec<T, 2> a, T b);
    template <class U> explicit vec(vec<U, 3> o);
    T& operator[](int i);
    vec<T, 2> xy() const;
    vec<T, 2> yz() const;
};
template <class T> struct vec<T, 4> {
    T x, y, z, w;
    vec() = default;
    vec(T s);
    vec(T a, T b, T c, T d);
    vec(vec<T, 2> a, vec<T, 2> b);
    vec(vec<T, 3> a, T b);
    template <class U> explicit vec(vec<U, 4> o);
    T& operator[](int i);
    vec<T, 2> xy() const;
    vec<T, 2> zw() const;
    vec<T, 3> xyz() const;
};

#define MSIM_BINOP(op)                                                          \
    template <class T, int N> vec<T, N> operator op(vec<T, N> a, vec<T, N> b); \
    template <class T, int N> vec<T, N> operator op(vec<T, N> a, T b);         \
    template <class T, int N> vec<T, N> operator op(T a, vec<T, N> b);         \
    template <class T, int N, class B> vec<T, N>& operator op##=(vec<T, N>& a, B b);
MSIM_BINOP(+)
MSIM_BINOP(-)
MSIM_BINOP(*)
MSIM_BINOP(/)
#undef MSIM_BINOP
template <class T, int N> vec<T, N> operator-(vec<T, N> a);
template <class T, int N> vec<bool, N> operator<(vec<T, N> a, vec<T, N> b);
template <class T, int N> vec<bool, N> operator<(vec<T, N> a, T b);

#define MSIM_VEC(T, name)           \
    typedef vec<T, 2> name##2;       \
    typedef vec<T, 3> name##3;       \
    typedef vec<T, 4> name##4;       \
    typedef vec<T, 2> packed_##name##2; \
    typedef vec<T, 3> packed_##name##3; \
    typedef vec<T, 4> packed_##name##4;
MSIM_VEC(float, float)
MSIM_VEC(half, half)
MSIM_VEC(int, int)
MSIM_VEC(uint, uint)
MSIM_VEC(short, short)
MSIM_VEC(ushort, ushort)
MSIM_VEC(char, char)
MSIM_VEC(uchar, uchar)
MSIM_VEC(ulong, ulong)
MSIM_VEC(bool, bool)
#undef MSIM_VEC

// Math: scalars and vectors.
#define MSIM_UNARY(name) \
    float name(float); \
    half name(half);   \
    template <class T, int N> vec<T, N> name(vec<T, N>);
MSIM_UNARY(exp) MSIM_UNARY(exp2) MSIM_UNARY(log) MSIM_UNARY(log2) MSIM_UNARY(sqrt) MSIM_UNARY(rsqrt)
MSIM_UNARY(sin) MSIM_UNARY(cos) MSIM_UNARY(tanh) MSIM_UNARY(floor) MSIM_UNARY(ceil) MSIM_UNARY(round)
MSIM_UNARY(trunc) MSIM_UNARY(fabs) MSIM_UNARY(abs) MSIM_UNARY(erf)
#undef MSIM_UNARY
int abs(int);
template <class T> T max(T a, T b);
template <class T> T min(T a, T b);
template <class T> T clamp(T x, T lo, T hi);
template <class T, int N> vec<T, N> max(vec<T, N> a, vec<T, N> b);
template <class T, int N> vec<T, N> min(vec<T, N> a, vec<T, N> b);
template <class T, int N> vec<T, N> max(vec<T, N> a, T b);
template <class T, int N> vec<T, N> min(vec<T, N> a, T b);
float fma(float a, float b, float c);
template <class T, int N> vec<T, N> fma(vec<T, N> a, vec<T, N> b, vec<T, N> c);
template <class T, int N> T dot(vec<T, N> a, vec<T, N> b);
template <class T> T select(T a, T b, bool c);
template <class T, int N> vec<T, N> select(vec<T, N> a, vec<T, N> b, vec<bool, N> c);
bool isnan(float);
bool isinf(float);
float pow(float, float);
template <class To, class From> To as_type(From f);
namespace fast { using metal::exp; using metal::exp2; using metal::rsqrt; using metal::sqrt; using metal::tanh; using metal::sin; using metal::cos; }
namespace precise { using namespace fast; }

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
mem_flags operator|(mem_flags a, mem_flags b);
void threadgroup_barrier(mem_flags);
void simdgroup_barrier(mem_flags);

template <class T> T simd_sum(T);
template <class T> T simd_max(T);
template <class T> T simd_min(T);
template <class T> T simd_prefix_exclusive_sum(T);
template <class T> T simd_prefix_inclusive_sum(T);
template <class T> T simd_shuffle(T, ushort);
template <class T> T simd_shuffle_down(T, ushort);
template <class T> T simd_shuffle_up(T, ushort);
template <class T> T simd_shuffle_xor(T, ushort);
template <class T> T simd_broadcast(T, ushort);
template <class T> T simd_broadcast_first(T);
bool simd_any(bool);
bool simd_all(bool);

// simdgroup_matrix: MSL loads and stores from device or threadgroup memory.
template <class T, int C, int R> struct simdgroup_matrix {
    simdgroup_matrix() = default;
    explicit simdgroup_matrix(T diag);
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
template <class T, int C, int R> simdgroup_matrix<T, C, R> make_filled_simdgroup_matrix(T value);
template <class T, int C, int R>
void simdgroup_load(simdgroup_matrix<T, C, R>& d, const __local T* src, ulong elements_per_row = C,
                    ulong2 origin = ulong2(0), bool transpose = false);
template <class T, int C, int R>
void simdgroup_load(simdgroup_matrix<T, C, R>& d, const __global T* src, ulong elements_per_row = C,
                    ulong2 origin = ulong2(0), bool transpose = false);
template <class T, int C, int R>
void simdgroup_store(simdgroup_matrix<T, C, R> a, __local T* dst, ulong elements_per_row = C,
                     ulong2 origin = ulong2(0), bool transpose = false);
template <class T, int C, int R>
void simdgroup_store(simdgroup_matrix<T, C, R> a, __global T* dst, ulong elements_per_row = C,
                     ulong2 origin = ulong2(0), bool transpose = false);
template <class T, class A, class B, class C, int N>
void simdgroup_multiply_accumulate(simdgroup_matrix<T, N, N>& d, simdgroup_matrix<A, N, N> a,
                                   simdgroup_matrix<B, N, N> b, simdgroup_matrix<C, N, N> c);

// Atomics: MSL's atomic functions take device or threadgroup atomics (generic pointer here).
enum memory_order { memory_order_relaxed };
template <class T> struct atomic { T value; };
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
template <class T> void atomic_store_explicit(volatile atomic<T>* a, T v, memory_order);
template <class T> T atomic_load_explicit(volatile atomic<T>* a, memory_order);
template <class T> T atomic_fetch_add_explicit(volatile atomic<T>* a, T v, memory_order);
template <class T> T atomic_fetch_max_explicit(volatile atomic<T>* a, T v, memory_order);
template <class T> T atomic_fetch_min_explicit(volatile atomic<T>* a, T v, memory_order);

template <class T> bool is_function_constant_defined(T);
}  // namespace metal

// `threadgroup T x[N];` in a kernel body becomes `auto& x = msim::tg_var<T[N]>(...)`, as in the
// simulator: C++ for OpenCL forbids __local declarations outside kernels, and templated kernels
// are not OpenCL kernels, so the declaration becomes a reference into the local address space.
namespace msim {
template <class T, class... Site> __local T& tg_var(Site...);
}
