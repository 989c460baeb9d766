// Measurement probe for issue #8 (docs/benchmarks.md, "A native reader of Triton's stream?"),
// not product code: Triton ModelStreamInfer read from C++ — N concurrent bidi streams over one
// secure channel, async CompletionQueue API, 1..k polling threads; a C API for ctypes
// (scripts/native_reader_probe/compare.py builds and drives it).
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include "grpc_service.grpc.pb.h"
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

namespace {
std::string slurp(const char* p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s; s << f.rdbuf(); return s.str();
}
double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double cpu_self() {
  rusage r; getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec * 1e-6;
}

struct Probe;
enum OpKind { START, WRITE, READ, FINISH };
struct Call;
struct Op { Call* call; OpKind kind; };

struct Call {
  Probe* p; int slot;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<inference::ModelInferRequest, inference::ModelStreamInferResponse>> rw;
  inference::ModelStreamInferResponse resp;
  grpc::Status status;
  Op op_start{this, START}, op_write{this, WRITE}, op_read{this, READ}, op_finish{this, FINISH};
  long tokens = 0;
  bool got_final = false;
};

struct Probe {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub;
  std::string hkey, hval;
  inference::ModelInferRequest req;
  long max_tokens = 0;
  int concurrency = 64, threads = 1;
  // run state
  grpc::CompletionQueue* cq = nullptr;
  double stop_at = 0;
  std::atomic<long> tokens{0}, requests{0}, bad{0}, responses{0}, errors{0};
  std::atomic<int> live{0};
  // event delivery (experiment 3)
  int efd = -1;
  std::mutex ev_mu;
  std::vector<int32_t> events;  // triples: slot, ntokens, final
  std::atomic<long> wakeups{0};
  long flush_us = 0;  // >0: a flusher thread signals the eventfd at most every flush_us
  bool signalled = false;  // guarded by ev_mu (flusher mode)
  std::thread runner;
  std::atomic<bool> running{false};
  double run_cpu = 0, run_wall = 0;

  void start_call(int slot) {
    auto* c = new Call; c->p = this; c->slot = slot;
    c->ctx.AddMetadata(hkey, hval);
    c->rw = stub->PrepareAsyncModelStreamInfer(&c->ctx, cq);
    c->rw->StartCall(&c->op_start);
  }
  void emit(int slot, int n, bool final) {
    if (efd < 0) return;
    bool wake;
    {
      std::lock_guard<std::mutex> g(ev_mu);
      wake = events.empty();
      events.push_back(slot); events.push_back(n); events.push_back(final);
    }
    if (wake && flush_us <= 0) { uint64_t one = 1; (void)!write(efd, &one, 8); wakeups++; }
  }
  void handle(Op* op, bool ok) {
    Call* c = op->call;
    switch (op->kind) {
      case START:
        if (!ok) { errors++; c->rw->Finish(&c->status, &c->op_finish); return; }
        c->rw->Write(req, &c->op_write); return;
      case WRITE:
        if (!ok) { errors++; c->rw->Finish(&c->status, &c->op_finish); return; }
        c->rw->Read(&c->resp, &c->op_read); return;
      case READ: {
        if (!ok) { errors++; c->rw->Finish(&c->status, &c->op_finish); return; }
        responses++;
        if (!c->resp.error_message().empty()) {
          errors++;
          if (errors < 5) fprintf(stderr, "error: %s\n", c->resp.error_message().c_str());
          c->ctx.TryCancel(); c->rw->Finish(&c->status, &c->op_finish); return;
        }
        const auto& ir = c->resp.infer_response();
        int n = 0;
        for (int i = 0; i < ir.outputs_size(); ++i)
          if (ir.outputs(i).name() == "output_ids") {
            n = i < ir.raw_output_contents_size() ? ir.raw_output_contents(i).size() / 4 : 0;
            break;
          }
        auto it = ir.parameters().find("triton_final_response");
        bool final = it != ir.parameters().end() && it->second.bool_param();
        c->tokens += n; tokens += n;
        emit(c->slot, n, final);
        if (final) {
          c->got_final = true;
          c->ctx.TryCancel();
          c->rw->Finish(&c->status, &c->op_finish);
        } else {
          c->rw->Read(&c->resp, &c->op_read);
        }
        return;
      }
      case FINISH: {
        if (c->got_final) { requests++; if (c->tokens != max_tokens) bad++; }
        int slot = c->slot;
        delete c;
        if (now() < stop_at) start_call(slot);
        else if (--live == 0) cq->Shutdown();
        return;
      }
    }
  }
  void poll() {
    void* tag; bool ok;
    while (cq->Next(&tag, &ok)) handle(static_cast<Op*>(tag), ok);
  }
  void run(double seconds) {
    grpc::CompletionQueue q; cq = &q;
    tokens = 0; requests = 0; bad = 0; responses = 0; errors = 0; wakeups = 0;
    double c0 = cpu_self(), w0 = now();
    stop_at = now() + seconds;
    live = concurrency;
    for (int i = 0; i < concurrency; ++i) start_call(i);
    std::vector<std::thread> ts;
    for (int i = 1; i < threads; ++i) ts.emplace_back([this] { poll(); });
    poll();
    for (auto& t : ts) t.join();
    run_cpu = cpu_self() - c0; run_wall = now() - w0;
    cq = nullptr;
  }
};
}  // namespace

extern "C" {
struct probe_stats {
  double cpu_s, wall_s;
  long tokens, requests, bad_requests, responses, errors, wakeups;
};

void* probe_create(const char* dir, int concurrency, int threads) {
  std::string d(dir);
  auto* p = new Probe;
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = slurp((d + "/ca.pem").c_str());
  o.pem_cert_chain = slurp((d + "/client.pem").c_str());
  o.pem_private_key = slurp((d + "/client.key").c_str());
  grpc::ChannelArguments args;
  p->channel = grpc::CreateCustomChannel(slurp((d + "/target").c_str()), grpc::SslCredentials(o), args);
  p->stub = inference::GRPCInferenceService::NewStub(p->channel);
  p->hkey = slurp((d + "/header_key").c_str());
  p->hval = slurp((d + "/header_value").c_str());
  p->max_tokens = atol(slurp((d + "/max_tokens").c_str()).c_str());
  if (!p->req.ParseFromString(slurp((d + "/request.bin").c_str()))) { fprintf(stderr, "bad request.bin\n"); return nullptr; }
  p->concurrency = concurrency; p->threads = threads;
  return p;
}
int probe_server_ready(void* h) {
  auto* p = static_cast<Probe*>(h);
  grpc::ClientContext ctx; ctx.AddMetadata(p->hkey, p->hval);
  inference::ServerReadyRequest rq; inference::ServerReadyResponse rs;
  auto s = p->stub->ServerReady(&ctx, rq, &rs);
  if (!s.ok()) { fprintf(stderr, "ServerReady: %d %s\n", (int)s.error_code(), s.error_message().c_str()); return -1; }
  return rs.ready();
}
static void fill(Probe* p, probe_stats* st) {
  st->cpu_s = p->run_cpu; st->wall_s = p->run_wall; st->tokens = p->tokens; st->requests = p->requests;
  st->bad_requests = p->bad; st->responses = p->responses; st->errors = p->errors; st->wakeups = p->wakeups;
}
// Blocking run in the calling thread (+threads-1 helpers).
void probe_run(void* h, double seconds, probe_stats* st) {
  auto* p = static_cast<Probe*>(h);
  p->efd = -1; p->run(seconds); fill(p, st);
}
// Background run that delivers (slot, ntokens, final) triples via drain; eventfd is signalled
// when the event buffer goes from empty to non-empty (at most one wakeup per drain).
void probe_set_flush_us(void* h, long us) { static_cast<Probe*>(h)->flush_us = us; }
int probe_start(void* h, double seconds) {
  auto* p = static_cast<Probe*>(h);
  p->signalled = false;
  p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  p->events.clear();
  p->running = true;
  p->runner = std::thread([p, seconds] {
    std::thread flusher;
    if (p->flush_us > 0) flusher = std::thread([p] {
      while (p->running) {
        std::this_thread::sleep_for(std::chrono::microseconds(p->flush_us));
        bool wake;
        { std::lock_guard<std::mutex> g(p->ev_mu); wake = !p->events.empty() && !p->signalled; if (wake) p->signalled = true; }
        if (wake) { uint64_t one = 1; (void)!write(p->efd, &one, 8); p->wakeups++; }
      }
    });
    p->run(seconds); p->running = false;
    if (flusher.joinable()) flusher.join();
    uint64_t one = 1; (void)!write(p->efd, &one, 8); });
  return p->efd;
}
int probe_running(void* h) { return static_cast<Probe*>(h)->running; }
// Copy up to cap int32 values (multiple of 3) of pending events into buf; returns count copied.
long probe_drain(void* h, int32_t* buf, long cap) {
  auto* p = static_cast<Probe*>(h);
  uint64_t v; (void)!read(p->efd, &v, 8);
  std::lock_guard<std::mutex> g(p->ev_mu);
  p->signalled = false;
  long n = std::min<long>(cap - cap % 3, p->events.size());
  memcpy(buf, p->events.data(), n * 4);
  p->events.erase(p->events.begin(), p->events.begin() + n);
  if (!p->events.empty() && p->flush_us <= 0) { uint64_t one = 1; (void)!write(p->efd, &one, 8); }
  return n;
}
void probe_join(void* h, probe_stats* st) {
  auto* p = static_cast<Probe*>(h);
  if (p->runner.joinable()) p->runner.join();
  close(p->efd); p->efd = -1;
  fill(p, st);
}
void probe_destroy(void* h) { delete static_cast<Probe*>(h); }
}
