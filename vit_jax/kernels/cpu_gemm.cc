// fp32 matrix products on the CPU through OpenBLAS, as an XLA FFI handler.
//
// C[..., M, N] = op(A)[..., M, K] x op(B)[..., K, N], op = transpose or not
// (attributes trans_a, trans_b), all buffers row-major (XLA's default
// layout). A's leading dimensions are a batch; B either has the same batch
// or none (then it is shared by every batch entry). Built and registered by
// cpu_gemm.py; see there for why.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxCpuGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
