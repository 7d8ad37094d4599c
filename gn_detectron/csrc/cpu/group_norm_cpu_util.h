// Building blocks of the CPU Group Normalization kernels (group_norm_cpu.cpp): explicit SIMD
// reductions with a fixed summation order, dtype conversion of small blocks, and the merge of
// partial moments. Everything here is deterministic: the result of every function depends on its
// arguments only (never on threads, scheduling or pointer alignment).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GN_CPU_X86 1
#else
#define GN_CPU_X86 0
#endif

namespace gn_detectron {
namespace cpu {

// ---------------------------------------------------------------------------------------------
// SIMD through GCC/Clang vector extensions: 256-bit vectors when AVX is enabled (the build uses
// -mavx2 -mfma where the machine has them), 128-bit otherwise. Reductions use four vector
// accumulators, combined in a fixed tree.

#if defined(__AVX__)
constexpr int64_t kVecBytes = 32;
#else
constexpr int64_t kVecBytes = 16;
#endif
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
  static constexpr int64_t W = kVecBytes / 4;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
  static constexpr int64_t W = kVecBytes / 8;
};
template <typename T>
using V = typename Vec<T>::type;

template <typename T>
inline V<T> loadu(const T* p) {
  V<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline V<T> splat(T s) {
  V<T> v;
  for (int64_t k = 0; k < Vec<T>::W; ++k) v[k] = s;
  return v;
}

template <typename T>
inline T hsum(V<T> v) {
  constexpr int64_t W = Vec<T>::W;
  T r[W];
  std::memcpy(r, &v, sizeof(v));
  for (int64_t w = W / 2; w >= 1; w /= 2)
    for (int64_t k = 0; k < w; ++k) r[k] += r[k + w];
  return r[0];
}

// a*b + c. Explicit, so that every element gets the same rounding whichever path (vector body,
// scalar peel or tail, auto-vectorized or not) computes it: outputs must not depend on pointer
// alignment. With FMA hardware it is one fused operation everywhere, without it mul then add.
#if defined(__FMA__)
inline float fmadd(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline double fmadd(double a, double b, double c) { return __builtin_fma(a, b, c); }
inline V<float> fmadd(V<float> a, V<float> b, V<float> c) {
  return (V<float>)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
inline V<double> fmadd(V<double> a, V<double> b, V<double> c) {
  return (V<double>)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
}
#else
template <typename U>
inline U fmadd(U a, U b, U c) {
  return a * b + c;
}
#endif

// sum_i x[i]
template <typename T>
inline T reduce_sum(const T* x, int64_t n) {
  using VT = V<T>;
  constexpr int64_t W = Vec<T>::W;
  VT a0{}, a1{}, a2{}, a3{};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    a0 += loadu(x + i);
    a1 += loadu(x + i + W);
    a2 += loadu(x + i + 2 * W);
    a3 += loadu(x + i + 3 * W);
  }
  for (; i + W <= n; i += W) a0 += loadu(x + i);
  T t = 0;
  for (; i < n; ++i) t += x[i];
  return hsum<T>((a0 + a1) + (a2 + a3)) + t;
}

// d = sum_i (x[i] - mu), q = sum_i (x[i] - mu)^2
template <typename T>
inline void reduce_dev(const T* x, int64_t n, T mu, T& d, T& q) {
  using VT = V<T>;
  constexpr int64_t W = Vec<T>::W;
  const VT m = splat<T>(mu);
  VT d0{}, d1{}, d2{}, d3{}, q0{}, q1{}, q2{}, q3{};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    const VT v0 = loadu(x + i) - m;
    const VT v1 = loadu(x + i + W) - m;
    const VT v2 = loadu(x + i + 2 * W) - m;
    const VT v3 = loadu(x + i + 3 * W) - m;
    d0 += v0;
    d1 += v1;
    d2 += v2;
    d3 += v3;
    q0 = fmadd(v0, v0, q0);
    q1 = fmadd(v1, v1, q1);
    q2 = fmadd(v2, v2, q2);
    q3 = fmadd(v3, v3, q3);
  }
  for (; i + W <= n; i += W) {
    const VT v0 = loadu(x + i) - m;
    d0 += v0;
    q0 = fmadd(v0, v0, q0);
  }
  T td = 0, tq = 0;
  for (; i < n; ++i) {
    const T v = x[i] - mu;
    td += v;
    tq = fmadd(v, v, tq);
  }
  d = hsum<T>((d0 + d1) + (d2 + d3)) + td;
  q = hsum<T>((q0 + q1) + (q2 + q3)) + tq;
}

// The fused ReLU's backward passes dy where the stored output is positive, as torch.relu's
// backward does. The output is z = (x - mu)*sc + b computed in T and rounded to scalar_t, so it is
// positive exactly where z > relu_threshold<scalar_t>(): 0 for float and double; for the 16-bit
// types the largest z that rounds (to nearest even) to zero, half the smallest subnormal.
template <typename scalar_t>
constexpr at::opmath_type<scalar_t> relu_threshold() {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) return 0x1p-25f;
  else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) return 0x1p-134f;
  else return at::opmath_type<scalar_t>(0);
}

// Backward sums of one channel row: ds = sum g*(x - mu), db = sum g, with
// g = dy, or with RELU g = dy where z = (x - mu)*sc + b > thr and 0 elsewhere (see relu_threshold).
template <typename T, bool RELU>
inline void reduce_bwd(const T* dy, const T* x, int64_t n, T mu, T sc, T b, T thr, T& ds, T& db) {
  using VT = V<T>;
  constexpr int64_t W = Vec<T>::W;
  const VT m = splat<T>(mu);
  const VT s = splat<T>(sc);
  const VT bb = splat<T>(b);
  const VT zero{};
  const VT lo = splat<T>(thr);
  VT s0{}, s1{}, s2{}, s3{}, b0{}, b1{}, b2{}, b3{};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    const VT x0 = loadu(x + i) - m;
    const VT x1 = loadu(x + i + W) - m;
    const VT x2 = loadu(x + i + 2 * W) - m;
    const VT x3 = loadu(x + i + 3 * W) - m;
    VT g0 = loadu(dy + i);
    VT g1 = loadu(dy + i + W);
    VT g2 = loadu(dy + i + 2 * W);
    VT g3 = loadu(dy + i + 3 * W);
    if constexpr (RELU) {
      g0 = (fmadd(x0, s, bb) > lo) ? g0 : zero;
      g1 = (fmadd(x1, s, bb) > lo) ? g1 : zero;
      g2 = (fmadd(x2, s, bb) > lo) ? g2 : zero;
      g3 = (fmadd(x3, s, bb) > lo) ? g3 : zero;
    }
    s0 = fmadd(g0, x0, s0);
    s1 = fmadd(g1, x1, s1);
    s2 = fmadd(g2, x2, s2);
    s3 = fmadd(g3, x3, s3);
    b0 += g0;
    b1 += g1;
    b2 += g2;
    b3 += g3;
  }
  for (; i + W <= n; i += W) {
    const VT x0 = loadu(x + i) - m;
    VT g0 = loadu(dy + i);
    if constexpr (RELU) g0 = (fmadd(x0, s, bb) > lo) ? g0 : zero;
    s0 = fmadd(g0, x0, s0);
    b0 += g0;
  }
  T ts = 0, tb = 0;
  for (; i < n; ++i) {
    const T xc = x[i] - mu;
    T g = dy[i];
    if constexpr (RELU) g = (fmadd(xc, sc, b) > thr) ? g : T(0);
    ts = fmadd(g, xc, ts);
    tb += g;
  }
  ds = hsum<T>((s0 + s1) + (s2 + s3)) + ts;
  db = hsum<T>((b0 + b1) + (b2 + b3)) + tb;
}

// y = (x - mu)*sc + b, then max(., 0) with RELU.
template <typename T, bool RELU>
inline void apply_row(const T* __restrict x, T* __restrict y, int64_t n, T mu, T sc, T b) {
  for (int64_t i = 0; i < n; ++i) {
    T z = fmadd(x[i] - mu, sc, b);
    if constexpr (RELU) z = z < T(0) ? T(0) : z;
    y[i] = z;
  }
}

// dx = sc*g + bx*(x - mu) + c1, g as in reduce_bwd.
template <typename T, bool RELU>
inline void dx_row(const T* __restrict dy, const T* __restrict x, T* __restrict dx, int64_t n,
                   T mu, T sc, T b, T thr, T bx, T c1) {
  for (int64_t i = 0; i < n; ++i) {
    const T xc = x[i] - mu;
    T g = dy[i];
    if constexpr (RELU) g = (fmadd(xc, sc, b) > thr) ? g : T(0);
    dx[i] = fmadd(sc, g, fmadd(bx, xc, c1));
  }
}

// ---------------------------------------------------------------------------------------------
// Non-temporal (streaming) stores for outputs much larger than the caches: they skip the read
// for ownership of the destination lines, which is a third of the memory traffic of a forward.
// Callers compute into a cache-resident buffer (or straight into aligned rows) with the same
// per-element operations either way, so the values do not depend on the path.

#if defined(__AVX__)
#define GN_CPU_HAVE_STREAM 1
inline void stream_store(float* p, V<float> v) { _mm256_stream_ps(p, (__m256)v); }
inline void stream_store(double* p, V<double> v) { _mm256_stream_pd(p, (__m256d)v); }
inline void stream_fence() { _mm_sfence(); }
#else
#define GN_CPU_HAVE_STREAM 0
inline void stream_fence() {}
#endif

// Whether the pages of [p, p + bytes) are already backed by memory (sampled: first, middle and
// last whole page). A freshly mapped output is not: the kernel zeroes each page through the cache
// when it is first touched, and streaming stores into those cached lines are slower than plain
// ones. Only the kind of store depends on this, never a value.
inline bool pages_resident(const void* p, int64_t bytes) {
#if defined(__linux__)
  static const uintptr_t ps = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), e = a + uintptr_t(bytes);
  const uintptr_t first = (a + ps - 1) & ~(ps - 1);
  if (e < first + ps) return true;
  const uintptr_t last = (e & ~(ps - 1)) - ps;
  const uintptr_t mid = first + (((last - first) / 2) & ~(ps - 1));
  for (const uintptr_t q : {first, mid, last}) {
    unsigned char v = 0;
    if (mincore(reinterpret_cast<void*>(q), ps, &v) != 0 || !(v & 1)) return false;
  }
  return true;
#else
  (void)p;
  (void)bytes;
  return false;
#endif
}

// Transparent huge pages for an output about to be written for the first time (Linux, THP mode
// "madvise" or "always"). A freshly mapped output otherwise takes one page fault per 4 KiB page on
// first touch, which for outputs of tens of MiB costs several times the kernel itself (a fresh
// 137 MB output: about 64 ms of faults against 8 ms of writing, on the development machine). Only
// outputs of 32 MiB or more are advised: glibc maps every allocation that large afresh and unmaps
// it when freed, so the advice never outlives the tensor, whereas smaller blocks come from a heap
// whose memory is mostly reused (already faulted in), and advising it would leave huge pages
// behind in memory other tensors reuse (higher resident memory, measured). Only the 2 MiB-aligned
// interior of the output is advised, so no memory is added; it is a hint: its errors are ignored
// and no value depends on it. GN_DETECTRON_CPU_HUGEPAGES=0 turns it off.
constexpr int64_t kHugeAdviseBytes = int64_t(32) << 20;

inline void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* e = std::getenv("GN_DETECTRON_CPU_HUGEPAGES");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!enabled || p == nullptr || bytes < kHugeAdviseBytes) return;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~(kHuge - 1);
  if (e > a) (void)madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// Elements to handle one by one before `p` is 32-byte aligned (n when it never will be).
template <typename T>
inline int64_t peel_to_align(const T* p, int64_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % sizeof(T) != 0) return n;
  return std::min<int64_t>(n, int64_t(((32 - (a & 31)) & 31) / sizeof(T)));
}

// dst[0, n) = src[0, n) with streaming stores where possible.
template <typename T>
inline void stream_copy(T* dst, const T* src, int64_t n) {
#if GN_CPU_HAVE_STREAM
  constexpr int64_t W = Vec<T>::W;
  int64_t i = peel_to_align(dst, n);
  for (int64_t k = 0; k < i; ++k) dst[k] = src[k];
  for (; i + W <= n; i += W) stream_store(dst + i, loadu(src + i));
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, n * sizeof(T));
#endif
}

// ---------------------------------------------------------------------------------------------
// Partial moments (count, mean, sum of squared deviations) merged in double with Chan et al.'s
// formula. Merging is done in a fixed order by the callers.

struct Moments {
  double n = 0, mean = 0, m2 = 0;
};

inline void merge(Moments& a, const Moments& b) {
  if (b.n == 0) return;
  if (a.n == 0) {
    a = b;
    return;
  }
  const double n = a.n + b.n;
  const double d = b.mean - a.mean;
  const double f = b.n / n;
  a.mean += d * f;
  a.m2 += b.m2 + d * d * a.n * f;
  a.n = n;
}

// Corrected two-pass moments of a block (the block is cache resident, so both passes are cheap).
template <typename T>
inline Moments block_moments(const T* x, int64_t n) {
  const T mu = reduce_sum(x, n) / T(n);
  T d, q;
  reduce_dev(x, n, mu, d, q);
  Moments r;
  r.n = double(n);
  const double dd = double(d);
  r.mean = double(mu) + dd / r.n;
  r.m2 = std::max(double(q) - dd * dd / r.n, 0.0);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Conversion of blocks between the storage type and float (exact round-to-nearest-even, the same
// as c10's scalar conversions, whichever path an element takes).

#if GN_CPU_X86 && (defined(__GNUC__) || defined(__clang__))
inline bool cpu_has_f16c() {
  static const bool v = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return v;
}
__attribute__((target("avx,f16c"))) inline void half_to_float_f16c(const c10::Half* s, float* d,
                                                                   int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) d[i] = static_cast<float>(s[i]);
}
__attribute__((target("avx,f16c"))) inline void float_to_half_f16c(const float* s, c10::Half* d,
                                                                   int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), h);
  }
  for (; i < n; ++i) d[i] = c10::Half(s[i]);
}
#define GN_CPU_HAVE_F16C_PATH 1
#else
#define GN_CPU_HAVE_F16C_PATH 0
#endif

inline void to_float(const c10::Half* s, float* d, int64_t n) {
#if GN_CPU_HAVE_F16C_PATH
  if (cpu_has_f16c()) return half_to_float_f16c(s, d, n);
#endif
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
}

inline void from_float(const float* s, c10::Half* d, int64_t n) {
#if GN_CPU_HAVE_F16C_PATH
  if (cpu_has_f16c()) return float_to_half_f16c(s, d, n);
#endif
  for (int64_t i = 0; i < n; ++i) d[i] = c10::Half(s[i]);
}

inline void to_float(const c10::BFloat16* s, float* d, int64_t n) {
  const uint16_t* u = reinterpret_cast<const uint16_t*>(s);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = uint32_t(u[i]) << 16;
    float f;
    std::memcpy(&f, &b, sizeof(f));
    d[i] = f;
  }
}

inline void from_float(const float* s, c10::BFloat16* d, int64_t n) {
  uint16_t* u = reinterpret_cast<uint16_t*>(d);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, s + i, sizeof(b));
    const uint32_t r = (b + (((b >> 16) & 1u) + 0x7fffu)) >> 16;
    u[i] = s[i] != s[i] ? uint16_t(0x7fc0) : uint16_t(r);
  }
}

// A block of `n` storage elements as T: the storage itself when it already is T, else converted
// into `buf`.
template <typename scalar_t, typename T>
inline const T* load_block(const scalar_t* src, T* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    (void)buf;
    (void)n;
    return src;
  } else {
    to_float(src, buf, n);
    return buf;
  }
}

// Where to compute an output block of T: the output itself when it is T, else `buf` (then
// store_block converts it).
template <typename scalar_t, typename T>
inline T* out_block(scalar_t* dst, T* buf) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    (void)buf;
    return dst;
  } else {
    (void)dst;
    return buf;
  }
}

template <typename scalar_t, typename T>
inline void store_block(scalar_t* dst, const T* buf, int64_t n) {
  if constexpr (!std::is_same_v<scalar_t, T>) from_float(buf, dst, n);
  else {
    (void)dst;
    (void)buf;
    (void)n;
  }
}

}  // namespace cpu
}  // namespace gn_detectron
