// C++ consumer of libdspnet through the header-only dspnet.hpp: RAII model, exceptions, views,
// std::function progress (true cancels), exceptions from the callback, and 4 threads on one model.
//
//   capi_test_cpp WEIGHTS DATA_DIR light|quick|full
//
// light: errors, cancel and callback exceptions, and a round trip whose extent is the support slice alone
// (no backbone pass; what runs under valgrind by default); quick: + one real segmentation and a cancel
// mid-run; full: + 4 threads sharing one model.
// Prints "capi_test_cpp MODE: N checks, M failed"; exits 1 on any failure.

#include <dspnet.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

static_assert(!std::is_copy_constructible_v<dspnet::Model>, "Model must be move-only");
static_assert(!std::is_copy_assignable_v<dspnet::Model>, "Model must be move-only");
static_assert(std::is_nothrow_move_constructible_v<dspnet::Model>, "Model moves must not throw");
static_assert(std::is_nothrow_move_assignable_v<dspnet::Model>, "Model moves must not throw");
static_assert(!std::is_constructible_v<dspnet::VolumeView<float>, std::vector<float> &&, const dspnet::Dims &>,
              "a view of a temporary vector must not compile");
static_assert(dspnet::VolumeView<std::int16_t>::dtype == DSPNET_DTYPE_I16, "dtype mapping");
static_assert(dspnet::VolumeView<double>::dtype == DSPNET_DTYPE_F64, "dtype mapping");

namespace {

int checks = 0;
int failures = 0;

void check(bool ok, const std::string &what, int line) {
    ++checks;
    if (!ok) {
        ++failures;
        std::cerr << "FAIL capi_test.cpp:" << line << ": " << what << "\n";
    }
}
#define CHECK(cond, what) check((cond), std::string(#cond) + ": " + (what), __LINE__)

// Run `f`, which must throw dspnet::Error with `status`.
template <class F> void expect_error(F &&f, dspnet_status_t status, int line) {
    ++checks;
    try {
        f();
        ++failures;
        std::cerr << "FAIL capi_test.cpp:" << line << ": no exception, expected " << dspnet_status_name(status) << "\n";
    } catch (const dspnet::Error &e) {
        if (e.status() != status || std::string(e.what()).empty()) {
            ++failures;
            std::cerr << "FAIL capi_test.cpp:" << line << ": " << e.status_name() << " (" << e.what() << "), expected "
                      << dspnet_status_name(status) << "\n";
        }
    }
}
#define EXPECT_ERROR(expr, status) expect_error([&] { expr; }, status, __LINE__)

constexpr std::size_t NI = 64, NJ = 64, NK = 6, NV = NI * NJ * NK, SUPPORT_K = 2;

template <class T> std::vector<T> read_raw(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    std::vector<T> v(NV);
    f.read(reinterpret_cast<char *>(v.data()), static_cast<std::streamsize>(NV * sizeof(T)));
    if (!f) throw std::runtime_error("cannot read " + path);
    return v;
}

struct CallbackFailure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A session gives Model::segment's labels and confidences, and a correction encodes nothing new.
void session_runs(const dspnet::Model &model, const dspnet::VolumeView<std::int16_t> &view, const std::vector<std::uint16_t> &support,
                  const dspnet::SegmentOptions &opts) {
    dspnet::SegmentSummary expected_summary, first_summary;
    const std::vector<std::uint16_t> expected = model.segment(view, support, opts, &expected_summary);
    dspnet::Session session(model, view);
    const std::vector<std::uint16_t> first = session.segment(support, opts, &first_summary);
    CHECK(first == expected, "session labels differ from Model::segment");
    CHECK(first_summary.slice_confidence == expected_summary.slice_confidence && first_summary.slice_confidence.size() == NK &&
              first_summary.slice_confidence[SUPPORT_K] == -1.0f && first_summary.suggested_slices == expected_summary.suggested_slices,
          "session summary differs");
    const dspnet::SessionInfo before = session.info();
    std::vector<std::uint16_t> corrected = support;
    const std::size_t plane = NI * NJ;
    std::copy(first.begin() + plane, first.begin() + 2 * plane, corrected.begin() + plane); // accept slice 1 as painted
    const std::vector<std::uint16_t> again = session.segment(corrected, opts);
    const dspnet::SessionInfo after = session.info();
    CHECK(after.slices_encoded == before.slices_encoded && after.slices_reused > before.slices_reused, "correction re-encoded slices");
    CHECK(again == model.segment(view, corrected, opts), "corrected session run differs from Model::segment");
}

// One real segmentation checked in detail and a cancel mid-run; with `full`, 4 threads on one model.
void real_runs(const dspnet::Model &model, const dspnet::VolumeView<std::int16_t> &view, const std::vector<std::uint16_t> &support,
               dspnet::SegmentOptions opts, bool full) {
    // A real run with progress and summary.
    std::size_t calls = 0, last_done = 0, last_total = 0;
    opts.progress = [&](std::size_t done, std::size_t total) {
        ++calls;
        last_done = done;
        last_total = total;
        return false;
    };
    dspnet::SegmentSummary summary;
    const std::vector<std::uint16_t> labels = model.segment(view, support, opts, &summary);
    CHECK(labels.size() == NV, "size");
    CHECK(summary.slice_axis == 2 && summary.modality == dspnet::Modality::Ct && summary.num_classes == 1 &&
              summary.slices_processed == 2,
          "summary");
    CHECK(calls == 3 && last_done == 2 && last_total == 2, "progress calls " + std::to_string(calls));
    std::size_t labelled = 0;
    for (auto l : labels) labelled += l != 0;
    CHECK(labelled == summary.labelled_voxels && labelled > 0, std::to_string(labelled));
    CHECK(std::equal(labels.begin() + SUPPORT_K * NI * NJ, labels.begin() + (SUPPORT_K + 1) * NI * NJ,
                     support.begin() + SUPPORT_K * NI * NJ),
          "support slice kept");
    std::cout << "segmented " << NI << "x" << NJ << "x" << NK << ": " << labelled << " labelled voxels in "
              << summary.seconds << " s\n";

    {
        // Cancel after the first processed slice.
        std::vector<std::uint16_t> out(NV, 0xBEEF);
        dspnet::SegmentOptions cancel = opts;
        cancel.progress = [](std::size_t done, std::size_t) { return done == 1; };
        try {
            model.segment_into(view, support.data(), out.data(), cancel);
            CHECK(false, "no exception on cancel");
        } catch (const dspnet::Error &e) {
            CHECK(e.cancelled(), e.what());
        }
        CHECK(std::all_of(out.begin(), out.end(), [](std::uint16_t v) { return v == 0xBEEF; }), "output touched");
    }
    if (full) {
        // Four threads sharing one const model: identical labels.
        const dspnet::Model &shared = model;
        std::vector<std::vector<std::uint16_t>> results(4);
        std::vector<std::string> errors(4);
        std::vector<std::thread> threads;
        dspnet::SegmentOptions plain = opts;
        plain.progress = nullptr;
        for (int t = 0; t < 4; ++t) {
            threads.emplace_back([&, t] {
                try {
                    results[t] = shared.segment(view, support, plain);
                } catch (const std::exception &e) {
                    errors[t] = e.what();
                }
            });
        }
        for (auto &th : threads) th.join();
        for (int t = 0; t < 4; ++t) {
            CHECK(errors[t].empty(), errors[t]);
            CHECK(results[t] == labels, "thread " + std::to_string(t) + " differs");
        }
    }
}

} // namespace

int main(int argc, char **argv) {
    if (argc != 4) {
        std::cerr << "usage: " << argv[0] << " WEIGHTS DATA_DIR quick|full\n";
        return 2;
    }
    const std::string weights = argv[1], data = argv[2], mode = argv[3];
    const bool full = mode == "full";
    const bool quick = full || mode == "quick";
    if (!quick && mode != "light") {
        std::cerr << "unknown mode " << mode << "\n";
        return 2;
    }

    const auto image = read_raw<std::int16_t>(data + "/ct-liver-64x64x6-i16.raw");
    const auto truth = read_raw<std::uint16_t>(data + "/ct-liver-64x64x6-labels-u16.raw");
    std::vector<std::uint16_t> support(NV, 0);
    std::copy(truth.begin() + SUPPORT_K * NI * NJ, truth.begin() + (SUPPORT_K + 1) * NI * NJ, support.begin() + SUPPORT_K * NI * NJ);

    CHECK(dspnet::abi_compatible(), "ABI");
    CHECK(dspnet::version() == std::to_string(DSPNET_VERSION_MAJOR) + "." + std::to_string(DSPNET_VERSION_MINOR) + "." +
                                   std::to_string(DSPNET_VERSION_PATCH),
          dspnet::version());

    // Errors surface as dspnet::Error with the C status.
    EXPECT_ERROR(dspnet::Model("/nonexistent/weights.safetensors"), DSPNET_ERROR_IO);
    EXPECT_ERROR(dspnet::Model(weights, "cuda"), DSPNET_ERROR_BACKEND_UNAVAILABLE);
    EXPECT_ERROR(dspnet::Model(weights, "vulkan"), DSPNET_ERROR_INVALID_ARGUMENT);
    EXPECT_ERROR((dspnet::VolumeView<std::int16_t>(image, {NI, NJ, NK + 1})), DSPNET_ERROR_SHAPE);
    EXPECT_ERROR(dspnet::voxel_count({SIZE_MAX, SIZE_MAX, 2}), DSPNET_ERROR_SHAPE);

    try {
        // RAII and moves.
        dspnet::Model first(weights, "cpu");
        dspnet::Model model(std::move(first));
        CHECK(!first && model, "moved-from model is empty");
        CHECK(model.device() == "cpu", model.device());
        dspnet::Model other(weights);
        other = std::move(model); // frees other's model, takes this one
        model = std::move(other);
        CHECK(model && !other, "move assignment");
        CHECK(!dspnet::Model(), "a default-constructed model is empty");

        const dspnet::VolumeView<std::int16_t> view(image, {NI, NJ, NK}, {1.0, 1.0, 1.0});
        CHECK(view(5, 6, 2) == image[5 + NI * (6 + NJ * 2)], "view indexing");
        dspnet::SegmentOptions opts;
        opts.modality = dspnet::Modality::Ct;
        opts.extent = dspnet::Extent::range(1, 3);

        // Errors from segment.
        std::vector<std::uint16_t> empty(NV, 0);
        EXPECT_ERROR(model.segment(view, empty, opts), DSPNET_ERROR_NO_SUPPORT);
        EXPECT_ERROR(model.segment(view, std::vector<std::uint16_t>(NV - 1), opts), DSPNET_ERROR_SHAPE);
        dspnet::SegmentOptions bad_head = opts;
        CHECK(bad_head.head.avg_sp_area == 100 && bad_head.head.max_num_sp == 5, "head defaults are the library's");
        bad_head.head.avg_sp_area = 0;
        EXPECT_ERROR(model.segment(view, support, bad_head), DSPNET_ERROR_INVALID_ARGUMENT);
        dspnet::Model moved_from = std::move(model);
        EXPECT_ERROR(model.segment(view, support, opts), DSPNET_ERROR_NULL_ARGUMENT); // empty Model
        model = std::move(moved_from);

        // Cancel from the callback (true = cancel): the output buffer is untouched.
        std::vector<std::uint16_t> out(NV, 0xBEEF);
        dspnet::SegmentOptions cancel = opts;
        cancel.progress = [](std::size_t, std::size_t) { return true; };
        try {
            model.segment_into(view, support.data(), out.data(), cancel);
            CHECK(false, "no exception on cancel");
        } catch (const dspnet::Error &e) {
            CHECK(e.cancelled(), e.what());
        }
        // An exception thrown by the callback cancels and comes back out of segment().
        cancel.progress = [](std::size_t, std::size_t) -> bool { throw CallbackFailure("from the callback"); };
        try {
            model.segment_into(view, support.data(), out.data(), cancel);
            CHECK(false, "callback exception swallowed");
        } catch (const CallbackFailure &e) {
            CHECK(std::string(e.what()) == "from the callback", e.what());
        }
        CHECK(std::all_of(out.begin(), out.end(), [](std::uint16_t v) { return v == 0xBEEF; }), "output touched");

        // A round trip without inference: the extent is the support slice alone.
        {
            dspnet::SegmentOptions light = opts;
            light.extent = dspnet::Extent::range(SUPPORT_K, SUPPORT_K);
            light.classes = {1};
            std::size_t light_calls = 0;
            light.progress = [&](std::size_t, std::size_t) { return ++light_calls == 0; };
            dspnet::SegmentSummary s;
            const auto same = model.segment(view, support, light, &s);
            CHECK(same == support && s.slices_processed == 0 && s.num_classes == 1 && light_calls >= 1, "light round trip");
        }
        if (quick) {
            real_runs(model, view, support, opts, full);
            session_runs(model, view, support, opts);
        }
        // Sessions: an empty one refuses to run; a tiny budget is refused with the C status.
        {
            dspnet::Session none;
            EXPECT_ERROR(none.segment(support, opts), DSPNET_ERROR_NULL_ARGUMENT);
            EXPECT_ERROR(dspnet::Session(model, view, 16), DSPNET_ERROR_INVALID_ARGUMENT);
            dspnet::Session s(model, view);
            EXPECT_ERROR(s.segment(std::vector<std::uint16_t>(NV - 1), opts), DSPNET_ERROR_SHAPE);
            dspnet::Session moved = std::move(s);
            CHECK(!s && moved && moved.info().slices_encoded == 0 && moved.dims()[2] == NK, "moved session");
        }
    } catch (const std::exception &e) {
        CHECK(false, std::string("unexpected exception: ") + e.what());
    }

    std::cout << "capi_test_cpp " << mode << ": " << checks << " checks, " << failures << " failed\n";
    return failures == 0 ? 0 : 1;
}
