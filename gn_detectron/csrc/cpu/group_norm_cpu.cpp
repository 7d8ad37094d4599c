// CPU kernels of the gn_detectron Group Normalization operator (contract: ../group_norm.h).
//
// NCHW, x is (N, C, HxW): a group (n, g) is one contiguous run of m = (C/G)*HxW elements.
//   forward : work items are the N*G groups. Per group: moments of fixed blocks of kBlock elements
//             (two-pass inside the L1-resident block, corrected: mean = mu + sum(x - mu)/k), the
//             blocks merged in double with Chan's formula in block order; then, walking the blocks
//             backwards so the ones read last come from cache, y = (x - mean)*scale_c + beta_c
//             (+relu) with scale_c = rstd*gamma_c.
//   backward: per channel row ds = sum g*(x - mean) (centred, so no cancellation for large means)
//             and db = sum g, g = dy masked for relu where the stored output is 0 (see
//             relu_threshold); per group the coefficients of dx = scale_c*g + bx*(x - mean) + c1;
//             then dx, blocks backwards again. Work items are (block of samples, group).
// channels_last, x is (N, HxW, C): rows of C contiguous channels, handled natively.
//   forward : per chunk of rows of a sample: per-channel sums, per-group chunk means, per-channel
//             sums of deviations (the chunk stays in cache for its second pass); chunk moments are
//             merged per (n, g) in chunk order; then y row by row with per-channel mean/scale/shift
//             vectors. Samples are the work items when there are enough of them, otherwise the
//             chunks of rows of all samples are spread over the threads, pass by pass.
//   backward: per chunk, per-channel partial ds/db into a small buffer, summed in chunk order;
//             coefficients per group; dx row by row. Same two parallel schemes as the forward.
// When there are too few work items for the threads, the same blocks/chunks are spread over the
// threads and their partial results combined afterwards in the same order.
// Determinism: every reduction is cut into pieces whose boundaries depend on the problem shape
// only, each piece is reduced by the same code in a fixed order, and the pieces are combined in a
// fixed order (dgamma/dbeta: sample blocks, see SampleBlocks); elementwise results do not depend on
// alignment (explicit fma, see fmadd). So outputs and gradients are bitwise identical for any
// thread count and run. fp16/bf16 are converted block by block to float; the math is in float
// (double for double input). Outputs of 16 MiB or more are written with streaming stores.
#include "../group_norm.h"
#include "../register.h"
#include "group_norm_cpu_util.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace gn_detectron {
namespace {

using namespace cpu;

constexpr int64_t kBlock = 4096;      // NCHW reduction block (elements): 16 KiB of float, L1
constexpr int64_t kClFwdElems = 16384;  // channels_last forward chunk target (elements), L2
constexpr int64_t kClFwdMaxRows = 512;
constexpr int64_t kClBwdElems = 65536;  // channels_last backward chunk target (elements)
constexpr int64_t kClBwdMaxRows = 256;  // rows summed in T per chunk (then double)
constexpr int64_t kConvElems = 4096;    // conversion batch for fp16/bf16 (elements)
constexpr int64_t kMinTaskElems = 16384;  // smallest amount of work worth a thread
constexpr int64_t kStreamBytes = int64_t(16) << 20;  // outputs this large bypass the caches

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether a float/double output `out` of this problem is written with streaming stores: when it is
// large and its memory is already resident (see pages_resident).
template <typename scalar_t>
inline bool use_stream(const GroupNormProblem& p, const void* out) {
  if constexpr (!std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
    (void)p;
    (void)out;
    return false;
  } else {
    const int64_t bytes = p.N * p.C * p.HxW * int64_t(sizeof(scalar_t));
    return GN_CPU_HAVE_STREAM && bytes >= kStreamBytes && pages_resident(out, bytes);
  }
}

inline int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, kMinTaskElems / std::max<int64_t>(1, elems_per_item));
}

// True when the groups alone keep every thread busy (else finer work items are used; both ways
// compute bitwise the same numbers).
inline bool enough_groups(int64_t NG) {
  const int64_t nt = at::get_num_threads();
  return NG >= 4 * nt || (NG >= nt && NG % nt == 0);
}

// The same for work items that are whole samples or blocks of samples.
inline bool enough_items(int64_t items) { return enough_groups(items); }

template <typename T>
inline T affine_or(const T* p, int64_t c, T dflt) {
  return p ? p[c] : dflt;
}

template <typename T>
inline void finish_moments(const Moments& mo, int64_t m, double eps, T& mean, T& rstd) {
  const double var = std::max(mo.m2 / double(m), 0.0);
  mean = T(mo.mean);
  rstd = T(1.0 / std::sqrt(var + eps));
}

// dgamma/dbeta are sums over the samples. The samples are cut into at most kMaxNBlocks blocks of
// consecutive samples (a function of N only); each block's sums are accumulated in sample order by
// whichever thread owns the block, then the blocks are added in block order. So no per-(n, c)
// buffer is needed when the work is split by samples or groups, and the result does not depend
// on the thread count.
constexpr int64_t kMaxNBlocks = 64;

struct SampleBlocks {
  int64_t size, count;
  explicit SampleBlocks(int64_t N)
      : size(ceil_div(N, kMaxNBlocks)), count(ceil_div(N, ceil_div(N, kMaxNBlocks))) {}
  int64_t begin(int64_t blk) const { return blk * size; }
  int64_t end(int64_t blk, int64_t N) const { return std::min(N, (blk + 1) * size); }
};

// pg[j] += r*ds[j], pb[j] += db[j] for j < nc: one sample's contribution to its block.
inline void add_affine(double r, const double* ds, const double* db, int64_t nc, double* pg,
                       double* pb) {
  for (int64_t j = 0; j < nc; ++j) {
    pg[j] = fmadd(r, ds[j], pg[j]);
    pb[j] += db[j];
  }
}

// dgamma[c] = sum_blk PG[blk, c], dbeta[c] = sum_blk PB[blk, c], blocks in order.
template <typename T>
void finish_affine(int64_t C, int64_t nblk, const std::vector<double>& PG,
                   const std::vector<double>& PB, T* dgamma, T* dbeta) {
  std::vector<double> sg(C, 0.0), sb(C, 0.0);
  for (int64_t blk = 0; blk < nblk; ++blk)
    for (int64_t c = 0; c < C; ++c) {
      sg[c] += PG[blk * C + c];
      sb[c] += PB[blk * C + c];
    }
  for (int64_t c = 0; c < C; ++c) {
    if (dgamma) dgamma[c] = T(sg[c]);
    if (dbeta) dbeta[c] = T(sb[c]);
  }
}

// dx = sc*g + bx*(x - mean) + c1 with bx, c1 from the group sums (see group_norm.h):
// bx = -rstd^3/m * sum_c gamma_c*ds_c, c1 = -rstd/m * sum_c gamma_c*db_c.
template <typename T>
inline void group_coeffs(const double* ds, const double* db, const T* gamma, int64_t c0,
                         int64_t D, double r, double m, T& bx, T& c1) {
  double sds = 0, sdb = 0;
  for (int64_t j = 0; j < D; ++j) {
    const double gc = gamma ? double(gamma[c0 + j]) : 1.0;
    sds += gc * ds[j];
    sdb += gc * db[j];
  }
  bx = T(-r * r * r * sds / m);
  c1 = T(-r * sdb / m);
}

// =============================================================================================
// NCHW

template <typename scalar_t, bool RELU>
void forward_nchw(const GroupNormProblem& p, const scalar_t* X, const at::opmath_type<scalar_t>* gamma,
                  const at::opmath_type<scalar_t>* beta, scalar_t* Y,
                  at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* rstd) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kConv = !std::is_same_v<scalar_t, T>;
  const int64_t N = p.N, C = p.C, HW = p.HxW, G = p.G, D = C / G, m = D * HW, NG = N * G;
  const int64_t nb = ceil_div(m, kBlock);
  const bool stream = use_stream<scalar_t>(p, Y);

  auto block_stats = [&](int64_t i, int64_t b, T* buf) {
    const int64_t off = b * kBlock, len = std::min(kBlock, m - off);
    return block_moments(load_block<scalar_t, T>(X + i * m + off, buf, len), len);
  };
  // y of flat block b of group i (the block may span several channel rows). The block is computed
  // into a cache-resident buffer first when it must be converted or streamed out.
  auto apply_block = [&](int64_t i, int64_t b, T* bx, T* by) {
    const int64_t g = i % G, off = b * kBlock, len = std::min(kBlock, m - off);
    const scalar_t* xs = X + i * m + off;
    scalar_t* ys = Y + i * m + off;
    const T* xb = load_block<scalar_t, T>(xs, bx, len);
    T* yb = stream ? by : out_block<scalar_t, T>(ys, by);
    const T mu = mean[i], rs = rstd[i];
    for (int64_t f = off, j = off / HW; f < off + len; ++j) {
      const int64_t e = std::min(off + len, (j + 1) * HW), c = g * D + j;
      apply_row<T, RELU>(xb + (f - off), yb + (f - off), e - f, mu, rs * affine_or(gamma, c, T(1)),
                         affine_or(beta, c, T(0)));
      f = e;
    }
    if constexpr (kConv) store_block<scalar_t, T>(ys, yb, len);
    else if (stream) stream_copy(ys, yb, len);
  };

  if (enough_groups(NG)) {
    at::parallel_for(0, NG, grain_for(m), [&](int64_t begin, int64_t end) {
      std::vector<T> buf(kConv || stream ? 2 * kBlock : 0);
      for (int64_t i = begin; i < end; ++i) {
        Moments acc;
        for (int64_t b = 0; b < nb; ++b) merge(acc, block_stats(i, b, buf.data()));
        finish_moments(acc, m, p.eps, mean[i], rstd[i]);
        // Backwards: the blocks read last by the statistics are still in cache.
        for (int64_t b = nb; b-- > 0;) apply_block(i, b, buf.data(), buf.data() + kBlock);
      }
      if (stream) stream_fence();
    });
    return;
  }
  std::vector<Moments> part(NG * nb);
  at::parallel_for(0, NG * nb, grain_for(kBlock), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(kConv ? kBlock : 0);
    for (int64_t j = begin; j < end; ++j) part[j] = block_stats(j / nb, j % nb, buf.data());
  });
  at::parallel_for(0, NG, grain_for(nb * 64), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Moments acc;
      for (int64_t b = 0; b < nb; ++b) merge(acc, part[i * nb + b]);
      finish_moments(acc, m, p.eps, mean[i], rstd[i]);
    }
  });
  at::parallel_for(0, NG * nb, grain_for(kBlock), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(kConv || stream ? 2 * kBlock : 0);
    for (int64_t j = end; j-- > begin;) apply_block(j / nb, j % nb, buf.data(), buf.data() + kBlock);
    if (stream) stream_fence();
  });
}

template <typename scalar_t, bool RELU>
void backward_nchw(const GroupNormProblem& p, const scalar_t* dY, const scalar_t* X,
                   const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* rstd,
                   const at::opmath_type<scalar_t>* gamma, const at::opmath_type<scalar_t>* beta,
                   scalar_t* dX, at::opmath_type<scalar_t>* dgamma,
                   at::opmath_type<scalar_t>* dbeta) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kConv = !std::is_same_v<scalar_t, T>;
  const int64_t N = p.N, C = p.C, HW = p.HxW, G = p.G, D = C / G;
  const int64_t m_i = D * HW, nb = ceil_div(m_i, kBlock);
  const double m = double(m_i);
  const int64_t nbr = ceil_div(HW, kBlock);
  const bool stream = dX && use_stream<scalar_t>(p, dX);
  const bool affine = dgamma || dbeta;
  const SampleBlocks sb(N);
  std::vector<double> PG(affine ? sb.count * C : 0), PB(affine ? sb.count * C : 0);

  // (ds, db) partial sums of n elements of one channel row; short rows (H*W small) skip the SIMD
  // set-up. Every path below sums a given row with this same function.
  constexpr T thr = relu_threshold<scalar_t>();
  auto row_sums = [](const T* dy, const T* x, int64_t n, T mu, T sc, T b, T& s, T& d) {
    if (n >= 2 * Vec<T>::W) return reduce_bwd<T, RELU>(dy, x, n, mu, sc, b, thr, s, d);
    T ts = 0, tb = 0;
    for (int64_t k = 0; k < n; ++k) {
      const T xc = x[k] - mu;
      T g = dy[k];
      if constexpr (RELU) g = (fmadd(xc, sc, b) > thr) ? g : T(0);
      ts = fmadd(g, xc, ts);
      tb += g;
    }
    s = ts;
    d = tb;
  };
  // Partial (ds, db) of block b of channel row `row` (split path).
  auto block_sums = [&](int64_t row, int64_t b, T* bufs, T& s, T& d) {
    const int64_t c = row % C, i = (row / C) * G + c / D;
    const int64_t off = row * HW + b * kBlock, len = std::min(kBlock, HW - b * kBlock);
    const T* xb = load_block<scalar_t, T>(X + off, bufs, len);
    const T* gb = load_block<scalar_t, T>(dY + off, bufs + kBlock, len);
    row_sums(gb, xb, len, mean[i], rstd[i] * affine_or(gamma, c, T(1)), affine_or(beta, c, T(0)),
             s, d);
  };
  // ds/db (D each) of the rows of group i (fused path): rows of at most kBlock elements are loaded
  // kBlock/HW rows at a time, longer ones block by block; the sums match block_sums's.
  auto group_sums = [&](int64_t i, T* bufs, double* ds_out, double* db_out) {
    const int64_t g = i % G, r0 = (i / G) * C + g * D;
    const T mu = mean[i], rs = rstd[i];
    const bool whole = HW <= kBlock;
    const int64_t rows_per = whole ? kBlock / HW : 1;
    for (int64_t j0 = 0; j0 < D; j0 += rows_per) {
      const int64_t nr = std::min(rows_per, D - j0);
      const int64_t at0 = (r0 + j0) * HW;
      const T* xb = whole ? load_block<scalar_t, T>(X + at0, bufs, nr * HW) : nullptr;
      const T* gb = whole ? load_block<scalar_t, T>(dY + at0, bufs + kBlock, nr * HW) : nullptr;
      for (int64_t jj = 0; jj < nr; ++jj) {
        const int64_t c = g * D + j0 + jj;
        const T sc = rs * affine_or(gamma, c, T(1)), bc = affine_or(beta, c, T(0));
        double ds = 0, db = 0;
        for (int64_t b = 0; b < nbr; ++b) {
          const int64_t off = b * kBlock, len = std::min(kBlock, HW - off);
          const T* xr = whole ? xb + jj * HW : load_block<scalar_t, T>(X + at0 + off, bufs, len);
          const T* gr =
              whole ? gb + jj * HW : load_block<scalar_t, T>(dY + at0 + off, bufs + kBlock, len);
          T s, d;
          row_sums(gr, xr, len, mu, sc, bc, s, d);
          ds += double(s);
          db += double(d);
        }
        ds_out[j0 + jj] = ds;
        db_out[j0 + jj] = db;
      }
    }
  };
  // dx of flat block b of group i.
  auto dx_block = [&](int64_t i, int64_t b, T bx, T c1, T* bufs) {
    const int64_t g = i % G, off = b * kBlock, len = std::min<int64_t>(kBlock, m_i - off);
    const int64_t at = i * m_i + off;
    const T* xb = load_block<scalar_t, T>(X + at, bufs, len);
    const T* gb = load_block<scalar_t, T>(dY + at, bufs + kBlock, len);
    T* ob = stream ? bufs + 2 * kBlock : out_block<scalar_t, T>(dX + at, bufs + 2 * kBlock);
    const T mu = mean[i], rs = rstd[i];
    for (int64_t f = off, j = off / HW; f < off + len; ++j) {
      const int64_t e = std::min(off + len, (j + 1) * HW), c = g * D + j;
      dx_row<T, RELU>(gb + (f - off), xb + (f - off), ob + (f - off), e - f, mu,
                      rs * affine_or(gamma, c, T(1)), affine_or(beta, c, T(0)), thr, bx, c1);
      f = e;
    }
    if constexpr (kConv) store_block<scalar_t, T>(dX + at, ob, len);
    else if (stream) stream_copy(dX + at, ob, len);
  };

  const int64_t items = sb.count * G;  // (block of samples, group)
  if (enough_items(items)) {
    at::parallel_for(0, items, grain_for(2 * m_i * sb.size), [&](int64_t begin, int64_t end) {
      std::vector<T> bufs(kConv || stream ? 3 * kBlock : 0);
      std::vector<double> ds(D), db(D);
      for (int64_t it = begin; it < end; ++it) {
        const int64_t blk = it / G, g = it % G;
        for (int64_t n = sb.begin(blk); n < sb.end(blk, N); ++n) {
          const int64_t i = n * G + g;
          group_sums(i, bufs.data(), ds.data(), db.data());
          if (affine)
            add_affine(double(rstd[i]), ds.data(), db.data(), D, PG.data() + blk * C + g * D,
                       PB.data() + blk * C + g * D);
          if (!dX) continue;
          T bx, c1;
          group_coeffs(ds.data(), db.data(), gamma, g * D, D, double(rstd[i]), m, bx, c1);
          for (int64_t b = nb; b-- > 0;) dx_block(i, b, bx, c1, bufs.data());
        }
      }
      if (stream) stream_fence();
    });
  } else {
    // Few items: split every channel row into its blocks, keep per-(n, c) sums (N is small here).
    const int64_t NG = N * G, nitems = N * C * nbr;
    std::vector<T> PS(nitems), PBk(nitems);
    std::vector<double> DS(N * C), DB(N * C);
    at::parallel_for(0, nitems, grain_for(2 * std::min(HW, kBlock)), [&](int64_t begin, int64_t end) {
      std::vector<T> bufs(kConv ? 2 * kBlock : 0);
      for (int64_t j = begin; j < end; ++j) block_sums(j / nbr, j % nbr, bufs.data(), PS[j], PBk[j]);
    });
    for (int64_t row = 0; row < N * C; ++row) {
      double ds = 0, db = 0;
      for (int64_t b = 0; b < nbr; ++b) {
        ds += double(PS[row * nbr + b]);
        db += double(PBk[row * nbr + b]);
      }
      DS[row] = ds;
      DB[row] = db;
    }
    if (affine)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < G; ++g) {
          const int64_t blk = n / sb.size, o = n * C + g * D;
          add_affine(double(rstd[n * G + g]), DS.data() + o, DB.data() + o, D,
                     PG.data() + blk * C + g * D, PB.data() + blk * C + g * D);
        }
    if (dX) {
      std::vector<T> BX(NG), C1(NG);
      for (int64_t i = 0; i < NG; ++i) {
        const int64_t o = (i / G) * C + (i % G) * D;
        group_coeffs(DS.data() + o, DB.data() + o, gamma, (i % G) * D, D, double(rstd[i]), m,
                     BX[i], C1[i]);
      }
      at::parallel_for(0, NG * nb, grain_for(3 * kBlock), [&](int64_t begin, int64_t end) {
        std::vector<T> bufs(kConv || stream ? 3 * kBlock : 0);
        for (int64_t j = end; j-- > begin;) {
          const int64_t i = j / nb;
          dx_block(i, j % nb, BX[i], C1[i], bufs.data());
        }
        if (stream) stream_fence();
      });
    }
  }
  if (affine) finish_affine(C, sb.count, PG, PB, dgamma, dbeta);
}

// =============================================================================================
// channels_last

// s[c] = sum_r x[r, c] over `rows` rows of C channels, in row order, channel blocks in registers.
template <typename T>
inline void sum_cl_chunk(const T* x, int64_t rows, int64_t C, T* s) {
  using VT = V<T>;
  constexpr int64_t W = Vec<T>::W;
  int64_t c = 0;
  for (; c + 4 * W <= C; c += 4 * W) {
    VT a0{}, a1{}, a2{}, a3{};
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * C + c;
      a0 += loadu(xr);
      a1 += loadu(xr + W);
      a2 += loadu(xr + 2 * W);
      a3 += loadu(xr + 3 * W);
    }
    std::memcpy(s + c, &a0, sizeof(VT));
    std::memcpy(s + c + W, &a1, sizeof(VT));
    std::memcpy(s + c + 2 * W, &a2, sizeof(VT));
    std::memcpy(s + c + 3 * W, &a3, sizeof(VT));
  }
  for (; c + W <= C; c += W) {
    VT a0{};
    for (int64_t r = 0; r < rows; ++r) a0 += loadu(x + r * C + c);
    std::memcpy(s + c, &a0, sizeof(VT));
  }
  for (; c < C; ++c) {
    T a0 = 0;
    for (int64_t r = 0; r < rows; ++r) a0 += x[r * C + c];
    s[c] = a0;
  }
}

// Over the `rows` rows of C channels at x: d[c] = sum_r (x[r, c] - mu[c]),
// q[c] = sum_r (x[r, c] - mu[c])^2, summed in row order. Blocks of channels are kept in registers
// (the chunk is cache resident here).
template <typename T>
inline void dev_cl_chunk(const T* x, int64_t rows, int64_t C, const T* mu, T* d, T* q) {
  using VT = V<T>;
  constexpr int64_t W = Vec<T>::W;
  int64_t c = 0;
  for (; c + 4 * W <= C; c += 4 * W) {
    const VT m0 = loadu(mu + c), m1 = loadu(mu + c + W), m2 = loadu(mu + c + 2 * W),
             m3 = loadu(mu + c + 3 * W);
    VT d0{}, d1{}, d2{}, d3{}, q0{}, q1{}, q2{}, q3{};
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * C + c;
      const VT v0 = loadu(xr) - m0, v1 = loadu(xr + W) - m1, v2 = loadu(xr + 2 * W) - m2,
               v3 = loadu(xr + 3 * W) - m3;
      d0 += v0;
      d1 += v1;
      d2 += v2;
      d3 += v3;
      q0 = fmadd(v0, v0, q0);
      q1 = fmadd(v1, v1, q1);
      q2 = fmadd(v2, v2, q2);
      q3 = fmadd(v3, v3, q3);
    }
    std::memcpy(d + c, &d0, sizeof(VT));
    std::memcpy(d + c + W, &d1, sizeof(VT));
    std::memcpy(d + c + 2 * W, &d2, sizeof(VT));
    std::memcpy(d + c + 3 * W, &d3, sizeof(VT));
    std::memcpy(q + c, &q0, sizeof(VT));
    std::memcpy(q + c + W, &q1, sizeof(VT));
    std::memcpy(q + c + 2 * W, &q2, sizeof(VT));
    std::memcpy(q + c + 3 * W, &q3, sizeof(VT));
  }
  for (; c + W <= C; c += W) {
    const VT m0 = loadu(mu + c);
    VT d0{}, q0{};
    for (int64_t r = 0; r < rows; ++r) {
      const VT v0 = loadu(x + r * C + c) - m0;
      d0 += v0;
      q0 = fmadd(v0, v0, q0);
    }
    std::memcpy(d + c, &d0, sizeof(VT));
    std::memcpy(q + c, &q0, sizeof(VT));
  }
  for (; c < C; ++c) {
    T d0 = 0, q0 = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const T v = x[r * C + c] - mu[c];
      d0 += v;
      q0 = fmadd(v, v, q0);
    }
    d[c] = d0;
    q[c] = q0;
  }
}

// y[r, c] = (x[r, c] - mu[c])*sc[c] + b[c] (then relu) for `rows` rows of C channels. With NT the
// stores are streaming ones: y and the row pitch must then be 32-byte aligned.
template <typename T, bool RELU, bool NT>
inline void apply_cl_rows(const T* x, T* y, int64_t rows, int64_t C, const T* mu, const T* sc,
                          const T* b) {
  using VT = V<T>;
  constexpr int64_t W = Vec<T>::W;
  const VT zero{};
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    int64_t c = 0;
    for (; c + W <= C; c += W) {
      VT z = fmadd(loadu(xr + c) - loadu(mu + c), loadu(sc + c), loadu(b + c));
      if constexpr (RELU) z = z < zero ? zero : z;
#if GN_CPU_HAVE_STREAM
      if constexpr (NT) {
        stream_store(yr + c, z);
        continue;
      }
#endif
      std::memcpy(yr + c, &z, sizeof(VT));
    }
    for (; c < C; ++c) {
      T z = fmadd(xr[c] - mu[c], sc[c], b[c]);
      if constexpr (RELU) z = z < T(0) ? T(0) : z;
      yr[c] = z;
    }
  }
}

// ds[c] += sum_r g*(x[r, c] - mu[c]), db[c] += sum_r g over `rows` rows (row order), g = dy or,
// with RELU, dy where (x - mu)*sc + b > thr (see relu_threshold). Blocks of channels are kept in
// registers.
template <typename T, bool RELU>
inline void bwd_cl_rows(const T* dy, const T* x, int64_t rows, int64_t C, const T* mu,
                        const T* sc, const T* b, T thr, T* ds, T* db) {
  using VT = V<T>;
  constexpr int64_t W = Vec<T>::W;
  const VT zero{};
  const VT lo = splat<T>(thr);
  int64_t c = 0;
  for (; c + 2 * W <= C; c += 2 * W) {
    const VT m0 = loadu(mu + c), m1 = loadu(mu + c + W);
    const VT s0 = loadu(sc + c), s1 = loadu(sc + c + W);
    const VT b0 = loadu(b + c), b1 = loadu(b + c + W);
    VT p0 = loadu(ds + c), p1 = loadu(ds + c + W), q0 = loadu(db + c), q1 = loadu(db + c + W);
    for (int64_t r = 0; r < rows; ++r) {
      const VT x0 = loadu(x + r * C + c) - m0, x1 = loadu(x + r * C + c + W) - m1;
      VT g0 = loadu(dy + r * C + c), g1 = loadu(dy + r * C + c + W);
      if constexpr (RELU) {
        g0 = (fmadd(x0, s0, b0) > lo) ? g0 : zero;
        g1 = (fmadd(x1, s1, b1) > lo) ? g1 : zero;
      }
      p0 = fmadd(g0, x0, p0);
      p1 = fmadd(g1, x1, p1);
      q0 += g0;
      q1 += g1;
    }
    std::memcpy(ds + c, &p0, sizeof(VT));
    std::memcpy(ds + c + W, &p1, sizeof(VT));
    std::memcpy(db + c, &q0, sizeof(VT));
    std::memcpy(db + c + W, &q1, sizeof(VT));
  }
  for (; c + W <= C; c += W) {
    const VT m0 = loadu(mu + c), s0 = loadu(sc + c), b0 = loadu(b + c);
    VT p0 = loadu(ds + c), q0 = loadu(db + c);
    for (int64_t r = 0; r < rows; ++r) {
      const VT x0 = loadu(x + r * C + c) - m0;
      VT g0 = loadu(dy + r * C + c);
      if constexpr (RELU) g0 = (fmadd(x0, s0, b0) > lo) ? g0 : zero;
      p0 = fmadd(g0, x0, p0);
      q0 += g0;
    }
    std::memcpy(ds + c, &p0, sizeof(VT));
    std::memcpy(db + c, &q0, sizeof(VT));
  }
  for (; c < C; ++c) {
    T p0 = ds[c], q0 = db[c];
    for (int64_t r = 0; r < rows; ++r) {
      const T xc = x[r * C + c] - mu[c];
      T g = dy[r * C + c];
      if constexpr (RELU) g = (fmadd(xc, sc[c], b[c]) > thr) ? g : T(0);
      p0 = fmadd(g, xc, p0);
      q0 += g;
    }
    ds[c] = p0;
    db[c] = q0;
  }
}

// dx[r, c] = sc[c]*g + bx[c]*(x - mu[c]) + c1[c] for `rows` rows (g as in bwd_cl_rows). With NT
// the stores are streaming ones: dx and the row pitch must then be 32-byte aligned.
template <typename T, bool RELU, bool NT>
inline void dx_cl_rows(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, const T* mu,
                       const T* sc, const T* b, T thr, const T* bx, const T* c1) {
  using VT = V<T>;
  constexpr int64_t W = Vec<T>::W;
  const VT zero{};
  const VT lo = splat<T>(thr);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    const T* gr = dy + r * C;
    T* dr = dx + r * C;
    int64_t c = 0;
    for (; c + W <= C; c += W) {
      const VT xc = loadu(xr + c) - loadu(mu + c);
      const VT s = loadu(sc + c);
      VT g = loadu(gr + c);
      if constexpr (RELU) g = (fmadd(xc, s, loadu(b + c)) > lo) ? g : zero;
      const VT z = fmadd(s, g, fmadd(loadu(bx + c), xc, loadu(c1 + c)));
#if GN_CPU_HAVE_STREAM
      if constexpr (NT) {
        stream_store(dr + c, z);
        continue;
      }
#endif
      std::memcpy(dr + c, &z, sizeof(VT));
    }
    for (; c < C; ++c) {
      const T xc = xr[c] - mu[c];
      T g = gr[c];
      if constexpr (RELU) g = (fmadd(xc, sc[c], b[c]) > thr) ? g : T(0);
      dr[c] = fmadd(sc[c], g, fmadd(bx[c], xc, c1[c]));
    }
  }
}

// Per-(n, c) vectors of sample n: MC = mean[n, g], SC = rstd[n, g]*gamma[c], BC = beta[c].
template <typename T>
void channel_params(const GroupNormProblem& p, int64_t n, const T* mean, const T* rstd,
                    const T* gamma, const T* beta, T* MC, T* SC, T* BC) {
  const int64_t C = p.C, G = p.G, D = C / G;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t i = n * G + c / D;
    MC[c] = mean[i];
    SC[c] = rstd[i] * affine_or(gamma, c, T(1));
    BC[c] = affine_or(beta, c, T(0));
  }
}

// True when whole samples keep every thread busy: then one task does all of a sample (its second
// pass reads it from cache). Otherwise the chunks of rows of all samples are spread over the
// threads, pass by pass. Both compute bitwise the same numbers.
inline bool enough_samples(int64_t N) { return N >= 4 * int64_t(at::get_num_threads()); }

template <typename scalar_t, bool RELU>
void forward_cl(const GroupNormProblem& p, const scalar_t* X, const at::opmath_type<scalar_t>* gamma,
                const at::opmath_type<scalar_t>* beta, scalar_t* Y,
                at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* rstd) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kConv = !std::is_same_v<scalar_t, T>;
  const int64_t N = p.N, C = p.C, HW = p.HxW, G = p.G, D = C / G;
  const int64_t R = std::clamp<int64_t>(kClFwdElems / C, 1, kClFwdMaxRows);  // stats chunk rows
  const int64_t nch = ceil_div(HW, R);
  const int64_t Ra = std::max<int64_t>(1, kConvElems / C);  // apply chunk rows
  const bool stream = use_stream<scalar_t>(p, Y);
  const bool by_sample = enough_samples(N);

  // Moments of the G groups of chunk k of sample n, into part[k*G, (k+1)*G).
  struct StatsBufs {
    std::vector<T> x, S, M, Q;
  };
  auto make_stats_bufs = [&] {
    return StatsBufs{std::vector<T>(kConv ? R * C : 0), std::vector<T>(C), std::vector<T>(C),
                     std::vector<T>(C)};
  };
  auto stats_chunk = [&](int64_t n, int64_t k, Moments* part, StatsBufs& bf) {
    const int64_t r0 = k * R, rows = std::min(R, HW - r0);
    const T* xb = load_block<scalar_t, T>(X + (n * HW + r0) * C, bf.x.data(), rows * C);
    T* S = bf.S.data();
    T* M = bf.M.data();
    T* Q = bf.Q.data();
    sum_cl_chunk(xb, rows, C, S);
    const double cnt = double(rows * D), inv = 1.0 / cnt;
    for (int64_t g = 0; g < G; ++g) {
      double gs = 0;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) gs += double(S[c]);
      std::fill(M + g * D, M + (g + 1) * D, T(gs * inv));
    }
    dev_cl_chunk(xb, rows, C, M, S, Q);
    for (int64_t g = 0; g < G; ++g) {
      double d = 0, q = 0;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        d += double(S[c]);
        q += double(Q[c]);
      }
      Moments& mo = part[k * G + g];
      mo.n = cnt;
      mo.mean = double(M[g * D]) + d * inv;
      mo.m2 = std::max(q - d * d * inv, 0.0);
    }
  };
  // mean/rstd of group g of sample n from its chunks, merged in chunk order.
  auto merge_group = [&](int64_t n, int64_t g, const Moments* part) {
    Moments acc;
    for (int64_t k = 0; k < nch; ++k) merge(acc, part[k * G + g]);
    finish_moments(acc, D * HW, p.eps, mean[n * G + g], rstd[n * G + g]);
  };
  // Streaming stores go straight to y when every row starts 32-byte aligned.
  const bool direct_stream =
      stream && (C * int64_t(sizeof(T))) % 32 == 0 && reinterpret_cast<uintptr_t>(Y) % 32 == 0;
  // y of rows [r0, r1) of sample n, in batches of Ra rows from the last one backwards (the rows
  // the statistics read last are the ones still in cache).
  auto apply_rows = [&](int64_t n, int64_t r0, int64_t r1, const T* MC, const T* SC, const T* BC,
                        T* xbuf, T* ybuf) {
    for (int64_t re = r1; re > r0;) {
      const int64_t rs = std::max(r0, re - Ra), rows = re - rs;
      const int64_t off = (n * HW + rs) * C;
      const T* xb = load_block<scalar_t, T>(X + off, xbuf, rows * C);
      if (direct_stream) {
        apply_cl_rows<T, RELU, true>(xb, reinterpret_cast<T*>(Y + off), rows, C, MC, SC, BC);
      } else {
        T* yb = stream ? ybuf : out_block<scalar_t, T>(Y + off, ybuf);
        apply_cl_rows<T, RELU, false>(xb, yb, rows, C, MC, SC, BC);
        if constexpr (kConv) store_block<scalar_t, T>(Y + off, yb, rows * C);
        else if (stream) stream_copy(Y + off, yb, rows * C);
      }
      re -= rows;
    }
  };
  const int64_t abuf = (kConv || stream) ? Ra * C : 0;

  if (by_sample) {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      StatsBufs bf = make_stats_bufs();
      std::vector<Moments> part(nch * G);
      std::vector<T> prm(3 * C), xbuf(kConv ? Ra * C : 0), ybuf(abuf);
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t k = 0; k < nch; ++k) stats_chunk(n, k, part.data(), bf);
        for (int64_t g = 0; g < G; ++g) merge_group(n, g, part.data());
        channel_params(p, n, mean, rstd, gamma, beta, prm.data(), prm.data() + C, prm.data() + 2 * C);
        apply_rows(n, 0, HW, prm.data(), prm.data() + C, prm.data() + 2 * C, xbuf.data(), ybuf.data());
      }
      if (stream) stream_fence();
    });
    return;
  }
  // Few samples: chunks of all samples spread over the threads, three parallel passes.
  std::vector<Moments> part(N * nch * G);
  std::vector<T> prm(N * 3 * C);
  at::parallel_for(0, N * nch, grain_for(R * C), [&](int64_t begin, int64_t end) {
    StatsBufs bf = make_stats_bufs();
    for (int64_t j = begin; j < end; ++j) stats_chunk(j / nch, j % nch, part.data() + (j / nch) * nch * G, bf);
  });
  at::parallel_for(0, N * G, grain_for(nch * 64), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) merge_group(i / G, i % G, part.data() + (i / G) * nch * G);
  });
  for (int64_t n = 0; n < N; ++n) {
    T* pn = prm.data() + n * 3 * C;
    channel_params(p, n, mean, rstd, gamma, beta, pn, pn + C, pn + 2 * C);
  }
  // Same split of the chunks over the threads as the statistics, walked backwards, so each
  // thread finds its last rows in its own cache.
  at::parallel_for(0, N * nch, grain_for(R * C), [&](int64_t begin, int64_t end) {
    std::vector<T> xbuf(kConv ? Ra * C : 0), ybuf(abuf);
    for (int64_t j = end; j-- > begin;) {
      const int64_t n = j / nch, k = j % nch;
      const T* pn = prm.data() + n * 3 * C;
      apply_rows(n, k * R, std::min(HW, (k + 1) * R), pn, pn + C, pn + 2 * C, xbuf.data(),
                 ybuf.data());
    }
    if (stream) stream_fence();
  });
}

template <typename scalar_t, bool RELU>
void backward_cl(const GroupNormProblem& p, const scalar_t* dY, const scalar_t* X,
                 const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* rstd,
                 const at::opmath_type<scalar_t>* gamma, const at::opmath_type<scalar_t>* beta,
                 scalar_t* dX, at::opmath_type<scalar_t>* dgamma, at::opmath_type<scalar_t>* dbeta) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kConv = !std::is_same_v<scalar_t, T>;
  const int64_t N = p.N, C = p.C, HW = p.HxW, G = p.G, D = C / G;
  const int64_t R = std::clamp<int64_t>(kClBwdElems / C, 1, kClBwdMaxRows);  // sums chunk rows
  const int64_t nch = ceil_div(HW, R);
  const int64_t Rc = std::max<int64_t>(1, kConvElems / C);  // rows per conversion / dx chunk
  const bool stream = dX && use_stream<scalar_t>(p, dX);
  const bool affine = dgamma || dbeta;
  constexpr T thr = relu_threshold<scalar_t>();
  const SampleBlocks sb(N);
  std::vector<double> PG(affine ? sb.count * C : 0), PB(affine ? sb.count * C : 0);

  // Per-channel partial sums of chunk k of sample n into ps/pb (C each).
  auto sums_chunk = [&](int64_t n, int64_t k, const T* prm, T* ps, T* pb, T* xbuf, T* gbuf) {
    const int64_t r0 = k * R, rows = std::min(R, HW - r0);
    std::fill(ps, ps + C, T(0));
    std::fill(pb, pb + C, T(0));
    for (int64_t rb = 0; rb < rows; rb += Rc) {
      const int64_t nr = std::min(Rc, rows - rb);
      const int64_t off = (n * HW + r0 + rb) * C;
      const T* xb = load_block<scalar_t, T>(X + off, xbuf, nr * C);
      const T* gb = load_block<scalar_t, T>(dY + off, gbuf, nr * C);
      bwd_cl_rows<T, RELU>(gb, xb, nr, C, prm, prm + C, prm + 2 * C, thr, ps, pb);
    }
  };
  // ds/db (C each) of one sample: the chunk partials summed in chunk order, channels [c0, c1).
  auto reduce_chunks = [&](int64_t c0, int64_t c1, const T* PS, const T* PB_, double* ds,
                           double* db) {
    std::fill(ds + c0, ds + c1, 0.0);
    std::fill(db + c0, db + c1, 0.0);
    for (int64_t k = 0; k < nch; ++k) {
      const T* ps = PS + k * C;
      const T* pb = PB_ + k * C;
      for (int64_t c = c0; c < c1; ++c) {
        ds[c] += double(ps[c]);
        db[c] += double(pb[c]);
      }
    }
  };
  // Sample n's share of dgamma/dbeta, into its block of samples.
  auto affine_sample = [&](int64_t n, const double* ds, const double* db) {
    const int64_t blk = n / sb.size;
    for (int64_t g = 0; g < G; ++g)
      add_affine(double(rstd[n * G + g]), ds + g * D, db + g * D, D, PG.data() + blk * C + g * D,
                 PB.data() + blk * C + g * D);
  };
  // prm: MC, SC, BC, then BX, C1 expanded per channel.
  auto coeffs = [&](int64_t n, const double* ds, const double* db, T* prm) {
    for (int64_t g = 0; g < G; ++g) {
      T bx, c1;
      group_coeffs(ds + g * D, db + g * D, gamma, g * D, D, double(rstd[n * G + g]),
                   double(D * HW), bx, c1);
      std::fill(prm + 3 * C + g * D, prm + 3 * C + (g + 1) * D, bx);
      std::fill(prm + 4 * C + g * D, prm + 4 * C + (g + 1) * D, c1);
    }
  };
  // Streaming stores go straight to dx when every row starts 32-byte aligned.
  const bool direct_stream = stream && (C * int64_t(sizeof(T))) % 32 == 0 &&
                             reinterpret_cast<uintptr_t>(dX) % 32 == 0;
  // dx of rows [r0, r1) of sample n, in batches of Rc rows from the last one backwards.
  auto dx_rows = [&](int64_t n, int64_t r0, int64_t r1, const T* prm, T* xbuf, T* gbuf, T* obuf) {
    for (int64_t re = r1; re > r0;) {
      const int64_t rs = std::max(r0, re - Rc), rows = re - rs;
      const int64_t off = (n * HW + rs) * C;
      const T* xb = load_block<scalar_t, T>(X + off, xbuf, rows * C);
      const T* gb = load_block<scalar_t, T>(dY + off, gbuf, rows * C);
      if (direct_stream) {
        dx_cl_rows<T, RELU, true>(gb, xb, reinterpret_cast<T*>(dX + off), rows, C, prm, prm + C,
                                  prm + 2 * C, thr, prm + 3 * C, prm + 4 * C);
      } else {
        T* ob = stream ? obuf : out_block<scalar_t, T>(dX + off, obuf);
        dx_cl_rows<T, RELU, false>(gb, xb, ob, rows, C, prm, prm + C, prm + 2 * C, thr,
                                   prm + 3 * C, prm + 4 * C);
        if constexpr (kConv) store_block<scalar_t, T>(dX + off, ob, rows * C);
        else if (stream) stream_copy(dX + off, ob, rows * C);
      }
      re = rs;
    }
  };
  const int64_t cbuf = kConv ? Rc * C : 0;
  const int64_t obn = (kConv || stream) ? Rc * C : 0;

  if (enough_samples(N)) {
    // One task per block of samples, each sample done whole (its dx pass finds it in cache).
    at::parallel_for(0, sb.count, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> prm(5 * C), PS(nch * C), PSb(nch * C), xbuf(cbuf), gbuf(cbuf), obuf(obn);
      std::vector<double> ds(C), db(C);
      for (int64_t blk = begin; blk < end; ++blk)
        for (int64_t n = sb.begin(blk); n < sb.end(blk, N); ++n) {
          channel_params(p, n, mean, rstd, gamma, beta, prm.data(), prm.data() + C,
                         prm.data() + 2 * C);
          for (int64_t k = 0; k < nch; ++k)
            sums_chunk(n, k, prm.data(), PS.data() + k * C, PSb.data() + k * C, xbuf.data(),
                       gbuf.data());
          reduce_chunks(0, C, PS.data(), PSb.data(), ds.data(), db.data());
          if (affine) affine_sample(n, ds.data(), db.data());
          if (!dX) continue;
          coeffs(n, ds.data(), db.data(), prm.data());
          dx_rows(n, 0, HW, prm.data(), xbuf.data(), gbuf.data(), obuf.data());
        }
      if (stream) stream_fence();
    });
  } else {
    // Few samples: chunks of all samples spread over the threads, three parallel passes.
    std::vector<T> prm(N * 5 * C), PS(N * nch * C), PSb(N * nch * C);
    std::vector<double> ds(N * C), db(N * C);
    for (int64_t n = 0; n < N; ++n) {
      T* pn = prm.data() + n * 5 * C;
      channel_params(p, n, mean, rstd, gamma, beta, pn, pn + C, pn + 2 * C);
    }
    at::parallel_for(0, N * nch, grain_for(2 * R * C), [&](int64_t begin, int64_t end) {
      std::vector<T> xbuf(cbuf), gbuf(cbuf);
      for (int64_t j = begin; j < end; ++j)
        sums_chunk(j / nch, j % nch, prm.data() + (j / nch) * 5 * C, PS.data() + j * C,
                   PSb.data() + j * C, xbuf.data(), gbuf.data());
    });
    constexpr int64_t kCB = 64;
    const int64_t ncb = ceil_div(C, kCB);
    at::parallel_for(0, N * ncb, grain_for(nch * kCB), [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const int64_t n = j / ncb, cb = j % ncb;
        reduce_chunks(cb * kCB, std::min(C, (cb + 1) * kCB), PS.data() + n * nch * C,
                      PSb.data() + n * nch * C, ds.data() + n * C, db.data() + n * C);
      }
    });
    for (int64_t n = 0; n < N; ++n) {
      if (affine) affine_sample(n, ds.data() + n * C, db.data() + n * C);
      if (dX) coeffs(n, ds.data() + n * C, db.data() + n * C, prm.data() + n * 5 * C);
    }
    if (dX)
      at::parallel_for(0, N * nch, grain_for(2 * R * C), [&](int64_t begin, int64_t end) {
        std::vector<T> xbuf(cbuf), gbuf(cbuf), obuf(obn);
        for (int64_t j = end; j-- > begin;) {
          const int64_t n = j / nch, k = j % nch;
          dx_rows(n, k * R, std::min(HW, (k + 1) * R), prm.data() + n * 5 * C, xbuf.data(),
                  gbuf.data(), obuf.data());
        }
        if (stream) stream_fence();
      });
  }
  if (affine) finish_affine(C, sb.count, PG, PB, dgamma, dbeta);
}

template <typename T>
const T* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
T* opt_mut_ptr(at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

void group_norm_forward_cpu(const GroupNormProblem& p, const at::Tensor& x, const at::Tensor& gamma,
                            const at::Tensor& beta, at::Tensor& y, at::Tensor& mean,
                            at::Tensor& rstd) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "group_norm_forward_cpu",
      [&] {
        using T = at::opmath_type<scalar_t>;
        const scalar_t* X = x.const_data_ptr<scalar_t>();
        scalar_t* Y = y.data_ptr<scalar_t>();
        advise_huge_pages(Y, int64_t(y.nbytes()));
        const T* g = opt_ptr<T>(gamma);
        const T* b = opt_ptr<T>(beta);
        T* mu = mean.data_ptr<T>();
        T* rs = rstd.data_ptr<T>();
        if (p.channels_last) {
          if (p.relu) forward_cl<scalar_t, true>(p, X, g, b, Y, mu, rs);
          else forward_cl<scalar_t, false>(p, X, g, b, Y, mu, rs);
        } else {
          if (p.relu) forward_nchw<scalar_t, true>(p, X, g, b, Y, mu, rs);
          else forward_nchw<scalar_t, false>(p, X, g, b, Y, mu, rs);
        }
      });
}

void group_norm_backward_cpu(const GroupNormProblem& p, const at::Tensor& dy, const at::Tensor& x,
                             const at::Tensor& mean, const at::Tensor& rstd,
                             const at::Tensor& gamma, const at::Tensor& beta, at::Tensor& dx,
                             at::Tensor& dgamma, at::Tensor& dbeta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "group_norm_backward_cpu",
      [&] {
        using T = at::opmath_type<scalar_t>;
        const scalar_t* dY = dy.const_data_ptr<scalar_t>();
        const scalar_t* X = x.const_data_ptr<scalar_t>();
        scalar_t* dX = opt_mut_ptr<scalar_t>(dx);
        if (dX) advise_huge_pages(dX, int64_t(dx.nbytes()));
        const T* mu = mean.const_data_ptr<T>();
        const T* rs = rstd.const_data_ptr<T>();
        const T* g = opt_ptr<T>(gamma);
        const T* b = opt_ptr<T>(beta);
        T* dg = opt_mut_ptr<T>(dgamma);
        T* db = opt_mut_ptr<T>(dbeta);
        if (p.channels_last) {
          if (p.relu) backward_cl<scalar_t, true>(p, dY, X, mu, rs, g, b, dX, dg, db);
          else backward_cl<scalar_t, false>(p, dY, X, mu, rs, g, b, dX, dg, db);
        } else {
          if (p.relu) backward_nchw<scalar_t, true>(p, dY, X, mu, rs, g, b, dX, dg, db);
          else backward_nchw<scalar_t, false>(p, dY, X, mu, rs, g, b, dX, dg, db);
        }
      });
}

TORCH_LIBRARY_IMPL(gn_detectron, CPU, m) {
  register_group_norm_kernels<group_norm_forward_cpu, group_norm_backward_cpu>(m);
}

}  // namespace gn_detectron
