// fp32 matrix products and convolutions on the CPU through OpenBLAS, as XLA
// FFI handlers.
//
// Products (VitJaxCpuGemm): C[..., M, N] = op(A)[..., M, K] x
// op(B)[..., K, N], op = transpose or not (attributes trans_a, trans_b), all
// buffers row-major (XLA's default layout). A's leading dimensions are a
// batch; B either has the same batch or none (then it is shared by every
// batch entry). Convolutions as implicit GEMMs (VitJaxCpuConv,
// VitJaxCpuConvKernelGrad): below. Built and registered by cpu_gemm.py; see
// there for why.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cblas.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Each sgemm runs single-threaded; the parallelism comes from XLA's own
// intra-op thread pool (below). OpenBLAS's threads would otherwise spin
// after every call on the cores XLA's threads need.
const bool kOpenBlasSingleThreaded = [] {
  scipy_openblas_set_num_threads(1);
  return true;
}();

// Runs work(0) ... work(chunks - 1) on the calling thread and on XLA's
// intra-op pool. Every participant takes chunks from a shared counter, so the
// caller only ever waits for chunks another thread has already started: no
// deadlock when every pool thread is itself inside such a call.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t chunks, F work) {
  if (chunks <= 1) {
    if (chunks == 1) work(0);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  const auto run = [state, chunks, &work] {
    for (int64_t i; (i = state->next.fetch_add(1)) < chunks;) {
      work(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) {
    // A helper that starts after the caller returned finds no chunk left and
    // touches only `state` (shared): `work` is not called then.
    pool.Schedule([state, chunks, run] {
      if (state->next.load() < chunks) run();
    });
  }
  run();
  while (state->done.load(std::memory_order_acquire) < chunks) {
    std::this_thread::yield();
  }
}

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(dims[i]);
  }
  return s + "]";
}

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c,
                bool trans_a, bool trans_b) {
  auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  const size_t ra = da.size(), rb = db.size(), rc = dc.size();
  const auto bad = [&](const char* why) {
    return ffi::Error::InvalidArgument(
        std::string("vit_jax_cpu_gemm: ") + why + ": a " + Shape(da) +
        (trans_a ? "^T" : "") + ", b " + Shape(db) + (trans_b ? "^T" : "") +
        ", out " + Shape(dc));
  };
  if (ra < 2 || rb < 2 || rc != ra) return bad("ranks");
  const int64_t m = dc[rc - 2], n = dc[rc - 1];
  const int64_t k = trans_a ? da[ra - 2] : da[ra - 1];
  if ((trans_a ? da[ra - 1] : da[ra - 2]) != m) return bad("rows of a");
  if ((trans_b ? db[rb - 1] : db[rb - 2]) != k) return bad("contraction");
  if ((trans_b ? db[rb - 2] : db[rb - 1]) != n) return bad("columns of b");
  int64_t batch = 1, batch_b = 1;
  for (size_t i = 0; i + 2 < ra; ++i) {
    if (dc[i] != da[i]) return bad("batch of out");
    batch *= da[i];
  }
  for (size_t i = 0; i + 2 < rb; ++i) batch_b *= db[i];
  if (rb > 2 && (rb != ra || batch_b != batch)) return bad("batch of b");

  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  const int lda = trans_a ? m : k, ldb = trans_b ? k : n, ldc = n;
  const float* pa = a.typed_data();
  const float* pb = b.typed_data();
  float* pc = c->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (batch == 1 || (batch_b == 1 && !trans_a)) {
    // One product (a shared B with a batch of untransposed A is one taller
    // A), split into row blocks of C.
    const int64_t rows = batch * m;
    const int64_t flops = rows * n * k;
    const int64_t chunks = std::min<int64_t>(
        flops < (int64_t{1} << 22) ? 1 : threads, (rows + 7) / 8);
    const int64_t step = (rows + chunks - 1) / chunks;
    ParallelFor(pool, chunks, [&](int64_t i) {
      const int64_t r0 = i * step, r1 = std::min(rows, r0 + step);
      if (r1 <= r0) return;
      const float* pa_i = pa + (trans_a ? r0 : r0 * k);
      scipy_cblas_sgemm(CblasRowMajor, ta, tb, r1 - r0, n, k, 1.0f, pa_i, lda,
                        pb, ldb, 0.0f, pc + r0 * n, ldc);
    });
  } else {
    // A batch of products, dealt out whole.
    ParallelFor(pool, batch, [&](int64_t i) {
      scipy_cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, pa + i * m * k,
                        lda, pb + (batch_b == 1 ? 0 : i * k * n), ldb, 0.0f,
                        pc + i * m * n, ldc);
    });
  }
  return ffi::Error::Success();
}

// Convolutions as implicit GEMMs: x [B, H, W, C] (NHWC), kernel as the
// [kh * kw * C, O] matrix of an HWIO kernel, output [B, OH, OW, O], strides
// (sh, sw), zero padding pad_top / pad_left (the bottom / right padding
// follows from OH, OW). Rows of the unfolded input (one per output pixel,
// (i, j, c)-ordered like the kernel's rows) are built a block at a time in a
// per-thread buffer and multiplied there, so the kh * kw times larger
// unfolded input never goes through memory.
struct ConvGeometry {
  int64_t b, h, w, c, oh, ow, o, kh, kw, sh, sw, pt, pl;
  int64_t k() const { return kh * kw * c; }
  int64_t rows() const { return b * oh * ow; }
};

// Unfolded rows [r0, r1) of x into patch ([r1 - r0, k], row-major).
void Unfold(const ConvGeometry& g, const float* x, int64_t r0, int64_t r1,
            float* patch) {
  const int64_t k = g.k(), run = g.kw * g.c;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t ox = r % g.ow, oy = (r / g.ow) % g.oh, b = r / (g.ow * g.oh);
    float* dst = patch + (r - r0) * k;
    const int64_t x0 = ox * g.sw - g.pl;
    const bool inside_x = x0 >= 0 && x0 + g.kw <= g.w;
    for (int64_t i = 0; i < g.kh; ++i, dst += run) {
      const int64_t iy = oy * g.sh + i - g.pt;
      if (iy < 0 || iy >= g.h) {
        std::fill(dst, dst + run, 0.0f);
        continue;
      }
      const float* src = x + ((b * g.h + iy) * g.w) * g.c;
      if (inside_x) {
        std::copy(src + x0 * g.c, src + (x0 + g.kw) * g.c, dst);
        continue;
      }
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t ix = x0 + j;
        float* d = dst + j * g.c;
        if (ix < 0 || ix >= g.w) {
          std::fill(d, d + g.c, 0.0f);
        } else {
          std::copy(src + ix * g.c, src + (ix + 1) * g.c, d);
        }
      }
    }
  }
}

// Rows per unfolded block: enough that OpenBLAS's packing of the other
// operand (once per call) is paid over many rows, few enough to stay near the
// cache. The kernel gradient sums a [k, O] product per block, so it takes
// longer blocks.
int64_t BlockRows(int64_t k) {
  return std::clamp<int64_t>((int64_t{1} << 18) / k, 256, 1024);
}
int64_t KernelGradBlockRows(int64_t k) {
  return std::clamp<int64_t>((int64_t{1} << 20) / k, 512, 4096);
}

// Below this many floats the whole unfolded input is built first and
// multiplied in one product split across the threads (few output pixels, a
// large kernel: blocks would each repack the kernel).
constexpr int64_t kWholeUnfold = int64_t{1} << 22;

// The geometry of a convolution of input dims dx to output dims dout, or
// an error naming both.
ffi::Error Geometry(ffi::Span<const int64_t> dx, ffi::Span<const int64_t> dout,
                    int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                    int64_t pl, const char* what, ConvGeometry* g) {
  if (dx.size() != 4 || dout.size() != 4 || dx[0] != dout[0] || kh < 1 ||
      kw < 1 || sh < 1 || sw < 1) {
    return ffi::Error::InvalidArgument(
        std::string("vit_jax_cpu_conv: ") + what + ": input " + Shape(dx) +
        ", output " + Shape(dout));
  }
  *g = ConvGeometry{dx[0], dx[1], dx[2], dx[3], dout[1], dout[2], dout[3],
                    kh, kw, sh, sw, pt, pl};
  return ffi::Error::Success();
}

// y = unfold(x) @ kernel.
ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> kernel,
                       ffi::ResultBuffer<ffi::F32> y, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t pad_top,
                       int64_t pad_left) {
  ConvGeometry g;
  ffi::Error bad = Geometry(x.dimensions(), y->dimensions(), kh, kw, sh, sw,
                            pad_top, pad_left, "forward", &g);
  if (bad.failure()) return bad;
  auto dk = kernel.dimensions();
  if (dk.size() != 2 || dk[0] != g.k() || dk[1] != g.o) {
    return ffi::Error::InvalidArgument(
        "vit_jax_cpu_conv: forward: kernel " + Shape(dk) + " for input " +
        Shape(x.dimensions()) + " and output " + Shape(y->dimensions()));
  }
  const int64_t k = g.k(), rows = g.rows();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t block =
      rows * k <= kWholeUnfold
          ? std::max<int64_t>(1, (rows + threads - 1) / threads)
          : BlockRows(k);
  const float* px = x.typed_data();
  const float* pw = kernel.typed_data();
  float* py = y->typed_data();
  ParallelFor(pool, (rows + block - 1) / block, [&](int64_t i) {
    thread_local std::vector<float> patch;
    const int64_t r0 = i * block, r1 = std::min(rows, r0 + block);
    patch.resize(block * k);
    Unfold(g, px, r0, r1, patch.data());
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, g.o,
                      k, 1.0f, patch.data(), k, pw, g.o, 0.0f, py + r0 * g.o,
                      g.o);
  });
  return ffi::Error::Success();
}

// dkernel = unfold(x)^T @ dy, summed over all output pixels.
ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dkernel, int64_t kh,
                          int64_t kw, int64_t sh, int64_t sw, int64_t pad_top,
                          int64_t pad_left) {
  ConvGeometry g;
  ffi::Error bad = Geometry(x.dimensions(), dy.dimensions(), kh, kw, sh, sw,
                            pad_top, pad_left, "kernel gradient", &g);
  if (bad.failure()) return bad;
  auto dk = dkernel->dimensions();
  if (dk.size() != 2 || dk[0] != g.k() || dk[1] != g.o) {
    return ffi::Error::InvalidArgument(
        "vit_jax_cpu_conv: kernel gradient: output " + Shape(dk) +
        " for input " + Shape(x.dimensions()) + " and gradient " +
        Shape(dy.dimensions()));
  }
  const int64_t k = g.k(), rows = g.rows();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const float* px = x.typed_data();
  const float* pdy = dy.typed_data();
  float* out = dkernel->typed_data();
  if (rows * k <= kWholeUnfold) {
    // Unfold everything, then split the product over the kernel's rows.
    std::vector<float> patch(rows * k);
    const int64_t block = BlockRows(k);
    ParallelFor(pool, (rows + block - 1) / block, [&](int64_t i) {
      const int64_t r0 = i * block, r1 = std::min(rows, r0 + block);
      Unfold(g, px, r0, r1, patch.data() + r0 * k);
    });
    const int64_t parts = std::min<int64_t>(threads, (k + 15) / 16);
    ParallelFor(pool, parts, [&](int64_t p) {
      const int64_t k0 = k * p / parts, k1 = k * (p + 1) / parts;
      scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k1 - k0,
                        g.o, rows, 1.0f, patch.data() + k0, k, pdy, g.o, 0.0f,
                        out + k0 * g.o, g.o);
    });
    return ffi::Error::Success();
  }
  const int64_t block = KernelGradBlockRows(k);
  const int64_t blocks = (rows + block - 1) / block;
  const int64_t parts = std::min<int64_t>(threads, blocks);
  // Part 0 sums into the output, the others into partial sums added after.
  std::vector<float> partial((parts - 1) * k * g.o);
  ParallelFor(pool, parts, [&](int64_t p) {
    thread_local std::vector<float> patch;
    patch.resize(block * k);
    float* acc = p == 0 ? out : partial.data() + (p - 1) * k * g.o;
    const int64_t b0 = blocks * p / parts, b1 = blocks * (p + 1) / parts;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * block, r1 = std::min(rows, r0 + block);
      Unfold(g, px, r0, r1, patch.data());
      scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, g.o,
                        r1 - r0, 1.0f, patch.data(), k, pdy + r0 * g.o, g.o,
                        blk == b0 ? 0.0f : 1.0f, acc, g.o);
    }
  });
  for (int64_t p = 1; p < parts; ++p) {
    const float* src = partial.data() + (p - 1) * k * g.o;
    for (int64_t e = 0; e < k * g.o; ++e) out[e] += src[e];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxCpuGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));

// Both convolution handlers: x and one more float32 buffer in, one out, and
// the convolution's geometry as attributes.
static auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("kh")
      .Attr<int64_t>("kw")
      .Attr<int64_t>("sh")
      .Attr<int64_t>("sw")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxCpuConv, ConvForward, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxCpuConvKernelGrad, ConvKernelGrad,
                              ConvBinding());
