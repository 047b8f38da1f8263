// oneDNN 2-D convolutions (float32, NHWC activations, HWIO kernels) as XLA FFI handlers for the
// CPU: the forward correlation, its gradient with respect to the input (backward data) and with
// respect to the kernel (backward weights). Zero padding (ph, pw) and stride (sh, sw) are
// attributes. Loaded and registered by jaxnet/backends/onednn.py.
//
// Threads: a call splits its batch into equal slices, one per thread of XLA's own intra-op pool
// (the handler's ffi::ThreadPool) where the batch divides, and runs each slice single-threaded,
// on the calling thread and on the pool; backward weights sums the slices' kernel gradients.
// So the cores XLA uses between the calls run the convolutions too, and no second set of
// threads (OpenMP's) has to be woken for every call and compete with XLA's. A batch that no
// pool size divides runs in one piece on OpenMP's threads.
//
// Each distinct convolution gets one plan (primitives and the kernel's reorder), built on first
// use and kept for the life of the process in a mutex-guarded map; executing a plan is
// thread-safe because the primitives run in oneDNN's user-scratchpad mode, with each calling
// thread's own scratch buffers.
//
// Determinism: oneDNN fixes how a primitive splits its work (and so the order in which backward
// weights sums over the batch) from OpenMP's thread count on the thread that creates it. A plan
// is therefore made for the thread count it runs with (1 for a slice), which is part of its key:
// never inherited from whichever thread happened to ask first. (Before, a plan made on a fresh
// thread split for 2 threads and one made on a pool thread for 1, so the same seed could end
// in different last bits depending on XLA's scheduling.)
//
// Leading axes beyond the four of a convolution (what jax.vmap adds with vmap_method
// "broadcast_all") are looped over: every operand carries the same leading axes.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include <atomic>
#include <exception>
#include <stdexcept>
#include <thread>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum class Kind : int64_t { kForward, kBackwardData, kBackwardWeights };

// One convolution: x (n, h, w, c), kernel (kh, kw, c, o), zero padding and stride per axis.
struct Conv {
  Kind kind;
  int64_t n, h, w, c, kh, kw, o, ph, pw, sh, sw;
  int64_t threads = 0;  // OpenMP threads the plan is made for and run with (set by Run)

  int64_t ho() const { return (h + 2 * ph - kh) / sh + 1; }
  int64_t wo() const { return (w + 2 * pw - kw) / sw + 1; }
  auto tie() const { return std::tie(kind, n, h, w, c, kh, kw, o, ph, pw, sh, sw, threads); }
  bool operator==(const Conv& b) const { return tie() == b.tie(); }
};

struct ConvHash {
  size_t operator()(const Conv& k) const {
    size_t seed = static_cast<size_t>(k.kind);
    for (int64_t v : {k.n, k.h, k.w, k.c, k.kh, k.kw, k.o, k.ph, k.pw, k.sh, k.sw, k.threads}) {
      seed ^= std::hash<int64_t>()(v) + 0x9e3779b97f4a7c15ULL + (seed << 6) + (seed >> 2);
    }
    return seed;
  }
};

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The primitives of one convolution. The kernel travels in HWIO; where the primitive prefers
// another (blocked) layout for it, `reorder` converts HWIO into it (forward, backward data) or
// out of it (backward weights).
struct Plan {
  dnnl::primitive conv;
  dnnl::memory::desc act_in, act_out;  // NHWC: x and y (forward), g and dx, x and g
  dnnl::memory::desc kernel_user;      // HWIO
  dnnl::memory::desc kernel_prim;      // the primitive's layout of the kernel
  bool reorder_kernel = false;
  dnnl::primitive reorder;
  dnnl::memory::desc conv_pad, reorder_pad;  // scratchpads
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

size_t Align(size_t bytes) { return (bytes + 63) / 64 * 64; }

std::unique_ptr<Plan> MakePlan(const Conv& k) {
  omp_set_num_threads(static_cast<int>(k.threads));  // oneDNN splits the work for this many
  dnnl::engine& eng = Engine();
  const dnnl::memory::dims strides = {k.sh, k.sw}, pad = {k.ph, k.pw};
  const dnnl::memory::desc x_md({k.n, k.c, k.h, k.w}, dt::f32, tag::nhwc);
  const dnnl::memory::desc y_md({k.n, k.o, k.ho(), k.wo()}, dt::f32, tag::nhwc);
  const dnnl::memory::desc w_user({k.o, k.c, k.kh, k.kw}, dt::f32, tag::hwio);
  const dnnl::memory::desc w_any({k.o, k.c, k.kh, k.kw}, dt::f32, tag::any);
  const dnnl::primitive_attr attr = UserScratchpad();
  const auto algo = dnnl::algorithm::convolution_direct;

  auto plan = std::make_unique<Plan>();
  plan->kernel_user = w_user;
  dnnl::convolution_forward::primitive_desc fwd(eng, dnnl::prop_kind::forward_training, algo,
                                                x_md, w_any, y_md, strides, pad, pad, attr);
  dnnl::primitive_desc_base pd = fwd;
  if (k.kind == Kind::kForward) {
    plan->conv = dnnl::convolution_forward(fwd);
    plan->act_in = x_md;
    plan->act_out = y_md;
    plan->kernel_prim = fwd.weights_desc();
  } else if (k.kind == Kind::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc bwd(eng, algo, x_md, w_any, y_md, strides,
                                                        pad, pad, fwd, attr);
    plan->conv = dnnl::convolution_backward_data(bwd);
    plan->act_in = y_md;
    plan->act_out = x_md;
    plan->kernel_prim = bwd.weights_desc();
    pd = bwd;
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(eng, algo, x_md, w_any, y_md,
                                                           strides, pad, pad, fwd, attr);
    plan->conv = dnnl::convolution_backward_weights(bwd);
    plan->act_in = x_md;
    plan->act_out = y_md;
    plan->kernel_prim = bwd.diff_weights_desc();
    pd = bwd;
  }
  plan->conv_pad = pd.scratchpad_desc();
  plan->reorder_kernel = plan->kernel_prim != w_user;
  if (plan->reorder_kernel) {
    const bool into_prim = k.kind != Kind::kBackwardWeights;
    const auto& src = into_prim ? w_user : plan->kernel_prim;
    const auto& dst = into_prim ? plan->kernel_prim : w_user;
    dnnl::reorder::primitive_desc rpd(eng, src, eng, dst, attr);
    plan->reorder = dnnl::reorder(rpd);
    plan->reorder_pad = rpd.scratchpad_desc();
  }
  return plan;
}

const Plan& GetPlan(const Conv& k) {
  static std::mutex mutex;
  static std::unordered_map<Conv, std::unique_ptr<Plan>, ConvHash> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(k);
  if (it == plans.end()) it = plans.emplace(k, MakePlan(k)).first;
  return *it->second;
}

// This thread's scratch buffers, 64-byte aligned, grown as needed and kept: one for oneDNN's
// scratchpads, one for the kernels in the primitive's layout (which every slice of a call
// reads, or writes its own gradient into).
enum Use { kScratchpad, kKernels };

char* Scratch(Use use, size_t bytes) {
  struct Buffer {
    char* ptr = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(ptr); }
  };
  thread_local Buffer bufs[2];
  Buffer& buf = bufs[use];
  if (bytes > buf.size) {
    std::free(buf.ptr);
    buf.ptr = static_cast<char*>(std::aligned_alloc(64, Align(bytes)));
    buf.size = buf.ptr ? Align(bytes) : 0;
  }
  if (bytes && !buf.ptr) throw std::bad_alloc();
  return buf.ptr;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// The most threads one call uses (0: XLA's pool size for a split batch, OpenMP's own count,
// OMP_NUM_THREADS or the cores, for one piece).
std::atomic<int> max_threads{0};

int Threads() {
  static const int openmp_default = omp_get_max_threads();
  const int n = max_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : openmp_default;
}

// The slices a batch of n is split into: the largest count up to the thread limit that divides
// it (1: one piece).
int64_t Slices(int64_t n, int64_t pool_threads) {
  const int limit = max_threads.load(std::memory_order_relaxed);
  for (int64_t p = std::min<int64_t>(limit > 0 ? limit : pool_threads, n); p > 1; --p) {
    if (n % p == 0) return p;
  }
  return 1;
}

// Runs f(0) .. f(count - 1) on the calling thread and the pool, work-shared: each thread takes
// the next slice until none is left, and the caller waits only for slices another thread has
// started (a pool task may start late, or never before the caller is done), so it never waits
// on a busy pool. An exception in any slice is rethrown in the caller.
template <typename F>
void ForEachSlice(ffi::ThreadPool& pool, int64_t count, F f) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mutex;
    std::string error;
  };
  auto state = std::make_shared<State>();
  auto body = std::make_shared<F>(std::move(f));
  auto work = [state, body, count]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < count;) {
      try {
        (*body)(i);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->error = e.what();
      }
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < count; ++t) pool.Schedule([work]() { work(); });
  work();
  while (state->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
  if (!state->error.empty()) throw std::runtime_error(state->error);
}

// Runs one convolution on raw pointers: `in` and `out` are the NHWC activations of
// Plan::act_in / act_out, `kernel` the HWIO kernel (an input, or the output of backward weights).
void Run(const Conv& k, ffi::ThreadPool& pool, const float* in, float* kernel, float* out) {
  const int64_t slices = Slices(k.n, pool.num_threads());
  Conv slice = k;
  slice.n = k.n / slices;
  slice.threads = slices > 1 ? 1 : Threads();
  const Plan& plan = GetPlan(slice);
  dnnl::engine& eng = Engine();
  const bool weights = k.kind == Kind::kBackwardWeights;
  const size_t kernel_bytes = Align(plan.kernel_prim.get_size());
  // The kernel(s) in the primitive's layout: the forward and backward-data slices share one;
  // each backward-weights slice writes its own, summed into the first (HWIO when no reorder).
  const int64_t own = weights ? (plan.reorder_kernel ? slices : slices - 1) : plan.reorder_kernel;
  char* kernels = Scratch(kKernels, kernel_bytes * own);
  auto kernel_of = [&](int64_t i) -> float* {  // the kernel slice i reads or writes
    if (!weights) return plan.reorder_kernel ? reinterpret_cast<float*>(kernels) : kernel;
    if (!plan.reorder_kernel && i == 0) return kernel;
    return reinterpret_cast<float*>(kernels + kernel_bytes * (plan.reorder_kernel ? i : i - 1));
  };
  dnnl::memory user_kernel(plan.kernel_user, eng, kernel);
  auto reorder = [&](dnnl::memory& src, dnnl::memory& dst) {
    omp_set_num_threads(1);  // a few thousand numbers: waking OpenMP's threads costs more
    dnnl::memory pad(plan.reorder_pad, eng, Scratch(kScratchpad, plan.reorder_pad.get_size()));
    plan.reorder.execute(Stream(),
                         {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}, {DNNL_ARG_SCRATCHPAD, pad}});
    Stream().wait();
  };
  if (!weights && plan.reorder_kernel) {
    dnnl::memory prim(plan.kernel_prim, eng, kernel_of(0));
    reorder(user_kernel, prim);
  }
  const size_t in_size = plan.act_in.get_size() / sizeof(float);
  const size_t out_size = plan.act_out.get_size() / sizeof(float);
  ForEachSlice(pool, slices, [&](int64_t i) {
    omp_set_num_threads(static_cast<int>(slice.threads));  // per calling thread (an OpenMP ICV)
    dnnl::stream& strm = Stream();
    dnnl::memory pad(plan.conv_pad, eng, Scratch(kScratchpad, plan.conv_pad.get_size()));
    dnnl::memory kernel_mem(plan.kernel_prim, eng, kernel_of(i));
    dnnl::memory a(plan.act_in, eng, const_cast<float*>(in) + i * in_size);
    dnnl::memory b(plan.act_out, eng, out + i * out_size);
    if (k.kind == Kind::kForward) {
      plan.conv.execute(strm, {{DNNL_ARG_SRC, a},
                               {DNNL_ARG_WEIGHTS, kernel_mem},
                               {DNNL_ARG_DST, b},
                               {DNNL_ARG_SCRATCHPAD, pad}});
    } else if (k.kind == Kind::kBackwardData) {
      plan.conv.execute(strm, {{DNNL_ARG_DIFF_DST, a},
                               {DNNL_ARG_WEIGHTS, kernel_mem},
                               {DNNL_ARG_DIFF_SRC, b},
                               {DNNL_ARG_SCRATCHPAD, pad}});
    } else {
      plan.conv.execute(strm, {{DNNL_ARG_SRC, a},
                               {DNNL_ARG_DIFF_DST, b},
                               {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
                               {DNNL_ARG_SCRATCHPAD, pad}});
    }
    strm.wait();
  });
  if (weights) {
    float* sum = kernel_of(0);
    const size_t count = plan.kernel_prim.get_size() / sizeof(float);
    for (int64_t i = 1; i < slices; ++i) {
      const float* part = kernel_of(i);
      for (size_t j = 0; j < count; ++j) sum[j] += part[j];
    }
    if (plan.reorder_kernel) {
      dnnl::memory prim(plan.kernel_prim, eng, sum);
      reorder(prim, user_kernel);
    }
  }
}

// Product of the leading axes (beyond the last four) of a buffer, or -1 if it has fewer than 4.
template <typename Buffer>
int64_t Leading(const Buffer& b) {
  auto dims = b.dimensions();
  if (dims.size() < 4) return -1;
  int64_t count = 1;
  for (size_t i = 0; i + 4 < dims.size(); ++i) count *= dims[i];
  return count;
}

template <typename Buffer>
int64_t Dim(const Buffer& b, int i) {  // i in 0..3 counts from the fourth-last axis
  auto dims = b.dimensions();
  return dims[dims.size() - 4 + i];
}

template <typename Buffer>
int64_t Inner(const Buffer& b) {
  return Dim(b, 0) * Dim(b, 1) * Dim(b, 2) * Dim(b, 3);
}

std::string Str(const Conv& k) {
  return "x (" + std::to_string(k.n) + ", " + std::to_string(k.h) + ", " + std::to_string(k.w) +
         ", " + std::to_string(k.c) + "), w (" + std::to_string(k.kh) + ", " +
         std::to_string(k.kw) + ", " + std::to_string(k.c) + ", " + std::to_string(k.o) +
         "), padding (" + std::to_string(k.ph) + ", " + std::to_string(k.pw) + "), stride (" +
         std::to_string(k.sh) + ", " + std::to_string(k.sw) + ")";
}

// Checks the operands against `k` and runs it once per leading index.
// a: x (forward, backward weights) or g (backward data); b: w (forward, backward data) or g
// (backward weights); r: the result.
ffi::Error Dispatch(const Conv& k, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                    ffi::Result<ffi::Buffer<ffi::F32>> r, ffi::ThreadPool& pool) {
  const int64_t lead = Leading(a);
  if (lead < 0 || Leading(b) != lead || Leading(*r) != lead) {
    return ffi::Error::InvalidArgument("jaxnet onednn conv: operands of unequal leading axes");
  }
  if (k.ph < 0 || k.pw < 0 || k.sh < 1 || k.sw < 1 || k.h + 2 * k.ph < k.kh ||
      k.w + 2 * k.pw < k.kw) {
    return ffi::Error::InvalidArgument("jaxnet onednn conv: no output for " + Str(k));
  }
  const int64_t y_shape[4] = {k.n, k.ho(), k.wo(), k.o};
  const auto& y = k.kind == Kind::kBackwardData ? a : (k.kind == Kind::kForward ? *r : b);
  for (int i = 0; i < 4; ++i) {
    if (Dim(y, i) != y_shape[i]) {
      return ffi::Error::InvalidArgument("jaxnet onednn conv: wrong output shape for " + Str(k));
    }
  }
  const int64_t sa = Inner(a), sb = Inner(b), sr = Inner(*r);
  float* pa = a.typed_data();
  float* pb = b.typed_data();
  float* pr = r->typed_data();
  try {
    for (int64_t i = 0; i < lead; ++i) {
      float *ia = pa + i * sa, *ib = pb + i * sb, *ir = pr + i * sr;
      if (k.kind == Kind::kBackwardWeights) {
        Run(k, pool, ia, ir, ib);  // in = x, kernel = dw (written), out = g (read)
      } else {
        Run(k, pool, ia, ib, ir);  // forward: x, w, y; backward data: g, w, dx
      }
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what() + " for " + Str(k));
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("jaxnet onednn conv: out of memory for " + Str(k));
  } catch (const std::exception& e) {  // from a slice run on another thread
    return ffi::Error::Internal(std::string("jaxnet onednn conv: ") + e.what() + " for " + Str(k));
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::Result<ffi::Buffer<ffi::F32>> y, int64_t ph, int64_t pw, int64_t sh,
                   int64_t sw, ffi::ThreadPool pool) {
  if (Leading(x) < 0 || Leading(w) < 0) {
    return ffi::Error::InvalidArgument("jaxnet onednn conv: x and w need rank >= 4");
  }
  const Conv k{Kind::kForward, Dim(x, 0), Dim(x, 1), Dim(x, 2), Dim(x, 3), Dim(w, 0), Dim(w, 1),
               Dim(w, 3),      ph,        pw,        sh,        sw};
  if (Dim(w, 2) != k.c) return ffi::Error::InvalidArgument("jaxnet onednn conv: C_in differs");
  return Dispatch(k, x, w, y, pool);
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> w,
                        ffi::Result<ffi::Buffer<ffi::F32>> dx, int64_t ph, int64_t pw,
                        int64_t sh, int64_t sw, ffi::ThreadPool pool) {
  if (Leading(*dx) < 0 || Leading(w) < 0 || Leading(g) < 0) {
    return ffi::Error::InvalidArgument("jaxnet onednn conv: g, w and dx need rank >= 4");
  }
  const Conv k{Kind::kBackwardData, Dim(*dx, 0), Dim(*dx, 1), Dim(*dx, 2), Dim(*dx, 3),
               Dim(w, 0),           Dim(w, 1),   Dim(w, 3),   ph,          pw,
               sh,                  sw};
  if (Dim(w, 2) != k.c) return ffi::Error::InvalidArgument("jaxnet onednn conv: C_in differs");
  return Dispatch(k, g, w, dx, pool);
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                           ffi::Result<ffi::Buffer<ffi::F32>> dw, int64_t ph, int64_t pw,
                           int64_t sh, int64_t sw, ffi::ThreadPool pool) {
  if (Leading(x) < 0 || Leading(*dw) < 0 || Leading(g) < 0) {
    return ffi::Error::InvalidArgument("jaxnet onednn conv: x, g and dw need rank >= 4");
  }
  const Conv k{Kind::kBackwardWeights, Dim(x, 0), Dim(x, 1), Dim(x, 2), Dim(x, 3), Dim(*dw, 0),
               Dim(*dw, 1),            Dim(*dw, 3), ph,      pw,        sh,        sw};
  if (Dim(*dw, 2) != k.c) return ffi::Error::InvalidArgument("jaxnet onednn conv: C_in differs");
  return Dispatch(k, x, g, dw, pool);
}

}  // namespace

// The library is built with hidden visibility: these four are its whole interface.
#define JAXNET_EXPORT extern "C" __attribute__((visibility("default")))
JAXNET_EXPORT XLA_FFI_Error* JaxnetOnednnConvForward(XLA_FFI_CallFrame*);
JAXNET_EXPORT XLA_FFI_Error* JaxnetOnednnConvBackwardData(XLA_FFI_CallFrame*);
JAXNET_EXPORT XLA_FFI_Error* JaxnetOnednnConvBackwardWeights(XLA_FFI_CallFrame*);
JAXNET_EXPORT int JaxnetOnednnVersion();
JAXNET_EXPORT void JaxnetOnednnSetNumThreads(int n);

#define JAXNET_CONV_BINDING                \
  ffi::Ffi::Bind()                         \
      .Arg<ffi::Buffer<ffi::F32>>()        \
      .Arg<ffi::Buffer<ffi::F32>>()        \
      .Ret<ffi::Buffer<ffi::F32>>()        \
      .Attr<int64_t>("ph")                 \
      .Attr<int64_t>("pw")                 \
      .Attr<int64_t>("sh")                 \
      .Attr<int64_t>("sw")                 \
      .Ctx<ffi::ThreadPool>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnConvForward, Forward, JAXNET_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnConvBackwardData, BackwardData, JAXNET_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnConvBackwardWeights, BackwardWeights,
                              JAXNET_CONV_BINDING);

// The oneDNN version this library runs on, for messages: major * 10000 + minor * 100 + patch.
int JaxnetOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// Sets the most threads of every later call (0: XLA's pool size, or OpenMP's for one piece).
void JaxnetOnednnSetNumThreads(int n) { max_threads.store(n < 0 ? 0 : n); }
