// CUDA kernels of the gn_detectron Group Normalization operator (A100 sm_80, H100/H200 sm_90).
//
// The front end (group_norm.cpp) hands us a non-empty problem in one of two layouts:
//   NCHW          x is (N, C, HxW) contiguous: group (n,g) is ONE contiguous run of m = D*HxW
//                 elements starting at (n*G+g)*m (D = C/G channels per group).
//   channels_last x is (N, HxW, C) contiguous: group (n,g) is D contiguous channels [g*D, g*D+D)
//                 repeated every C elements over the HxW positions of sample n.
//
// PATHS AND HEURISTICS ------------------------------------------------------------------------
// GN_DETECTRON_CUDA_PATH (read once): auto (default) | split | onepass.
//
// 1. One-pass path (small groups): one kernel, a group is owned by WPG in {1,2,4,8} warps of a
//    256-thread block (so a block holds 8/WPG groups). The group is loaded once into registers;
//    mean and variance are computed exactly (two passes over the registers: sum, then the sum of
//    squared deviations), then y is written (forward) or dx is written (backward). One read of
//    x (and dy) and one write. The group "fits" when m <= WPG*32*E with WPG <= 8, E being the
//    elements a thread holds: forward 128 bytes of registers when 16-byte vectors are usable
//    (E = 32 fp32, 64 fp16/bf16, 16 fp64) and 32 scalars otherwise (16 fp64); backward E = 16
//    (8 fp64), since dy and x are both held and the per-channel sums for dgamma/dbeta pass
//    through shared memory (2 x 256*E acc values = 32 KB). Smallest such WPG is used.
//    'auto' uses the one-pass path whenever the group fits (box head (512,256,7,7): m=392,
//    mask head (N,256,14,14): m=1568, (N,256,28,28) fp16 forward: m=6272 all fit): a single
//    launch beats the 3-4 launches of the split path for these sizes, and with 8/WPG groups per
//    block there are N*G*WPG/8 blocks. 'onepass' makes the same choice (it falls back to
//    split when the group does not fit). 'split' never uses it.
//
// 2. Split path (general, any size), forward:
//      a) stats:  NCHW: each group is cut into S chunks (S chosen so that N*G*S ~ 8 blocks per
//                 SM); a block computes a Welford/Chan partial (mean, M2) of its chunk.
//                 channels_last: a block covers (sample n, RPC consecutive positions, a tile of
//                 up to 64 channel vectors); each thread keeps per-channel Welford states for
//                 its VW channels; the block combines them per channel (Chan, fixed tree) and
//                 writes one partial per (n, c, row-chunk).
//      b) finalize: one block per (n,g) combines the group's partials in a fixed order (Chan),
//                 writes mean/rstd and per-(n,c) coefficients (mean, rstd*gamma, beta).
//      c) apply:  NCHW: flat elementwise kernel (16-byte vectors, 4 in flight per thread);
//                 channels_last: tiled like (a) so every thread keeps its channels'
//                 coefficients in registers. Work items run in reverse memory order so the
//                 first blocks re-read what (a) read last (still in L2).
//    backward:
//      a) per-(n,c) sums ds_c = sum g*(x-mean) (centred: more accurate than sum g*x - mean*db,
//         identical in exact arithmetic) and db = sum g, as partials: NCHW one warp per
//         (row n*C+c, chunk of HxW); channels_last the tiled block of forward (a).
//      b) finalize: one block per (n,g): per-channel totals in fixed order, group sums,
//         per-(n,c) dx coefficients, and per-(n,c) dgamma/dbeta contributions.
//      c) dx: elementwise (NCHW flat / channels_last tiled).
//      d) dgamma/dbeta: column sums over n of the per-(n,c) contributions, in a fixed order.
//
// DETERMINISM: no floating-point atomics anywhere; every reduction has a fixed order (fixed
// shuffle trees, fixed shared-memory trees, fixed sequential loops); cross-block partials go to
// a workspace tensor (caching allocator) and are combined by a later kernel.
// ACCURACY: Welford/Chan (split path) or exact two-pass on-chip data (one-pass path); never
// E[x^2]-E[x]^2. z = (x-mean)*(rstd*gamma)+beta is computed the same way (one fma) everywhere,
// so the ReLU mask recomputed in the backward matches the forward.
// INDEXING: element offsets are int64_t; 32-bit division only where the operands are proven
// small. Grids are 1-D, capped, with block-stride loops (no gridDim.y/z use).
// Deliberately no <ATen/cuda/CUDAContext.h> (it pulls in cusparse.h, which a CUDA toolkit without
// the math libraries lacks): the stream comes from c10::cuda::getCurrentCUDAStream(), the function
// that at::cuda::getCurrentCUDAStream() names; the SM count from cudaDeviceGetAttribute.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "group_norm.h"
#include "register.h"

namespace gn_detectron {
namespace {

constexpr int kBlock = 256;          // threads per block for every kernel
constexpr int kWarps = kBlock / 32;  // 8
constexpr int kU = 4;                // vectors loaded per thread before they are used
constexpr int64_t kMaxGrid = 1 << 20;
constexpr int kTileMaxLanes = 64;    // channels_last tile: at most 64 channel vectors wide

// ----------------------------------------------------------------------------------------------
// Device helpers
// ----------------------------------------------------------------------------------------------
template <typename T, int VW>
struct alignas(sizeof(T) * VW) VecT {
  T v[VW];
};

template <typename T, int VW>
__device__ __forceinline__ VecT<T, VW> load_vec(const T* p) {
  return *reinterpret_cast<const VecT<T, VW>*>(p);
}
template <typename T, int VW>
__device__ __forceinline__ void store_vec(T* p, const VecT<T, VW>& v) {
  *reinterpret_cast<VecT<T, VW>*>(p) = v;
}

__device__ __forceinline__ int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

// z = (x - mean) * scale + shift; scale = rstd * gamma_c, shift = beta_c. One definition so that
// forward and backward (ReLU mask) compute bitwise the same z.
template <typename A>
__device__ __forceinline__ A gn_z(A x, A mean, A scale, A shift) {
  return fma(x - mean, scale, shift);
}
template <typename A>
__device__ __forceinline__ A relu_fwd(A z) {
  return z < A(0) ? A(0) : z;  // NaN propagates, like torch.relu
}
// The ReLU backward passes the gradient where the stored output y = T(relu(z)) is > 0, as
// PyTorch's relu backward does: for fp16, a z that is positive but rounds to 0 (below fp16's
// smallest subnormal) blocks the gradient like the zero it was stored as.
template <typename T, typename A>
__device__ __forceinline__ bool relu_passes(A z) {
  return static_cast<A>(static_cast<T>(z)) > A(0);
}
// dx = scale*g + c2 + c3*(x-mean)
template <typename A>
__device__ __forceinline__ A gn_dx(A g, A xc, A scale, A c2, A c3) {
  return fma(scale, g, fma(xc, c3, c2));
}

template <typename A>
struct WelfordT {
  A mean;
  A m2;
  A n;
};

// Chan et al. combination; an empty state (n == 0, mean == 0, m2 == 0) is the identity.
template <typename A>
__device__ __forceinline__ WelfordT<A> chan_combine(const WelfordT<A>& a, const WelfordT<A>& b) {
  const A n = a.n + b.n;
  const A fb = n > A(0) ? b.n / n : A(0);
  const A delta = b.mean - a.mean;
  WelfordT<A> r;
  r.mean = a.mean + delta * fb;
  r.m2 = a.m2 + b.m2 + delta * delta * a.n * fb;
  r.n = n;
  return r;
}

// Fixed shuffle tree; the result is valid in lane 0. All 32 lanes must call it.
template <typename A>
__device__ __forceinline__ WelfordT<A> warp_reduce_welford(WelfordT<A> w) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    WelfordT<A> o;
    o.mean = __shfl_down_sync(0xffffffffu, w.mean, off);
    o.m2 = __shfl_down_sync(0xffffffffu, w.m2, off);
    o.n = __shfl_down_sync(0xffffffffu, w.n, off);
    w = chan_combine(w, o);
  }
  return w;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // valid in lane 0
}

// Block of kBlock threads; every thread gets the same result. Ends with a barrier so `sh` can be
// reused right away.
template <typename A>
__device__ __forceinline__ WelfordT<A> block_reduce_welford(WelfordT<A> w, WelfordT<A>* sh) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  w = warp_reduce_welford(w);
  if (lane == 0) sh[warp] = w;
  __syncthreads();
  if (warp == 0) {
    WelfordT<A> v;
    if (lane < kWarps) {
      v = sh[lane];
    } else {
      v.mean = A(0);
      v.m2 = A(0);
      v.n = A(0);
    }
    v = warp_reduce_welford(v);
    if (lane == 0) sh[kWarps] = v;
  }
  __syncthreads();
  const WelfordT<A> r = sh[kWarps];
  __syncthreads();
  return r;
}

// Sum over the WPG warps owning one group (warps [w0, w0+WPG) of the block); every thread of the
// group gets the same value. Must be called by every thread of the block (it may synchronise).
template <typename A>
__device__ __forceinline__ A group_sum(A v, int WPG, A* sh /*[kWarps]*/) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (WPG == 1) return __shfl_sync(0xffffffffu, v, 0);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  const int w0 = (warp / WPG) * WPG;
  A t = A(0);
  for (int w = 0; w < WPG; ++w) t += sh[w0 + w];
  __syncthreads();
  return t;
}

// q = a / b, r = a % b for a >= 0, b > 0; 32-bit division when a, b < 2^32.
__device__ __forceinline__ void divmod64(int64_t a, int64_t b, bool use32, int64_t& q,
                                         int64_t& r) {
  if (use32) {
    const uint32_t qq = static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
    q = static_cast<int64_t>(qq);
  } else {
    q = a / b;
  }
  r = a - q * b;
}

template <typename A>
__device__ __forceinline__ A load_or(const A* p, int64_t i, A dflt) {
  return p != nullptr ? p[i] : dflt;
}

// channels_last tile: block = L*R threads; thread (lane xl = tid % L, row lane ry = tid / L).
// Work item b -> (channel tile ct, row chunk rc, sample n); rows [rc*RPC, min(HxW, rc*RPC+RPC)).
struct ClTile {
  int L;         // channel vectors per tile row
  int R;         // rows processed in parallel
  int Rp2;       // smallest power of two >= R
  int64_t CTn;   // channel tiles
  int64_t RC;    // row chunks per sample
  int64_t RPC;   // rows per chunk
  int64_t nblocks;
};

// ----------------------------------------------------------------------------------------------
// Forward, split path
// ----------------------------------------------------------------------------------------------

// NCHW: work item b = ng*S + s covers elements [s*chunk, min(m, s*chunk+chunk)) of group ng.
// chunk is a multiple of VW, and so is m when VW > 1: every vector is whole.
template <typename T, typename A, int VW>
__global__ void __launch_bounds__(kBlock)
fwd_stats_nchw_kernel(const T* __restrict__ x, int64_t m, int64_t S, int64_t chunk,
                      int64_t nblocks, A* __restrict__ part_mean, A* __restrict__ part_m2) {
  __shared__ WelfordT<A> sh[kWarps + 1];
  const int64_t stride = static_cast<int64_t>(kBlock) * VW;
  for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const int64_t ng = b / S;
    const int64_t s = b - ng * S;
    const int64_t start = s * chunk;
    const int64_t end = imin64(m, start + chunk);
    const T* xg = x + ng * m;
    // Statistics of deviations from a pivot shared by the whole group (its first element; the
    // finalize kernel adds it back), so that a large common offset costs no precision.
    const A pivot = static_cast<A>(xg[0]);
    WelfordT<A> w;
    w.mean = A(0);
    w.m2 = A(0);
    w.n = A(0);
    for (int64_t base = start + static_cast<int64_t>(threadIdx.x) * VW; base < end;
         base += stride * kU) {
      A v[kU][VW];
      int k = 0;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t e = base + u * stride;
        if (e < end) {
          const VecT<T, VW> t = load_vec<T, VW>(xg + e);
#pragma unroll
          for (int j = 0; j < VW; ++j) v[u][j] = static_cast<A>(t.v[j]) - pivot;
          k = u + 1;
        } else {
#pragma unroll
          for (int j = 0; j < VW; ++j) v[u][j] = A(0);
        }
      }
      // k >= 1 (base < end); valid vectors are the prefix u < k.
      A sum = A(0);
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int j = 0; j < VW; ++j) sum += v[u][j];
      const A cnt = static_cast<A>(k * VW);
      const A lm = sum / cnt;
      A lm2 = A(0);
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (u < k) {
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            const A d = v[u][j] - lm;
            lm2 += d * d;
          }
        }
      }
      WelfordT<A> o;
      o.mean = lm;
      o.m2 = lm2;
      o.n = cnt;
      w = chan_combine(w, o);
    }
    w = block_reduce_welford(w, sh);
    if (threadIdx.x == 0) {
      part_mean[b] = w.mean;
      part_m2[b] = w.m2;
    }
  }
}

// channels_last: partial (n, c, rc) at index (n*C + c)*RC + rc, over the rows of chunk rc.
template <typename T, typename A, int VW>
__global__ void __launch_bounds__(kBlock)
fwd_stats_cl_kernel(const T* __restrict__ x, int64_t C, int64_t HxW, int64_t D, ClTile t,
                    A* __restrict__ part_mean, A* __restrict__ part_m2) {
  __shared__ A sm_mean[kBlock * VW];
  __shared__ A sm_m2[kBlock * VW];
  __shared__ A sm_n[kBlock];
  const int tid = threadIdx.x;  // blockDim.x == L*R
  const int xl = tid % t.L;
  const int ry = tid / t.L;
  const int64_t CV = C / VW;
  for (int64_t b = blockIdx.x; b < t.nblocks; b += gridDim.x) {
    const int64_t ct = b % t.CTn;
    const int64_t rest = b / t.CTn;
    const int64_t rc = rest % t.RC;
    const int64_t n = rest / t.RC;
    const int64_t r0 = rc * t.RPC;
    const int64_t r1 = imin64(HxW, r0 + t.RPC);
    const int64_t cv = ct * t.L + xl;
    const bool active = cv < CV;
    A mean[VW], m2[VW];
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      mean[j] = A(0);
      m2[j] = A(0);
    }
    A cnt = A(0);
    if (active) {
      const T* xp = x + n * HxW * C + cv * VW;
      // Deviations from the group's pivot (its first element at position 0; finalize adds it
      // back), so that a large common offset costs no precision.
      A pivot[VW];
#pragma unroll
      for (int j = 0; j < VW; ++j) pivot[j] = static_cast<A>(x[n * HxW * C + ((cv * VW + j) / D) * D]);
      const int64_t rstep = static_cast<int64_t>(t.R);
      for (int64_t h0 = r0 + ry; h0 < r1; h0 += rstep * kU) {
        A v[kU][VW];
        int k = 0;
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int64_t h = h0 + u * rstep;
          if (h < r1) {
            const VecT<T, VW> q = load_vec<T, VW>(xp + h * C);
#pragma unroll
            for (int j = 0; j < VW; ++j) v[u][j] = static_cast<A>(q.v[j]) - pivot[j];
            k = u + 1;
          } else {
#pragma unroll
            for (int j = 0; j < VW; ++j) v[u][j] = A(0);
          }
        }
        const A kn = static_cast<A>(k);
        const A nn = cnt + kn;
        const A fb = kn / nn;
        const A ga = cnt * fb;
#pragma unroll
        for (int j = 0; j < VW; ++j) {
          A s = A(0);
#pragma unroll
          for (int u = 0; u < kU; ++u) s += v[u][j];
          const A lm = s / kn;
          A lm2 = A(0);
#pragma unroll
          for (int u = 0; u < kU; ++u) {
            if (u < k) {
              const A d = v[u][j] - lm;
              lm2 += d * d;
            }
          }
          const A d = lm - mean[j];
          mean[j] += d * fb;
          m2[j] += lm2 + d * d * ga;
        }
        cnt = nn;
      }
    }
    // Combine the R row lanes of each channel: fixed shared-memory tree over ry.
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      sm_mean[tid * VW + j] = mean[j];
      sm_m2[tid * VW + j] = m2[j];
    }
    sm_n[tid] = cnt;
    for (int s = t.Rp2 >> 1; s >= 1; s >>= 1) {
      __syncthreads();
      if (ry < s && ry + s < t.R) {
        const int o = tid + s * t.L;
        const A nb = sm_n[o];
        const A nn = cnt + nb;
        const A fb = nn > A(0) ? nb / nn : A(0);
        const A ga = cnt * fb;
#pragma unroll
        for (int j = 0; j < VW; ++j) {
          const A d = sm_mean[o * VW + j] - mean[j];
          mean[j] += d * fb;
          m2[j] += sm_m2[o * VW + j] + d * d * ga;
          sm_mean[tid * VW + j] = mean[j];
          sm_m2[tid * VW + j] = m2[j];
        }
        cnt = nn;
        sm_n[tid] = cnt;
      }
    }
    if (ry == 0 && active) {
#pragma unroll
      for (int j = 0; j < VW; ++j) {
        const int64_t idx = (n * C + cv * VW + j) * t.RC + rc;
        part_mean[idx] = mean[j];
        part_m2[idx] = m2[j];
      }
    }
    __syncthreads();  // shared memory is rewritten by the next work item
  }
}

// One block per group ng. The group's Pg partials are contiguous at part[ng*Pg ...]; partial i
// covers len(i % P) elements, len(j) = min(total, (j+1)*chunk) - j*chunk:
//   NCHW:          Pg = S,    P = S,  total = m,   chunk = element chunk
//   channels_last: Pg = D*RC, P = RC, total = HxW, chunk = RPC      (i = cc*RC + rc)
template <typename T, typename A>
__global__ void __launch_bounds__(kBlock)
fwd_finalize_kernel(const T* __restrict__ x, bool cl, int64_t C, int64_t HxW,
                    const A* __restrict__ part_mean, const A* __restrict__ part_m2, int64_t Pg,
                    int64_t P, int64_t total, int64_t chunk, int64_t NG, int64_t G, int64_t D,
                    int64_t m, double eps, const A* __restrict__ gamma,
                    const A* __restrict__ beta, A* __restrict__ mean_out,
                    A* __restrict__ rstd_out, A* __restrict__ cmean, A* __restrict__ cscale,
                    A* __restrict__ cshift) {
  __shared__ WelfordT<A> sh[kWarps + 1];
  for (int64_t ng = blockIdx.x; ng < NG; ng += gridDim.x) {
    WelfordT<A> w;
    w.mean = A(0);
    w.m2 = A(0);
    w.n = A(0);
    for (int64_t i = threadIdx.x; i < Pg; i += kBlock) {
      const int64_t j = i % P;
      const int64_t len = imin64(total, (j + 1) * chunk) - j * chunk;
      WelfordT<A> o;
      o.mean = part_mean[ng * Pg + i];
      o.m2 = part_m2[ng * Pg + i];
      o.n = static_cast<A>(len);
      w = chan_combine(w, o);
    }
    w = block_reduce_welford(w, sh);
    // the partials are of deviations from the group's pivot (see the stats kernels)
    const int64_t n_ = ng / G;
    const int64_t g_ = ng - n_ * G;
    const A pivot = static_cast<A>(cl ? x[n_ * HxW * C + g_ * D] : x[ng * m]);
    const A mu = pivot + w.mean;
    A var = w.m2 / static_cast<A>(m);
    var = var > A(0) ? var : A(0);
    const A rs = A(1) / sqrt(var + static_cast<A>(eps));
    if (threadIdx.x == 0) {
      mean_out[ng] = mu;
      rstd_out[ng] = rs;
    }
    const int64_t g = ng % G;
    for (int64_t cc = threadIdx.x; cc < D; cc += kBlock) {
      const int64_t c = g * D + cc;
      const int64_t nc = ng * D + cc;  // == n*C + c
      cmean[nc] = mu;
      cscale[nc] = rs * load_or(gamma, c, A(1));
      cshift[nc] = load_or(beta, c, A(0));
    }
  }
}

// NCHW apply: flat over nvec = numel/VW vectors; work item b covers vectors
// [b*kBlock*kU, (b+1)*kBlock*kU). Coefficient row k = e / HxW (= n*C + c).
template <typename T, typename A, int VW>
__global__ void __launch_bounds__(kBlock)
fwd_apply_flat_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t nvec, int64_t HxW,
                      bool use32, bool row_aligned, bool relu, int64_t nblocks,
                      const A* __restrict__ cmean, const A* __restrict__ cscale,
                      const A* __restrict__ cshift) {
  for (int64_t bb = blockIdx.x; bb < nblocks; bb += gridDim.x) {
    const int64_t b = nblocks - 1 - bb;  // reversed: the first blocks re-read the tensor's tail,
                                         // which the preceding reduction pass left in L2
    const int64_t vb = b * (kBlock * kU) + threadIdx.x;
    VecT<T, VW> v[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t vi = vb + u * kBlock;
      if (vi < nvec) v[u] = load_vec<T, VW>(x + vi * VW);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t vi = vb + u * kBlock;
      if (vi < nvec) {
        const int64_t e = vi * VW;
        int64_t k, r;
        divmod64(e, HxW, use32, k, r);
        VecT<T, VW> o;
        if (row_aligned) {  // HxW % VW == 0: the vector lies in one row
          const A mu = cmean[k], sc = cscale[k], sf = cshift[k];
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            A z = gn_z(static_cast<A>(v[u].v[j]), mu, sc, sf);
            if (relu) z = relu_fwd(z);
            o.v[j] = static_cast<T>(z);
          }
        } else {
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            A z = gn_z(static_cast<A>(v[u].v[j]), cmean[k], cscale[k], cshift[k]);
            if (relu) z = relu_fwd(z);
            o.v[j] = static_cast<T>(z);
            if (++r == HxW) {
              r = 0;
              ++k;
            }
          }
        }
        store_vec<T, VW>(y + e, o);
      }
    }
  }
}

// channels_last apply, tiled like fwd_stats_cl_kernel (its own RC/RPC).
template <typename T, typename A, int VW>
__global__ void __launch_bounds__(kBlock)
fwd_apply_cl_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t C, int64_t HxW,
                    ClTile t, bool relu, const A* __restrict__ cmean,
                    const A* __restrict__ cscale, const A* __restrict__ cshift) {
  const int tid = threadIdx.x;
  const int xl = tid % t.L;
  const int ry = tid / t.L;
  const int64_t CV = C / VW;
  for (int64_t bb = blockIdx.x; bb < t.nblocks; bb += gridDim.x) {
    const int64_t b = t.nblocks - 1 - bb;  // reversed, see fwd_apply_flat_kernel
    const int64_t ct = b % t.CTn;
    const int64_t rest = b / t.CTn;
    const int64_t rc = rest % t.RC;
    const int64_t n = rest / t.RC;
    const int64_t r0 = rc * t.RPC;
    const int64_t r1 = imin64(HxW, r0 + t.RPC);
    const int64_t cv = ct * t.L + xl;
    if (cv >= CV) continue;  // no barriers in this kernel
    A mu[VW], sc[VW], sf[VW];
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      const int64_t k = n * C + cv * VW + j;
      mu[j] = cmean[k];
      sc[j] = cscale[k];
      sf[j] = cshift[k];
    }
    const int64_t off0 = n * HxW * C + cv * VW;
    const int64_t rstep = static_cast<int64_t>(t.R);
    for (int64_t h0 = r0 + ry; h0 < r1; h0 += rstep * kU) {
      VecT<T, VW> v[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t h = h0 + u * rstep;
        if (h < r1) v[u] = load_vec<T, VW>(x + off0 + h * C);
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t h = h0 + u * rstep;
        if (h < r1) {
          VecT<T, VW> o;
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            A z = gn_z(static_cast<A>(v[u].v[j]), mu[j], sc[j], sf[j]);
            if (relu) z = relu_fwd(z);
            o.v[j] = static_cast<T>(z);
          }
          store_vec<T, VW>(y + off0 + h * C, o);
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------
// One-pass path (a group held on chip by WPG warps)
// ----------------------------------------------------------------------------------------------
// Group-local vector item i (0 <= i < m/VW):
//   NCHW:          memory offset i*VW from the group start ng*m; element j has local channel
//                  (i*VW+j) / HxW.
//   channels_last: h = i / DV, cv = i % DV (DV = D/VW); offset h*C + cv*VW from the group
//                  start n*HxW*C + g*D; element j has local channel cv*VW + j.
// In both layouts the group-local element index L = i*VW + j equals cc*HxW + h (NCHW) or
// h*D + cc (channels_last).
template <typename T>
constexpr int fwd_onepass_k(int VW) {
  // vectors per thread: 32 elements for 4-byte types, 64 for 2-byte, 16 for double (128 bytes
  // of registers) when vectorised; 32 scalars (16 for double) otherwise.
  return VW > 1 ? (128 / static_cast<int>(sizeof(T))) / VW : (sizeof(T) == 8 ? 16 : 32);
}
template <typename A>
constexpr int bwd_onepass_elems() {
  return sizeof(A) == 8 ? 8 : 16;  // elements per thread (dy and x both held)
}

template <typename T, typename A, int VW, bool CL>
__global__ void __launch_bounds__(kBlock)
fwd_onepass_kernel(const T* __restrict__ x, T* __restrict__ y, A* __restrict__ mean_out,
                   A* __restrict__ rstd_out, const A* __restrict__ gamma,
                   const A* __restrict__ beta, int64_t C, int HxW, int64_t G, int D, int m,
                   int64_t NG, int WPG, int64_t nblocks, double eps, bool relu) {
  constexpr int K = fwd_onepass_k<T>(VW);
  __shared__ A sh[kWarps];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int GPB = kWarps / WPG;
  const int gs = warp / WPG;
  const int tg = (warp - gs * WPG) * 32 + lane;
  const int TG = WPG * 32;
  const int nitems = m / VW;
  const int DV = D / VW;
  for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const int64_t ng = b * GPB + gs;
    const bool valid = ng < NG;
    const int64_t n = ng / G;
    const int64_t g = ng - n * G;
    const int64_t gbase = CL ? (n * HxW * C + g * D) : ng * static_cast<int64_t>(m);
    VecT<T, VW> v[K];
    // The sum is taken of deviations from a pivot (the group's first element), so that a large
    // common offset (mean 1e4, std 1) does not eat the sum's precision; mean = pivot + that
    // sum / m is then off by its final rounding only.
    const A pivot = valid ? static_cast<A>(x[gbase]) : A(0);
    A sum = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = tg + k * TG;
      if (valid && i < nitems) {
        int64_t off;
        if (CL) {
          const int h = i / DV;
          const int cv = i - h * DV;
          off = static_cast<int64_t>(h) * C + cv * VW;
        } else {
          off = static_cast<int64_t>(i) * VW;
        }
        v[k] = load_vec<T, VW>(x + gbase + off);
#pragma unroll
        for (int j = 0; j < VW; ++j) sum += static_cast<A>(v[k].v[j]) - pivot;
      }
    }
    sum = group_sum(sum, WPG, sh);
    const A mu = pivot + sum / static_cast<A>(m);
    A sq = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = tg + k * TG;
      if (valid && i < nitems) {
#pragma unroll
        for (int j = 0; j < VW; ++j) {
          const A d = static_cast<A>(v[k].v[j]) - mu;
          sq += d * d;
        }
      }
    }
    sq = group_sum(sq, WPG, sh);
    const A rs = A(1) / sqrt(sq / static_cast<A>(m) + static_cast<A>(eps));
    if (valid && tg == 0) {
      mean_out[ng] = mu;
      rstd_out[ng] = rs;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = tg + k * TG;
      if (valid && i < nitems) {
        VecT<T, VW> o;
        int64_t off;
        if (CL) {
          const int h = i / DV;
          const int cv = i - h * DV;
          off = static_cast<int64_t>(h) * C + cv * VW;
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            const int64_t c = g * D + cv * VW + j;
            A z = gn_z(static_cast<A>(v[k].v[j]), mu, rs * load_or(gamma, c, A(1)),
                       load_or(beta, c, A(0)));
            if (relu) z = relu_fwd(z);
            o.v[j] = static_cast<T>(z);
          }
        } else {
          const int e = i * VW;
          off = e;
          int cc = e / HxW;
          int r = e - cc * HxW;
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            const int64_t c = g * D + cc;
            A z = gn_z(static_cast<A>(v[k].v[j]), mu, rs * load_or(gamma, c, A(1)),
                       load_or(beta, c, A(0)));
            if (relu) z = relu_fwd(z);
            o.v[j] = static_cast<T>(z);
            if (++r == HxW) {
              r = 0;
              ++cc;
            }
          }
        }
        store_vec<T, VW>(y + gbase + off, o);
      }
    }
  }
}

// Backward one-pass: dx for the group, and (need_wgb) the per-(n,c) contributions
// wg[n,c] = rstd * sum_hw g*(x-mean), wb[n,c] = sum_hw g, through shared memory.
template <typename T, typename A, int VW, bool CL>
__global__ void __launch_bounds__(kBlock)
bwd_onepass_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                   const A* __restrict__ mean_in, const A* __restrict__ rstd_in,
                   const A* __restrict__ gamma, const A* __restrict__ beta, T* __restrict__ dx,
                   A* __restrict__ wg, A* __restrict__ wb, int64_t C, int HxW, int64_t G, int D,
                   int m, int64_t NG, int WPG, int64_t nblocks, bool relu, bool need_wgb) {
  constexpr int EB = bwd_onepass_elems<A>();
  constexpr int K = EB / VW;
  __shared__ A sh[kWarps];
  __shared__ A s_g[kBlock * EB];   // g per element, group slot gs at gs*WPG*32*EB
  __shared__ A s_gx[kBlock * EB];  // g*(x-mean)
  __shared__ A s_pg[kBlock];       // per (channel, part) partials
  __shared__ A s_pgx[kBlock];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int GPB = kWarps / WPG;
  const int gs = warp / WPG;
  const int tg = (warp - gs * WPG) * 32 + lane;
  const int TG = WPG * 32;
  const int nitems = m / VW;
  const int DV = D / VW;
  const int sbase = gs * TG * EB;  // this group's slice of s_g / s_gx (m <= TG*EB)
  const int pbase = gs * TG;       // this group's slice of s_pg / s_pgx
  for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const int64_t ng = b * GPB + gs;
    const bool valid = ng < NG;
    const int64_t n = ng / G;
    const int64_t g = ng - n * G;
    const int64_t gbase = CL ? (n * HxW * C + g * D) : ng * static_cast<int64_t>(m);
    const A mu = valid ? mean_in[ng] : A(0);
    const A rs = valid ? rstd_in[ng] : A(0);
    VecT<T, VW> vdy[K], vx[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = tg + k * TG;
      if (valid && i < nitems) {
        int64_t off;
        if (CL) {
          const int h = i / DV;
          const int cv = i - h * DV;
          off = static_cast<int64_t>(h) * C + cv * VW;
        } else {
          off = static_cast<int64_t>(i) * VW;
        }
        vdy[k] = load_vec<T, VW>(dy + gbase + off);
        vx[k] = load_vec<T, VW>(x + gbase + off);
      }
    }
    A acc1 = A(0), acc2 = A(0);  // sum gamma*g, sum gamma*g*(x-mean)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int i = tg + k * TG;
      if (valid && i < nitems) {
        int cc, r = 0;
        if (CL) {
          const int h = i / DV;
          cc = (i - h * DV) * VW;
        } else {
          cc = (i * VW) / HxW;
          r = i * VW - cc * HxW;
        }
#pragma unroll
        for (int j = 0; j < VW; ++j) {
          const int64_t c = g * D + cc;
          const A gam = load_or(gamma, c, A(1));
          const A xc = static_cast<A>(vx[k].v[j]) - mu;
          A gv = static_cast<A>(vdy[k].v[j]);
          if (relu) {
            const A z = fma(xc, rs * gam, load_or(beta, c, A(0)));
            gv = relu_passes<T>(z) ? gv : A(0);
          }
          acc1 += gam * gv;
          acc2 += gam * gv * xc;
          if (need_wgb) {
            s_g[sbase + i * VW + j] = gv;
            s_gx[sbase + i * VW + j] = gv * xc;
          }
          if (CL) {
            ++cc;
          } else if (++r == HxW) {
            r = 0;
            ++cc;
          }
        }
      }
    }
    acc1 = group_sum(acc1, WPG, sh);
    acc2 = group_sum(acc2, WPG, sh);
    const A kk = rs / static_cast<A>(m);
    const A c2 = -kk * acc1;             // -(rstd/m) * sum_dxhat
    const A c3 = -kk * rs * (rs * acc2);  // -(rstd/m) * rstd * sum_dxhat_xhat
    if (dx != nullptr) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int i = tg + k * TG;
        if (valid && i < nitems) {
          int cc, r = 0;
          int64_t off;
          if (CL) {
            const int h = i / DV;
            const int cv = i - h * DV;
            cc = cv * VW;
            off = static_cast<int64_t>(h) * C + cv * VW;
          } else {
            cc = (i * VW) / HxW;
            r = i * VW - cc * HxW;
            off = static_cast<int64_t>(i) * VW;
          }
          VecT<T, VW> o;
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            const int64_t c = g * D + cc;
            const A sc = rs * load_or(gamma, c, A(1));
            const A xc = static_cast<A>(vx[k].v[j]) - mu;
            A gv = static_cast<A>(vdy[k].v[j]);
            if (relu) {
              const A z = fma(xc, sc, load_or(beta, c, A(0)));
              gv = relu_passes<T>(z) ? gv : A(0);
            }
            o.v[j] = static_cast<T>(gn_dx(gv, xc, sc, c2, c3));
            if (CL) {
              ++cc;
            } else if (++r == HxW) {
              r = 0;
              ++cc;
            }
          }
          store_vec<T, VW>(dx + gbase + off, o);
        }
      }
    }
    if (need_wgb) {  // uniform over the launch
      __syncthreads();
      const int P = TG >= D ? TG / D : 1;  // parts per channel; D*P <= TG when P > 1
      for (int w = tg; w < D * P; w += TG) {
        const int cc = w / P;
        const int p = w - cc * P;
        const int h0 = (p * HxW) / P;
        const int h1 = ((p + 1) * HxW) / P;
        A sg = A(0), sgx = A(0);
        for (int h = h0; h < h1; ++h) {
          const int L = CL ? h * D + cc : cc * HxW + h;
          sg += s_g[sbase + L];
          sgx += s_gx[sbase + L];
        }
        if (P == 1) {
          if (valid) {
            wg[ng * D + cc] = rs * sgx;
            wb[ng * D + cc] = sg;
          }
        } else {
          s_pg[pbase + w] = sg;
          s_pgx[pbase + w] = sgx;
        }
      }
      if (P > 1) {  // uniform over the launch
        __syncthreads();
        for (int cc = tg; cc < D; cc += TG) {
          A sg = A(0), sgx = A(0);
          for (int p = 0; p < P; ++p) {
            sg += s_pg[pbase + cc * P + p];
            sgx += s_pgx[pbase + cc * P + p];
          }
          if (valid) {
            wg[ng * D + cc] = rs * sgx;
            wb[ng * D + cc] = sg;
          }
        }
      }
      __syncthreads();  // shared memory is rewritten by the next work item
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Backward, split path
// ----------------------------------------------------------------------------------------------

// NCHW: one warp per work item wid = nc*S + s: elements [s*chunk, min(HxW, s*chunk+chunk)) of
// row nc = n*C + c. Writes part_ds[wid] = sum g*(x-mean), part_db[wid] = sum g.
template <typename T, typename A, int VW>
__global__ void __launch_bounds__(kBlock)
bwd_reduce_nchw_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                       const A* __restrict__ mean_in, const A* __restrict__ rstd_in,
                       const A* __restrict__ gamma, const A* __restrict__ beta, int64_t C,
                       int64_t HxW, int64_t G, int64_t D, int64_t S, int64_t chunk,
                       int64_t nitems, bool relu, A* __restrict__ part_ds,
                       A* __restrict__ part_db) {
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t wstride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t wid = static_cast<int64_t>(blockIdx.x) * kWarps + warp; wid < nitems;
       wid += wstride) {  // warp-uniform loop: shuffles below see the full warp
    const int64_t nc = wid / S;
    const int64_t s = wid - nc * S;
    const int64_t n = nc / C;
    const int64_t c = nc - n * C;
    const int64_t ng = n * G + c / D;
    const A mu = mean_in[ng];
    const A sc = rstd_in[ng] * load_or(gamma, c, A(1));
    const A sf = load_or(beta, c, A(0));
    const int64_t start = s * chunk;
    const int64_t end = imin64(HxW, start + chunk);
    const T* dyr = dy + nc * HxW;
    const T* xr = x + nc * HxW;
    A sds = A(0), sdb = A(0);
    const int64_t stride = 32 * VW;
    for (int64_t base = start + lane * VW; base < end; base += stride * kU) {
      VecT<T, VW> a[kU], q[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t e = base + u * stride;
        if (e < end) {
          a[u] = load_vec<T, VW>(dyr + e);
          q[u] = load_vec<T, VW>(xr + e);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t e = base + u * stride;
        if (e < end) {
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            const A xc = static_cast<A>(q[u].v[j]) - mu;
            A gv = static_cast<A>(a[u].v[j]);
            if (relu) {
              const A z = fma(xc, sc, sf);
              gv = relu_passes<T>(z) ? gv : A(0);
            }
            sds += gv * xc;
            sdb += gv;
          }
        }
      }
    }
    sds = warp_sum(sds);
    sdb = warp_sum(sdb);
    if (lane == 0) {
      part_ds[wid] = sds;
      part_db[wid] = sdb;
    }
  }
}

// channels_last: tiled like fwd_stats_cl_kernel; partial (n,c,rc) at (n*C + c)*RC + rc.
template <typename T, typename A, int VW>
__global__ void __launch_bounds__(kBlock)
bwd_reduce_cl_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                     const A* __restrict__ mean_in, const A* __restrict__ rstd_in,
                     const A* __restrict__ gamma, const A* __restrict__ beta, int64_t C,
                     int64_t HxW, int64_t G, int64_t D, ClTile t, bool relu,
                     A* __restrict__ part_ds, A* __restrict__ part_db) {
  __shared__ A sm_ds[kBlock * VW];
  __shared__ A sm_db[kBlock * VW];
  const int tid = threadIdx.x;
  const int xl = tid % t.L;
  const int ry = tid / t.L;
  const int64_t CV = C / VW;
  for (int64_t b = blockIdx.x; b < t.nblocks; b += gridDim.x) {
    const int64_t ct = b % t.CTn;
    const int64_t rest = b / t.CTn;
    const int64_t rc = rest % t.RC;
    const int64_t n = rest / t.RC;
    const int64_t r0 = rc * t.RPC;
    const int64_t r1 = imin64(HxW, r0 + t.RPC);
    const int64_t cv = ct * t.L + xl;
    const bool active = cv < CV;
    A sds[VW], sdb[VW];
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      sds[j] = A(0);
      sdb[j] = A(0);
    }
    if (active) {
      A mu[VW], sc[VW], sf[VW];
#pragma unroll
      for (int j = 0; j < VW; ++j) {
        const int64_t c = cv * VW + j;
        const int64_t ng = n * G + c / D;
        mu[j] = mean_in[ng];
        sc[j] = rstd_in[ng] * load_or(gamma, c, A(1));
        sf[j] = load_or(beta, c, A(0));
      }
      const int64_t off0 = n * HxW * C + cv * VW;
      const int64_t rstep = static_cast<int64_t>(t.R);
      for (int64_t h0 = r0 + ry; h0 < r1; h0 += rstep * kU) {
        VecT<T, VW> a[kU], q[kU];
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int64_t h = h0 + u * rstep;
          if (h < r1) {
            a[u] = load_vec<T, VW>(dy + off0 + h * C);
            q[u] = load_vec<T, VW>(x + off0 + h * C);
          }
        }
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int64_t h = h0 + u * rstep;
          if (h < r1) {
#pragma unroll
            for (int j = 0; j < VW; ++j) {
              const A xc = static_cast<A>(q[u].v[j]) - mu[j];
              A gv = static_cast<A>(a[u].v[j]);
              if (relu) {
                const A z = fma(xc, sc[j], sf[j]);
                gv = relu_passes<T>(z) ? gv : A(0);
              }
              sds[j] += gv * xc;
              sdb[j] += gv;
            }
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      sm_ds[tid * VW + j] = sds[j];
      sm_db[tid * VW + j] = sdb[j];
    }
    for (int s = t.Rp2 >> 1; s >= 1; s >>= 1) {
      __syncthreads();
      if (ry < s && ry + s < t.R) {
        const int o = tid + s * t.L;
#pragma unroll
        for (int j = 0; j < VW; ++j) {
          sds[j] += sm_ds[o * VW + j];
          sdb[j] += sm_db[o * VW + j];
          sm_ds[tid * VW + j] = sds[j];
          sm_db[tid * VW + j] = sdb[j];
        }
      }
    }
    if (ry == 0 && active) {
#pragma unroll
      for (int j = 0; j < VW; ++j) {
        const int64_t idx = (n * C + cv * VW + j) * t.RC + rc;
        part_ds[idx] = sds[j];
        part_db[idx] = sdb[j];
      }
    }
    __syncthreads();
  }
}

// One block per group ng. Channel nc = ng*D + cc has P partials at part[nc*P ...].
template <typename A>
__global__ void __launch_bounds__(kBlock)
bwd_finalize_kernel(const A* __restrict__ part_ds, const A* __restrict__ part_db, int64_t P,
                    int64_t NG, int64_t G, int64_t D, int64_t m,
                    const A* __restrict__ mean_in, const A* __restrict__ rstd_in,
                    const A* __restrict__ gamma, const A* __restrict__ beta, bool need_wgb,
                    A* __restrict__ wg, A* __restrict__ wb, bool need_dx,
                    A* __restrict__ cmean, A* __restrict__ cscale, A* __restrict__ cshift,
                    A* __restrict__ cc2, A* __restrict__ cc3) {
  __shared__ A sh_db[kWarps];
  __shared__ A sh_ds[kWarps];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  for (int64_t ng = blockIdx.x; ng < NG; ng += gridDim.x) {
    const int64_t g = ng % G;
    const A mu = mean_in[ng];
    const A rs = rstd_in[ng];
    A acc_db = A(0), acc_ds = A(0);  // meaningful in lane 0
    for (int64_t cc = warp; cc < D; cc += kWarps) {  // warp-uniform
      const int64_t nc = ng * D + cc;
      const int64_t c = g * D + cc;
      A s1 = A(0), s2 = A(0);
      for (int64_t j = lane; j < P; j += 32) {
        s1 += part_ds[nc * P + j];
        s2 += part_db[nc * P + j];
      }
      s1 = warp_sum(s1);
      s2 = warp_sum(s2);
      if (lane == 0) {
        const A gam = load_or(gamma, c, A(1));
        acc_db += gam * s2;
        acc_ds += gam * s1;
        if (need_wgb) {
          wg[nc] = rs * s1;
          wb[nc] = s2;
        }
      }
    }
    if (lane == 0) {
      sh_db[warp] = acc_db;
      sh_ds[warp] = acc_ds;
    }
    __syncthreads();
    A sum_db = A(0), sum_ds = A(0);
    for (int w = 0; w < kWarps; ++w) {
      sum_db += sh_db[w];
      sum_ds += sh_ds[w];
    }
    __syncthreads();
    if (need_dx) {
      const A kk = rs / static_cast<A>(m);
      const A c2 = -kk * sum_db;
      const A c3 = -kk * rs * (rs * sum_ds);
      for (int64_t cc = threadIdx.x; cc < D; cc += kBlock) {
        const int64_t nc = ng * D + cc;
        const int64_t c = g * D + cc;
        cmean[nc] = mu;
        cscale[nc] = rs * load_or(gamma, c, A(1));
        cshift[nc] = load_or(beta, c, A(0));
        cc2[nc] = c2;
        cc3[nc] = c3;
      }
    }
  }
}

template <typename T, typename A, int VW>
__global__ void __launch_bounds__(kBlock)
bwd_dx_flat_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                   int64_t nvec, int64_t HxW, bool use32, bool row_aligned, bool relu,
                   int64_t nblocks, const A* __restrict__ cmean, const A* __restrict__ cscale,
                   const A* __restrict__ cshift, const A* __restrict__ cc2,
                   const A* __restrict__ cc3) {
  for (int64_t bb = blockIdx.x; bb < nblocks; bb += gridDim.x) {
    const int64_t b = nblocks - 1 - bb;  // reversed: the first blocks re-read the tensor's tail,
                                         // which the preceding reduction pass left in L2
    const int64_t vb = b * (kBlock * kU) + threadIdx.x;
    VecT<T, VW> a[kU], q[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t vi = vb + u * kBlock;
      if (vi < nvec) {
        a[u] = load_vec<T, VW>(dy + vi * VW);
        q[u] = load_vec<T, VW>(x + vi * VW);
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t vi = vb + u * kBlock;
      if (vi < nvec) {
        const int64_t e = vi * VW;
        int64_t k, r;
        divmod64(e, HxW, use32, k, r);
        VecT<T, VW> o;
        if (row_aligned) {
          const A mu = cmean[k], sc = cscale[k], sf = cshift[k], c2 = cc2[k], c3 = cc3[k];
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            const A xc = static_cast<A>(q[u].v[j]) - mu;
            A gv = static_cast<A>(a[u].v[j]);
            if (relu) {
              const A z = fma(xc, sc, sf);
              gv = relu_passes<T>(z) ? gv : A(0);
            }
            o.v[j] = static_cast<T>(gn_dx(gv, xc, sc, c2, c3));
          }
        } else {
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            const A sc = cscale[k];
            const A xc = static_cast<A>(q[u].v[j]) - cmean[k];
            A gv = static_cast<A>(a[u].v[j]);
            if (relu) {
              const A z = fma(xc, sc, cshift[k]);
              gv = relu_passes<T>(z) ? gv : A(0);
            }
            o.v[j] = static_cast<T>(gn_dx(gv, xc, sc, cc2[k], cc3[k]));
            if (++r == HxW) {
              r = 0;
              ++k;
            }
          }
        }
        store_vec<T, VW>(dx + e, o);
      }
    }
  }
}

template <typename T, typename A, int VW>
__global__ void __launch_bounds__(kBlock)
bwd_dx_cl_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                 int64_t C, int64_t HxW, ClTile t, bool relu, const A* __restrict__ cmean,
                 const A* __restrict__ cscale, const A* __restrict__ cshift,
                 const A* __restrict__ cc2, const A* __restrict__ cc3) {
  const int tid = threadIdx.x;
  const int xl = tid % t.L;
  const int ry = tid / t.L;
  const int64_t CV = C / VW;
  for (int64_t bb = blockIdx.x; bb < t.nblocks; bb += gridDim.x) {
    const int64_t b = t.nblocks - 1 - bb;  // reversed, see fwd_apply_flat_kernel
    const int64_t ct = b % t.CTn;
    const int64_t rest = b / t.CTn;
    const int64_t rc = rest % t.RC;
    const int64_t n = rest / t.RC;
    const int64_t r0 = rc * t.RPC;
    const int64_t r1 = imin64(HxW, r0 + t.RPC);
    const int64_t cv = ct * t.L + xl;
    if (cv >= CV) continue;  // no barriers in this kernel
    A mu[VW], sc[VW], sf[VW], c2[VW], c3[VW];
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      const int64_t k = n * C + cv * VW + j;
      mu[j] = cmean[k];
      sc[j] = cscale[k];
      sf[j] = cshift[k];
      c2[j] = cc2[k];
      c3[j] = cc3[k];
    }
    const int64_t off0 = n * HxW * C + cv * VW;
    const int64_t rstep = static_cast<int64_t>(t.R);
    for (int64_t h0 = r0 + ry; h0 < r1; h0 += rstep * kU) {
      VecT<T, VW> a[kU], q[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t h = h0 + u * rstep;
        if (h < r1) {
          a[u] = load_vec<T, VW>(dy + off0 + h * C);
          q[u] = load_vec<T, VW>(x + off0 + h * C);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t h = h0 + u * rstep;
        if (h < r1) {
          VecT<T, VW> o;
#pragma unroll
          for (int j = 0; j < VW; ++j) {
            const A xc = static_cast<A>(q[u].v[j]) - mu[j];
            A gv = static_cast<A>(a[u].v[j]);
            if (relu) {
              const A z = fma(xc, sc[j], sf[j]);
              gv = relu_passes<T>(z) ? gv : A(0);
            }
            o.v[j] = static_cast<T>(gn_dx(gv, xc, sc[j], c2[j], c3[j]));
          }
          store_vec<T, VW>(dx + off0 + h * C, o);
        }
      }
    }
  }
}

// dgamma[c] = sum_n wg[n,c], dbeta[c] = sum_n wb[n,c]: 32 channels per work item, 8 row lanes
// over n, then a fixed sum of the 8 lanes.
template <typename A>
__global__ void __launch_bounds__(kBlock)
bwd_dgamma_kernel(const A* __restrict__ wg, const A* __restrict__ wb, int64_t N, int64_t C,
                  int64_t nblocks, A* __restrict__ dgamma, A* __restrict__ dbeta) {
  __shared__ A sg[kWarps][33];
  __shared__ A sb[kWarps][33];
  const int tx = threadIdx.x & 31;
  const int ty = threadIdx.x >> 5;
  for (int64_t cb = blockIdx.x; cb < nblocks; cb += gridDim.x) {
    const int64_t c = cb * 32 + tx;
    A a = A(0), bsum = A(0);
    if (c < C) {
      for (int64_t n = ty; n < N; n += kWarps) {
        a += wg[n * C + c];
        bsum += wb[n * C + c];
      }
    }
    sg[ty][tx] = a;
    sb[ty][tx] = bsum;
    __syncthreads();
    if (ty == 0 && c < C) {
      A s1 = A(0), s2 = A(0);
      for (int w = 0; w < kWarps; ++w) {
        s1 += sg[w][tx];
        s2 += sb[w][tx];
      }
      if (dgamma != nullptr) dgamma[c] = s1;
      if (dbeta != nullptr) dbeta[c] = s2;
    }
    __syncthreads();
  }
}

// ----------------------------------------------------------------------------------------------
// Host side
// ----------------------------------------------------------------------------------------------
enum class PathMode { kAuto, kSplit, kOnePass };

PathMode path_mode() {
  static const PathMode mode = [] {
    const char* e = std::getenv("GN_DETECTRON_CUDA_PATH");
    if (e == nullptr || e[0] == '\0' || std::strcmp(e, "auto") == 0) return PathMode::kAuto;
    if (std::strcmp(e, "split") == 0) return PathMode::kSplit;
    if (std::strcmp(e, "onepass") == 0) return PathMode::kOnePass;
    TORCH_WARN("GN_DETECTRON_CUDA_PATH='", e,
               "' is not one of auto, split, onepass; using auto");
    return PathMode::kAuto;
  }();
  return mode;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
unsigned grid_for(int64_t nblocks) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(nblocks, kMaxGrid)));
}
int num_sms() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));  // the CUDAGuard has made x's device current
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return std::max(sms, 1);
}
int64_t target_blocks() { return 8 * static_cast<int64_t>(num_sms()); }  // 256-thread blocks

template <typename A>
const A* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<A>() : nullptr;
}

// Smallest WPG in {1,2,4,8} with nitems <= WPG*32*K, or 0 when none.
int onepass_wpg(int64_t nitems, int64_t K) {
  for (int w = 1; w <= kWarps; w *= 2)
    if (nitems <= static_cast<int64_t>(w) * 32 * K) return w;
  return 0;
}

ClTile make_cl_tile(int64_t N, int64_t C, int64_t HxW, int VW, int64_t target) {
  ClTile t;
  const int64_t CV = C / VW;
  t.L = static_cast<int>(std::min<int64_t>(CV, kTileMaxLanes));
  t.R = kBlock / t.L;  // >= 4
  t.Rp2 = 1;
  while (t.Rp2 < t.R) t.Rp2 *= 2;
  t.CTn = ceil_div(CV, t.L);
  const int64_t want_rc = std::max<int64_t>(1, target / std::max<int64_t>(1, N * t.CTn));
  int64_t rpc = ceil_div(HxW, want_rc);
  rpc = std::max<int64_t>(rpc, static_cast<int64_t>(t.R) * kU);  // >= one batch per row lane
  rpc = std::min<int64_t>(rpc, HxW);
  t.RPC = rpc;
  t.RC = ceil_div(HxW, rpc);
  t.nblocks = N * t.RC * t.CTn;
  return t;
}

// Calls f(std::integral_constant<int, VEC>) or f(std::integral_constant<int, 1>).
template <int VEC, typename F>
void with_vw(bool vec, F&& f) {
  if (vec) {
    f(std::integral_constant<int, VEC>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

template <typename T>
constexpr int vec_of() {
  return 16 / static_cast<int>(sizeof(T));
}

template <typename T, typename A>
void forward_impl(const GroupNormProblem& p, const at::Tensor& x, const at::Tensor& gamma,
                  const at::Tensor& beta, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  constexpr int VEC = vec_of<T>();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = p.N, C = p.C, HxW = p.HxW, G = p.G, D = C / G, m = D * HxW;
  const int64_t NG = N * G, NC = N * C, numel = NC * HxW;
  const bool cl = p.channels_last;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const A* gp = opt_ptr<A>(gamma);
  const A* bp = opt_ptr<A>(beta);
  A* meanp = mean.data_ptr<A>();
  A* rstdp = rstd.data_ptr<A>();
  const bool ptrs16 = aligned16(xp) && aligned16(yp);

  // ---- one-pass path ----
  const PathMode mode = path_mode();
  if (mode != PathMode::kSplit) {
    const bool vec = ptrs16 && (cl ? (D % VEC == 0) : (m % VEC == 0));
    const int vw = vec ? VEC : 1;
    const int64_t K = vec ? fwd_onepass_k<T>(VEC) : fwd_onepass_k<T>(1);
    const int wpg = onepass_wpg(m / vw, K);
    if (wpg > 0) {
      const int64_t nblocks = ceil_div(NG, kWarps / wpg);
      with_vw<VEC>(vec, [&](auto vwc) {
        constexpr int VW = decltype(vwc)::value;
        if (cl) {
          fwd_onepass_kernel<T, A, VW, true><<<grid_for(nblocks), kBlock, 0, stream>>>(
              xp, yp, meanp, rstdp, gp, bp, C, static_cast<int>(HxW), G, static_cast<int>(D),
              static_cast<int>(m), NG, wpg, nblocks, p.eps, p.relu);
        } else {
          fwd_onepass_kernel<T, A, VW, false><<<grid_for(nblocks), kBlock, 0, stream>>>(
              xp, yp, meanp, rstdp, gp, bp, C, static_cast<int>(HxW), G, static_cast<int>(D),
              static_cast<int>(m), NG, wpg, nblocks, p.eps, p.relu);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      (void)vw;
      return;
    }
  }

  // ---- split path ----
  const auto acc_opts = x.options().dtype(std::is_same<A, double>::value ? at::kDouble
                                                                          : at::kFloat);
  if (!cl) {
    const bool vec_s = aligned16(xp) && (m % VEC == 0);
    const int vw = vec_s ? VEC : 1;
    const int64_t min_chunk = static_cast<int64_t>(kBlock) * vw * kU;
    const int64_t max_s = std::max<int64_t>(1, m / min_chunk);
    int64_t S = std::min<int64_t>(max_s, std::max<int64_t>(1, ceil_div(target_blocks(), NG)));
    const int64_t chunk = round_up(ceil_div(m, S), vw);
    S = ceil_div(m, chunk);
    const int64_t nparts = NG * S;
    at::Tensor ws = at::empty({2 * nparts + 3 * NC}, acc_opts);
    A* part_mean = ws.data_ptr<A>();
    A* part_m2 = part_mean + nparts;
    A* cmean = part_m2 + nparts;
    A* cscale = cmean + NC;
    A* cshift = cscale + NC;
    with_vw<VEC>(vec_s, [&](auto vwc) {
      constexpr int VW = decltype(vwc)::value;
      fwd_stats_nchw_kernel<T, A, VW><<<grid_for(nparts), kBlock, 0, stream>>>(
          xp, m, S, chunk, nparts, part_mean, part_m2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    fwd_finalize_kernel<T, A><<<grid_for(NG), kBlock, 0, stream>>>(
        xp, false, C, HxW, part_mean, part_m2, S, S, m, chunk, NG, G, D, m, p.eps, gp, bp, meanp, rstdp, cmean,
        cscale, cshift);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const bool vec_a = ptrs16 && (numel % VEC == 0);
    with_vw<VEC>(vec_a, [&](auto vwc) {
      constexpr int VW = decltype(vwc)::value;
      const int64_t nvec = numel / VW;
      const int64_t nblocks = ceil_div(nvec, static_cast<int64_t>(kBlock) * kU);
      const bool use32 = numel <= static_cast<int64_t>(UINT32_MAX);
      fwd_apply_flat_kernel<T, A, VW><<<grid_for(nblocks), kBlock, 0, stream>>>(
          xp, yp, nvec, HxW, use32, HxW % VW == 0, p.relu, nblocks, cmean, cscale, cshift);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    const bool vec = ptrs16 && (C % VEC == 0);
    with_vw<VEC>(vec, [&](auto vwc) {
      constexpr int VW = decltype(vwc)::value;
      const ClTile ts = make_cl_tile(N, C, HxW, VW, target_blocks());
      const int64_t nparts = NC * ts.RC;
      at::Tensor ws = at::empty({2 * nparts + 3 * NC}, acc_opts);
      A* part_mean = ws.data_ptr<A>();
      A* part_m2 = part_mean + nparts;
      A* cmean = part_m2 + nparts;
      A* cscale = cmean + NC;
      A* cshift = cscale + NC;
      fwd_stats_cl_kernel<T, A, VW><<<grid_for(ts.nblocks), ts.L * ts.R, 0, stream>>>(
          xp, C, HxW, D, ts, part_mean, part_m2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fwd_finalize_kernel<T, A><<<grid_for(NG), kBlock, 0, stream>>>(
          xp, true, C, HxW, part_mean, part_m2, D * ts.RC, ts.RC, HxW, ts.RPC, NG, G, D, m, p.eps, gp, bp, meanp,
          rstdp, cmean, cscale, cshift);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const ClTile ta = make_cl_tile(N, C, HxW, VW, target_blocks());
      fwd_apply_cl_kernel<T, A, VW><<<grid_for(ta.nblocks), ta.L * ta.R, 0, stream>>>(
          xp, yp, C, HxW, ta, p.relu, cmean, cscale, cshift);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

template <typename T, typename A>
void backward_impl(const GroupNormProblem& p, const at::Tensor& dy, const at::Tensor& x,
                   const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gamma,
                   const at::Tensor& beta, at::Tensor& dx, at::Tensor& dgamma,
                   at::Tensor& dbeta) {
  constexpr int VEC = vec_of<T>();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = p.N, C = p.C, HxW = p.HxW, G = p.G, D = C / G, m = D * HxW;
  const int64_t NG = N * G, NC = N * C, numel = NC * HxW;
  const bool cl = p.channels_last;
  const T* dyp = dy.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* dxp = dx.defined() ? dx.data_ptr<T>() : nullptr;
  const A* gp = opt_ptr<A>(gamma);
  const A* bp = opt_ptr<A>(beta);
  const A* meanp = mean.data_ptr<A>();
  const A* rstdp = rstd.data_ptr<A>();
  A* dgp = dgamma.defined() ? dgamma.data_ptr<A>() : nullptr;
  A* dbp = dbeta.defined() ? dbeta.data_ptr<A>() : nullptr;
  const bool need_dx = dxp != nullptr;
  const bool need_wgb = dgp != nullptr || dbp != nullptr;
  if (!need_dx && !need_wgb) return;
  const bool ptrs16 = aligned16(dyp) && aligned16(xp) && (dxp == nullptr || aligned16(dxp));
  const auto acc_opts = x.options().dtype(std::is_same<A, double>::value ? at::kDouble
                                                                          : at::kFloat);

  auto launch_dgamma = [&](const A* wg, const A* wb) {
    const int64_t nblocks = ceil_div(C, 32);
    bwd_dgamma_kernel<A><<<grid_for(nblocks), kBlock, 0, stream>>>(wg, wb, N, C, nblocks, dgp,
                                                                    dbp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };

  // ---- one-pass path ----
  const PathMode mode = path_mode();
  if (mode != PathMode::kSplit) {
    const bool vec = ptrs16 && (cl ? (D % VEC == 0) : (m % VEC == 0));
    const int vw = vec ? VEC : 1;
    const int64_t K = bwd_onepass_elems<A>() / vw;
    const int wpg = onepass_wpg(m / vw, K);
    if (wpg > 0) {
      at::Tensor ws;
      A* wg = nullptr;
      A* wb = nullptr;
      if (need_wgb) {
        ws = at::empty({2 * NC}, acc_opts);
        wg = ws.data_ptr<A>();
        wb = wg + NC;
      }
      const int64_t nblocks = ceil_div(NG, kWarps / wpg);
      with_vw<VEC>(vec, [&](auto vwc) {
        constexpr int VW = decltype(vwc)::value;
        if (cl) {
          bwd_onepass_kernel<T, A, VW, true><<<grid_for(nblocks), kBlock, 0, stream>>>(
              dyp, xp, meanp, rstdp, gp, bp, dxp, wg, wb, C, static_cast<int>(HxW), G,
              static_cast<int>(D), static_cast<int>(m), NG, wpg, nblocks, p.relu, need_wgb);
        } else {
          bwd_onepass_kernel<T, A, VW, false><<<grid_for(nblocks), kBlock, 0, stream>>>(
              dyp, xp, meanp, rstdp, gp, bp, dxp, wg, wb, C, static_cast<int>(HxW), G,
              static_cast<int>(D), static_cast<int>(m), NG, wpg, nblocks, p.relu, need_wgb);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      if (need_wgb) launch_dgamma(wg, wb);
      return;
    }
  }

  // ---- split path ----
  // Workspace: part_ds, part_db (NC*P each), wg, wb (NC each), 5 coefficient arrays (NC each).
  auto run_finalize_and_rest = [&](A* part_ds, A* part_db, int64_t P, A* tail) {
    A* wg = tail;
    A* wb = wg + NC;
    A* cmean = wb + NC;
    A* cscale = cmean + NC;
    A* cshift = cscale + NC;
    A* cc2 = cshift + NC;
    A* cc3 = cc2 + NC;
    bwd_finalize_kernel<A><<<grid_for(NG), kBlock, 0, stream>>>(
        part_ds, part_db, P, NG, G, D, m, meanp, rstdp, gp, bp, need_wgb, wg, wb, need_dx, cmean,
        cscale, cshift, cc2, cc3);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (need_dx) {
      if (!cl) {
        const bool vec_a = ptrs16 && (numel % VEC == 0);
        with_vw<VEC>(vec_a, [&](auto vwc) {
          constexpr int VW = decltype(vwc)::value;
          const int64_t nvec = numel / VW;
          const int64_t nblocks = ceil_div(nvec, static_cast<int64_t>(kBlock) * kU);
          const bool use32 = numel <= static_cast<int64_t>(UINT32_MAX);
          bwd_dx_flat_kernel<T, A, VW><<<grid_for(nblocks), kBlock, 0, stream>>>(
              dyp, xp, dxp, nvec, HxW, use32, HxW % VW == 0, p.relu, nblocks, cmean, cscale,
              cshift, cc2, cc3);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      } else {
        const bool vec_a = ptrs16 && (C % VEC == 0);
        with_vw<VEC>(vec_a, [&](auto vwc) {
          constexpr int VW = decltype(vwc)::value;
          const ClTile ta = make_cl_tile(N, C, HxW, VW, target_blocks());
          bwd_dx_cl_kernel<T, A, VW><<<grid_for(ta.nblocks), ta.L * ta.R, 0, stream>>>(
              dyp, xp, dxp, C, HxW, ta, p.relu, cmean, cscale, cshift, cc2, cc3);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    }
    if (need_wgb) launch_dgamma(wg, wb);
  };

  const bool vec_r = aligned16(dyp) && aligned16(xp) &&
                     (cl ? (C % VEC == 0) : (HxW % VEC == 0));
  if (!cl) {
    with_vw<VEC>(vec_r, [&](auto vwc) {
      constexpr int VW = decltype(vwc)::value;
      const int64_t target_warps = target_blocks() * kWarps;
      const int64_t min_chunk = 32 * VW * kU;
      const int64_t max_s = std::max<int64_t>(1, HxW / min_chunk);
      int64_t S = std::min<int64_t>(max_s, std::max<int64_t>(1, ceil_div(target_warps, NC)));
      const int64_t chunk = round_up(ceil_div(HxW, S), VW);
      S = ceil_div(HxW, chunk);
      const int64_t nparts = NC * S;
      at::Tensor ws = at::empty({2 * nparts + 7 * NC}, acc_opts);
      A* part_ds = ws.data_ptr<A>();
      A* part_db = part_ds + nparts;
      const int64_t nblocks = ceil_div(nparts, kWarps);
      bwd_reduce_nchw_kernel<T, A, VW><<<grid_for(nblocks), kBlock, 0, stream>>>(
          dyp, xp, meanp, rstdp, gp, bp, C, HxW, G, D, S, chunk, nparts, p.relu, part_ds,
          part_db);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      run_finalize_and_rest(part_ds, part_db, S, part_db + nparts);
    });
  } else {
    with_vw<VEC>(vec_r, [&](auto vwc) {
      constexpr int VW = decltype(vwc)::value;
      const ClTile tr = make_cl_tile(N, C, HxW, VW, target_blocks());
      const int64_t nparts = NC * tr.RC;
      at::Tensor ws = at::empty({2 * nparts + 7 * NC}, acc_opts);
      A* part_ds = ws.data_ptr<A>();
      A* part_db = part_ds + nparts;
      bwd_reduce_cl_kernel<T, A, VW><<<grid_for(tr.nblocks), tr.L * tr.R, 0, stream>>>(
          dyp, xp, meanp, rstdp, gp, bp, C, HxW, G, D, tr, p.relu, part_ds, part_db);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      run_finalize_and_rest(part_ds, part_db, tr.RC, part_db + nparts);
    });
  }
}

template <typename T>
using acc_of = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

}  // namespace

void group_norm_forward_cuda(const GroupNormProblem& p, const at::Tensor& x,
                             const at::Tensor& gamma, const at::Tensor& beta, at::Tensor& y,
                             at::Tensor& mean, at::Tensor& rstd) {
  TORCH_CHECK(x.is_cuda(), "group_norm_forward_cuda: expected a CUDA tensor");
  TORCH_CHECK(p.N > 0 && p.C > 0 && p.HxW > 0 && p.G > 0 && p.C % p.G == 0,
              "group_norm_forward_cuda: invalid problem");
  c10::cuda::CUDAGuard guard(x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16,
                                  x.scalar_type(), "group_norm_forward_cuda", [&] {
                                    using A = acc_of<scalar_t>;
                                    forward_impl<scalar_t, A>(p, x, gamma, beta, y, mean, rstd);
                                  });
}

void group_norm_backward_cuda(const GroupNormProblem& p, const at::Tensor& dy,
                              const at::Tensor& x, const at::Tensor& mean,
                              const at::Tensor& rstd, const at::Tensor& gamma,
                              const at::Tensor& beta, at::Tensor& dx, at::Tensor& dgamma,
                              at::Tensor& dbeta) {
  TORCH_CHECK(x.is_cuda(), "group_norm_backward_cuda: expected a CUDA tensor");
  TORCH_CHECK(p.N > 0 && p.C > 0 && p.HxW > 0 && p.G > 0 && p.C % p.G == 0,
              "group_norm_backward_cuda: invalid problem");
  c10::cuda::CUDAGuard guard(x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16,
                                  x.scalar_type(), "group_norm_backward_cuda", [&] {
                                    using A = acc_of<scalar_t>;
                                    backward_impl<scalar_t, A>(p, dy, x, mean, rstd, gamma, beta,
                                                               dx, dgamma, dbeta);
                                  });
}

TORCH_LIBRARY_IMPL(gn_detectron, CUDA, m) {
  register_group_norm_kernels<group_norm_forward_cuda, group_norm_backward_cuda>(m);
}

}  // namespace gn_detectron
