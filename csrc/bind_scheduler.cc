// Python bindings of the batch former and the scheduler (thin: conversions
// only). Every call that waits or tokenizes releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>

#include "batch_former.h"
#include "bind_tokenizer.h"
#include "scheduler.h"

namespace py = pybind11;

namespace textfleet {
namespace {

int64_t seconds_to_ns(double s) { return static_cast<int64_t>(std::llround(s * 1e9)); }

BatchKnobs make_knobs(uint32_t max_batch_size, uint64_t max_batch_tokens, double max_wait_ms,
                      uint32_t max_row_padding, double fairness, double max_priority_wait_ms,
                      bool priority_fill, double short_first) {
  if (max_batch_size < 1) throw py::value_error("max_batch_size must be >= 1");
  if (max_batch_tokens < 1) throw py::value_error("max_batch_tokens must be >= 1");
  if (!(max_wait_ms >= 0)) throw py::value_error("max_wait_ms must be >= 0");
  if (!(fairness >= 0 && fairness <= 1)) throw py::value_error("fairness must be in [0, 1]");
  if (!(max_priority_wait_ms >= 0 && max_priority_wait_ms <= 1e12)) {
    throw py::value_error("max_priority_wait_ms must be in [0, 1e12]");
  }
  if (!(short_first >= 0 && short_first <= 1000)) {
    throw py::value_error("short_first must be in [0, 1000]");
  }
  return BatchKnobs{max_batch_size,
                    max_batch_tokens,
                    seconds_to_ns(max_wait_ms * 1e-3),
                    max_row_padding,
                    fairness,
                    seconds_to_ns(max_priority_wait_ms * 1e-3),
                    priority_fill,
                    short_first};
}

// One int64 [rows, width] plane of a batch; the array keeps the batch alive.
py::array_t<int64_t> plane(py::object owner, const ReadyBatch& b, size_t k) {
  const size_t cells = size_t{b.rows} * b.width;
  const py::ssize_t row_stride = static_cast<py::ssize_t>(b.width * sizeof(int64_t));
  return py::array_t<int64_t>({static_cast<py::ssize_t>(b.rows), static_cast<py::ssize_t>(b.width)},
                              {row_stride, static_cast<py::ssize_t>(sizeof(int64_t))},
                              b.data.get() + k * cells, owner);
}

std::vector<TokenSeq> to_seqs(std::vector<std::vector<int32_t>> ids,
                              std::optional<std::vector<std::vector<uint32_t>>> type_ids) {
  if (type_ids && type_ids->size() != ids.size()) {
    throw py::value_error("type_ids has " + std::to_string(type_ids->size()) +
                          " items but ids has " + std::to_string(ids.size()));
  }
  std::vector<TokenSeq> seqs(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    seqs[i].ids = std::move(ids[i]);
    if (type_ids) seqs[i].type_ids = std::move((*type_ids)[i]);
  }
  return seqs;
}

// A SequenceEncoder (e.g. ByteEncoder) or an engine._native.WordPieceTokenizer.
std::shared_ptr<const SequenceEncoder> to_encoder(const py::object& obj) {
  if (py::isinstance<SequenceEncoder>(obj)) return obj.cast<std::shared_ptr<SequenceEncoder>>();
  return std::make_shared<WordPieceEncoder>(tokenizer_from_python(obj));
}

void bind_stats(py::module_& m) {
  py::class_<Histogram>(m, "Histogram",
                        "counts[i]: observations <= bounds[i]; the last count is the overflow.")
      .def_readonly("bounds", &Histogram::bounds)
      .def_readonly("counts", &Histogram::counts)
      .def_readonly("sum", &Histogram::sum)
      .def_readonly("count", &Histogram::count);

  // A copy of the scheduler's counters (csrc/sched_stats.h); engine.stats() reads it.
  py::class_<SchedulerStats> stats(m, "SchedulerStats", "The scheduler's counters, copied.");
#define TF_FIELD(name) stats.def_readonly(#name, &SchedulerStats::name)
  TF_FIELD(requests);
  TF_FIELD(sequences);
  TF_FIELD(rejected);
  TF_FIELD(rejected_too_large);
  TF_FIELD(cancelled_requests);
  TF_FIELD(expired_requests);
  TF_FIELD(dropped_sequences);
  TF_FIELD(tokenize_errors);
  TF_FIELD(tokenize_s);
  TF_FIELD(batches);
  TF_FIELD(batch_sequences);
  TF_FIELD(real_tokens);
  TF_FIELD(padded_tokens);
  TF_FIELD(prefetched_batches);
  TF_FIELD(failed_batches);
  TF_FIELD(ok_requests);
  TF_FIELD(failed_requests);
  TF_FIELD(timeouts);
  TF_FIELD(cancellations);
  TF_FIELD(queue_sequences);
  TF_FIELD(queue_tokens);
  TF_FIELD(reserved_tokens);
  TF_FIELD(prefetched_tokens);
  TF_FIELD(live_requests);
  TF_FIELD(tokenize_tasks);
  TF_FIELD(batch_size);
  TF_FIELD(queue_wait_s);
  TF_FIELD(compute_s);
#undef TF_FIELD
}

void bind_former(py::module_& m) {
  py::class_<BatchKnobs>(m, "BatchKnobs", "Batch former knobs (see engine.config.BatchingConfig).")
      .def(py::init(&make_knobs), py::arg("max_batch_size") = 32,
           py::arg("max_batch_tokens") = 8192, py::arg("max_wait_ms") = 0.0,
           py::arg("max_row_padding") = 16, py::arg("fairness") = 0.7,
           py::arg("max_priority_wait_ms") = 1000.0, py::arg("priority_fill") = false,
           py::arg("short_first") = 0.0)
      .def_readonly("max_batch_size", &BatchKnobs::max_batch_size)
      .def_readonly("max_batch_tokens", &BatchKnobs::max_batch_tokens)
      .def_property_readonly("max_wait_ms",
                             [](const BatchKnobs& k) { return k.max_wait_ns * 1e-6; })
      .def_readonly("max_row_padding", &BatchKnobs::max_row_padding)
      .def_readonly("fairness", &BatchKnobs::fairness)
      .def_property_readonly("max_priority_wait_ms",
                             [](const BatchKnobs& k) { return k.max_priority_wait_ns * 1e-6; })
      .def_readonly("priority_fill", &BatchKnobs::priority_fill)
      .def_readonly("short_first", &BatchKnobs::short_first);

  py::class_<BatchPlan>(m, "BatchPlan", "The batch plan() would form now.")
      .def_property_readonly("rows",
                             [](const BatchPlan& p) {
                               py::list out;
                               for (const SeqKey& k : p.rows) out.append(py::make_tuple(k.order, k.index));
                               return out;
                             },
                             "(order, index) of each row, oldest first")
      .def_readonly("width", &BatchPlan::width)
      .def_readonly("real_tokens", &BatchPlan::real_tokens)
      .def_property_readonly("padded_tokens", &BatchPlan::padded_tokens)
      .def_readonly("ready", &BatchPlan::ready)
      .def_readonly("full", &BatchPlan::full)
      .def_property_readonly(
          "wake_at",
          [](const BatchPlan& p) -> std::optional<double> {
            if (p.wake_at_ns == kNever) return std::nullopt;
            return static_cast<double>(p.wake_at_ns) * 1e-9;
          },
          "when max_wait makes a held batch ready (seconds, the caller's clock), or None");

  py::class_<BatchQueue>(m, "BatchQueue",
                         "The batch former's queue, driven by a caller's clock (for tests).")
      .def(py::init<>())
      .def(
          "push",
          [](BatchQueue& q, uint64_t order, uint32_t index, uint32_t length, double arrival,
             int32_t priority, double overtake) {
            return q.push({order, index}, length, seconds_to_ns(arrival), priority,
                          seconds_to_ns(overtake));
          },
          py::arg("order"), py::arg("index"), py::arg("length"), py::arg("arrival"),
          py::arg("priority") = kDefaultPriority, py::arg("overtake") = 0.0,
          "Queue a sequence (arrival in seconds, priority: its class, lower is more urgent, "
          "overtake: seconds after its arrival that it is due); False if (order, index) is "
          "already queued.")
      .def(
          "erase",
          [](BatchQueue& q, uint64_t order, uint32_t index) { return q.erase({order, index}); },
          py::arg("order"), py::arg("index"), "Remove a sequence; its length, or -1.")
      .def(
          "plan",
          [](const BatchQueue& q, double now, const BatchKnobs& knobs, uint32_t parts) {
            return q.plan(seconds_to_ns(now), knobs, parts);
          },
          py::arg("now"), py::arg("knobs"), py::arg("parts") = 1,
          "The next batch at time now (seconds), its share over `parts` idle executors; pure.")
      .def("take", &BatchQueue::take, py::arg("plan"), "Remove a plan's rows.")
      .def("__len__", &BatchQueue::size)
      .def_property_readonly("tokens", &BatchQueue::tokens);
}

void bind_scheduler(py::module_& m) {
  py::class_<SequenceEncoder, std::shared_ptr<SequenceEncoder>>(m, "SequenceEncoder")
      .def_property_readonly("max_length", &SequenceEncoder::max_length)
      .def_property_readonly("pad_id", &SequenceEncoder::pad_id);
  py::class_<ByteEncoder, SequenceEncoder, std::shared_ptr<ByteEncoder>>(
      m, "ByteEncoder", "Test encoder: one token per UTF-8 byte between [CLS]=1 and [SEP]=2.")
      .def(py::init<uint32_t>(), py::arg("max_length") = 512);
  py::class_<PretokenizedEncoder, SequenceEncoder, std::shared_ptr<PretokenizedEncoder>>(
      m, "PretokenizedEncoder",
      "For a scheduler fed only by submit_tokens(): pad id and limits, no tokenizer.")
      .def(py::init<uint32_t, int64_t, uint32_t, uint32_t>(), py::arg("max_length"),
           py::arg("pad_id"), py::arg("special_single") = 2, py::arg("special_pair") = 3);

  py::class_<ReadyBatch>(m, "NativeBatch", "A collated batch from Scheduler.next_batch().")
      .def_readonly("id", &ReadyBatch::id)
      .def_readonly("rows", &ReadyBatch::rows)
      .def_readonly("width", &ReadyBatch::width)
      .def_readonly("real_tokens", &ReadyBatch::real_tokens)
      .def_readonly("max_queue_wait_s", &ReadyBatch::max_queue_wait_s)
      .def_readonly("request_ids", &ReadyBatch::request_ids, "per row: its request id")
      .def_readonly("indices", &ReadyBatch::indices, "per row: its text's index in the request")
      .def_readonly("failures", &ReadyBatch::failures, "(request id, message) failed outside")
      .def_property_readonly(
          "arrays",
          [](py::object self) {
            const ReadyBatch& b = self.cast<const ReadyBatch&>();
            return py::make_tuple(plane(self, b, 0), plane(self, b, 1), plane(self, b, 2));
          },
          "(input_ids, attention_mask, token_type_ids): int64 [rows, width] views, no copy");

  py::class_<Scheduler>(m, "Scheduler", "Thread-safe request queue, batch former and collator.")
      .def(py::init([](const py::object& encoder, const BatchKnobs& knobs,
                       uint64_t max_queue_tokens, uint32_t tokenizer_threads,
                       size_t inline_max_bytes, uint32_t chunk_texts,
                       std::optional<std::vector<uint64_t>> class_queue_tokens) {
             SchedulerOptions o;
             o.knobs = knobs;
             o.max_queue_tokens = max_queue_tokens;
             if (class_queue_tokens) o.class_queue_tokens = std::move(*class_queue_tokens);
             o.tokenizer_threads = tokenizer_threads;
             o.inline_max_bytes = inline_max_bytes;
             o.chunk_texts = chunk_texts;
             return std::make_unique<Scheduler>(to_encoder(encoder), o);
           }),
           py::arg("encoder"), py::arg("knobs"), py::arg("max_queue_tokens") = 1'000'000,
           py::arg("tokenizer_threads") = 1, py::arg("inline_max_bytes") = 4096,
           py::arg("chunk_texts") = 64, py::arg("class_queue_tokens") = py::none(),
           "encoder: an engine._native.WordPieceTokenizer, or a SequenceEncoder. "
           "class_queue_tokens: per priority class, the queued tokens past which its "
           "requests are refused (None: max_queue_tokens for all).")
      .def(
          "submit",
          [](Scheduler& s, uint64_t id, std::vector<std::string> texts,
             std::optional<std::vector<std::string>> pairs, std::optional<double> timeout,
             int32_t priority) {
            s.submit(id, std::move(texts), pairs ? std::move(*pairs) : std::vector<std::string>{},
                     timeout.value_or(0), priority);
          },
          py::arg("id"), py::arg("texts"), py::arg("pairs") = py::none(),
          py::arg("timeout") = py::none(), py::arg("priority") = kDefaultPriority,
          py::call_guard<py::gil_scoped_release>(),
          "Queue request id (texts[, pairs]) in class priority; raises QueueFull / "
          "RequestTooLarge at once.")
      .def(
          "submit_tokens",
          [](Scheduler& s, uint64_t id, std::vector<std::vector<int32_t>> ids,
             std::optional<std::vector<std::vector<uint32_t>>> type_ids,
             std::optional<double> timeout, int32_t priority) {
            s.submit_tokens(id, to_seqs(std::move(ids), std::move(type_ids)), timeout.value_or(0),
                            priority);
          },
          py::arg("id"), py::arg("ids"), py::arg("type_ids") = py::none(),
          py::arg("timeout") = py::none(), py::arg("priority") = kDefaultPriority,
          py::call_guard<py::gil_scoped_release>(),
          "Queue already tokenized sequences (the Hugging Face fallback).")
      .def("cancel", &Scheduler::cancel, py::arg("id"), py::arg("timed_out") = false,
           py::call_guard<py::gil_scoped_release>(),
           "Drop the request's sequences not yet computed; False if none were left.")
      .def("next_batch", &Scheduler::next_batch, py::call_guard<py::gil_scoped_release>(),
           "Block until a batch is ready; None once shut down.")
      .def("shutdown", &Scheduler::shutdown, py::arg("drain") = false,
           py::call_guard<py::gil_scoped_release>(),
           "Refuse new requests; next_batch() returns None (after the queue, if drain).")
      .def("record_compute", &Scheduler::record_compute, py::arg("seconds"), py::arg("failed"),
           py::arg("padded_tokens") = 0)
      .def("record_outcomes", &Scheduler::record_outcomes, py::arg("ok") = 0,
           py::arg("failed") = 0, py::arg("timeouts") = 0, py::arg("cancellations") = 0)
      .def("stats", &Scheduler::stats, "A copy of the counters (a SchedulerStats).")
      .def_property_readonly("knobs", &Scheduler::knobs)
      .def_property_readonly("class_queue_tokens", &Scheduler::class_queue_tokens,
                             "Per priority class, most urgent first: the queued tokens past "
                             "which its requests are refused.");

  py::register_exception<QueueFull>(m, "QueueFull");
  py::register_exception<RequestTooLarge>(m, "RequestTooLarge");
}

}  // namespace

void register_scheduler(py::module_& m) {
  m.attr("PRIORITY_MOST_URGENT") = kMostUrgentPriority;
  m.attr("PRIORITY_LEAST_URGENT") = kLeastUrgentPriority;
  m.attr("PRIORITY_DEFAULT") = kDefaultPriority;
  bind_stats(m);
  bind_former(m);
  bind_scheduler(m);
}

}  // namespace textfleet
