/*
 * dspnet.hpp: header-only C++17 API of libdspnet, a thin layer over the C ABI in dspnet.h.
 * SPDX-License-Identifier: MIT OR Apache-2.0
 *
 * No C++ type crosses the shared-library boundary: everything below is compiled into the consumer,
 * so any C++17 compiler and standard library work with any libdspnet.so.1 (link with dspnet::dspnet_cpp
 * in CMake, or -ldspnet).
 *
 *   dspnet::Model model("weights.safetensors");                 // throws dspnet::Error
 *   dspnet::VolumeView<int16_t> image(ptr, {nx, ny, nz}, {sx, sy, sz});
 *   dspnet::SegmentOptions opts;
 *   opts.progress = [](size_t done, size_t total) { return false; };   // true cancels (as in C)
 *   std::vector<uint16_t> labels = model.segment(image, support_ptr, opts);
 *
 *   dspnet::Session session(model, image);        // keeps encoded slices: corrections re-run in seconds
 *   labels = session.segment(support_ptr, opts);  // first run encodes; the next ones reuse
 *
 * Conventions
 * - Errors are exceptions of type dspnet::Error, carrying the C status and message. A cancelled run
 *   throws dspnet::Error with status() == DSPNET_ERROR_CANCELLED (and cancelled() == true).
 * - The progress callback returns true to cancel and false to go on, like the C callback's non-zero /
 *   zero. An exception thrown by the callback cancels the run and is rethrown by segment().
 * - dspnet::Model is move-only (RAII over dspnet_model_t) and const member functions may be called from
 *   many threads at once. dspnet::Session is move-only (RAII over dspnet_session_t), copies the image,
 *   keeps the model alive, and runs one segmentation at a time: a call while another runs on the same
 *   session throws dspnet::Error with status DSPNET_ERROR_BUSY.
 * - Views never own memory; the buffers must outlive the call. Layout: i fastest ([k][j][i]).
 */
#ifndef DSPNET_HPP
#define DSPNET_HPP

#include "dspnet.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if !(__cplusplus >= 201703L || (defined(_MSVC_LANG) && _MSVC_LANG >= 201703L))
#error "dspnet.hpp needs C++17"
#endif

namespace dspnet {

/// A failed libdspnet call: the C status and the message of dspnet_last_error_message().
class Error : public std::runtime_error {
public:
    Error(dspnet_status_t status, const std::string &message) : std::runtime_error(message), status_(status) {}
    /// The C status code (never DSPNET_OK).
    dspnet_status_t status() const noexcept { return status_; }
    /// "DSPNET_ERROR_IO", ...
    const char *status_name() const noexcept { return dspnet_status_name(static_cast<int>(status_)); }
    /// True when the progress callback cancelled the run.
    bool cancelled() const noexcept { return status_ == DSPNET_ERROR_CANCELLED; }

private:
    dspnet_status_t status_;
};

namespace detail {

/// Throw dspnet::Error for a failed status, with this thread's message.
inline void check(dspnet_status_t status) {
    if (status != DSPNET_OK) {
        throw Error(status, std::string(dspnet_status_name(static_cast<int>(status))) + ": " + dspnet_last_error_message());
    }
}

template <class T> struct dtype_of;
template <> struct dtype_of<std::uint8_t> { static constexpr dspnet_dtype_t value = DSPNET_DTYPE_U8; };
template <> struct dtype_of<std::int8_t> { static constexpr dspnet_dtype_t value = DSPNET_DTYPE_I8; };
template <> struct dtype_of<std::uint16_t> { static constexpr dspnet_dtype_t value = DSPNET_DTYPE_U16; };
template <> struct dtype_of<std::int16_t> { static constexpr dspnet_dtype_t value = DSPNET_DTYPE_I16; };
template <> struct dtype_of<std::uint32_t> { static constexpr dspnet_dtype_t value = DSPNET_DTYPE_U32; };
template <> struct dtype_of<std::int32_t> { static constexpr dspnet_dtype_t value = DSPNET_DTYPE_I32; };
template <> struct dtype_of<float> { static constexpr dspnet_dtype_t value = DSPNET_DTYPE_F32; };
template <> struct dtype_of<double> { static constexpr dspnet_dtype_t value = DSPNET_DTYPE_F64; };

} // namespace detail

/// Voxel counts along i, j, k.
using Dims = std::array<std::size_t, 3>;
/// Voxel size along i, j, k in millimetres.
using Spacing = std::array<double, 3>;

/// Number of voxels of `dims`; throws dspnet::Error (DSPNET_ERROR_SHAPE) if the product overflows.
inline std::size_t voxel_count(const Dims &dims) {
    std::size_t n = 1;
    for (std::size_t d : dims) {
        if (d != 0 && n > std::numeric_limits<std::size_t>::max() / d) {
            throw Error(DSPNET_ERROR_SHAPE, "volume dimensions overflow size_t");
        }
        n *= d;
    }
    return n;
}

/// A non-owning view of a volume of T (uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float or
/// double) in caller memory: voxel (i, j, k) at data[i + dims[0] * (j + dims[1] * k)].
template <class T> class VolumeView {
public:
    static constexpr dspnet_dtype_t dtype = detail::dtype_of<T>::value;

    VolumeView(const T *data, const Dims &dims, const Spacing &spacing = {1.0, 1.0, 1.0})
        : data_(data), dims_(dims), spacing_(spacing) {}
    /// A view of a vector; throws dspnet::Error (DSPNET_ERROR_SHAPE) if its size does not match dims.
    VolumeView(const std::vector<T> &data, const Dims &dims, const Spacing &spacing = {1.0, 1.0, 1.0})
        : VolumeView(data.data(), dims, spacing) {
        if (data.size() != voxel_count(dims)) {
            throw Error(DSPNET_ERROR_SHAPE, "vector size does not match the volume dimensions");
        }
    }

    /// A view of a temporary would dangle.
    VolumeView(std::vector<T> &&, const Dims &, const Spacing & = {1.0, 1.0, 1.0}) = delete;

    const T *data() const noexcept { return data_; }
    const Dims &dims() const noexcept { return dims_; }
    const Spacing &spacing() const noexcept { return spacing_; }
    std::size_t size() const { return voxel_count(dims_); }
    const T &operator()(std::size_t i, std::size_t j, std::size_t k) const { return data_[i + dims_[0] * (j + dims_[1] * k)]; }

    /// The C description of this view (borrowing the same memory).
    dspnet_volume_t c_volume() const noexcept {
        dspnet_volume_t v;
        v.data = data_;
        v.dtype = dtype;
        for (int a = 0; a < 3; ++a) {
            v.dims[a] = dims_[a];
            v.spacing[a] = spacing_[a];
        }
        return v;
    }

private:
    const T *data_;
    Dims dims_;
    Spacing spacing_;
};

enum class Modality : dspnet_modality_t { Auto = DSPNET_MODALITY_AUTO, Ct = DSPNET_MODALITY_CT, Mri = DSPNET_MODALITY_MRI };
enum class Fov : dspnet_fov_t { Slice = DSPNET_FOV_SLICE, Auto = DSPNET_FOV_AUTO };
enum class Components : dspnet_components_t { Support = DSPNET_COMPONENTS_SUPPORT, All = DSPNET_COMPONENTS_ALL };
/// Memory: follow the structure slice by slice (default); Independent: each slice on its own (the paper).
enum class Propagation : dspnet_propagation_t { Memory = DSPNET_PROPAGATION_MEMORY, Independent = DSPNET_PROPAGATION_INDEPENDENT };

/// Which slices to segment: Extent::automatic(), Extent::all() or Extent::range(first, last).
struct Extent {
    dspnet_extent_mode_t mode = DSPNET_EXTENT_AUTO;
    std::size_t first = 0;
    std::size_t last = 0;

    static Extent automatic() { return Extent{}; }
    static Extent all() { return Extent{DSPNET_EXTENT_ALL, 0, 0}; }
    /// Slices first..=last along the slice axis.
    static Extent range(std::size_t first, std::size_t last) { return Extent{DSPNET_EXTENT_RANGE, first, last}; }
};

/// (done, total) -> cancel? Return true to cancel, false to continue (same sense as the C callback).
using ProgressCallback = std::function<bool(std::size_t done, std::size_t total)>;

namespace detail {
/// The library's default head parameters (what dspnet_segment_options_init sets).
inline dspnet_head_options_t default_head_options() {
    dspnet_segment_options_t c;
    dspnet_segment_options_init(&c);
    return c.head;
}
}  // namespace detail

/// Options of Model::segment; the defaults are the library's.
struct SegmentOptions {
    /// 0 = i, 1 = j, 2 = k, -1 = automatic.
    int slice_axis = -1;
    Modality modality = Modality::Auto;
    Extent extent = Extent::automatic();
    Fov fov = Fov::Slice;
    Components components = Components::Support;
    Propagation propagation = Propagation::Memory;
    /// Prototype-head parameters under the official code's names (see dspnet_head_options_t); the library's
    /// defaults unless changed, e.g. `options.head.avg_sp_area = 50;`.
    dspnet_head_options_t head = detail::default_head_options();
    /// Label values to segment; empty = every label found in the support.
    std::vector<std::uint16_t> classes;
    /// Called on the calling thread; empty = none.
    ProgressCallback progress;
};

/// What a run did (dspnet_segment_summary_t).
struct SegmentSummary {
    int slice_axis = -1;
    Modality modality = Modality::Auto;
    std::size_t num_classes = 0;
    std::size_t slices_processed = 0;
    std::size_t labelled_voxels = 0;
    double seconds = 0.0;
    /// Per slice along the slice axis: confidence in [0, 1], or -1 where the slice was not scored.
    std::vector<float> slice_confidence;
    /// Slices to check or paint next, least confident first (at most DSPNET_MAX_SUGGESTIONS).
    std::vector<std::size_t> suggested_slices;
};

/// What a session holds (dspnet_session_info_t).
struct SessionInfo {
    Dims dims{};
    std::size_t feature_budget_bytes = 0;
    std::size_t cached_slices = 0;
    std::size_t cached_bytes = 0;
    std::size_t image_bytes = 0;
    std::size_t slices_encoded = 0;
    std::size_t slices_reused = 0;
    std::size_t chain_bytes = 0;
    std::size_t chains_replayed = 0;
};

namespace detail {

/// Run one C segment call (`call(options, summary)`) with `options` translated, the progress callback
/// bridged (exceptions carried across and rethrown) and the summary read back; `max_slices` bounds the
/// slice count (the largest dimension).
template <class Call> SegmentSummary run_segment(const SegmentOptions &options, std::size_t max_slices, Call call) {
    dspnet_segment_options_t c;
    dspnet_segment_options_init(&c);
    c.slice_axis = options.slice_axis;
    c.modality = static_cast<dspnet_modality_t>(options.modality);
    c.extent = options.extent.mode;
    c.extent_first = options.extent.first;
    c.extent_last = options.extent.last;
    c.fov = static_cast<dspnet_fov_t>(options.fov);
    c.components = static_cast<dspnet_components_t>(options.components);
    c.propagation = static_cast<dspnet_propagation_t>(options.propagation);
    c.head = options.head;
    c.classes = options.classes.empty() ? nullptr : options.classes.data();
    c.num_classes = options.classes.size();

    struct State {
        const ProgressCallback *callback;
        std::exception_ptr error;
    } state{&options.progress, nullptr};
    if (options.progress) {
        c.progress = [](void *user, std::size_t done, std::size_t total) -> int {
            auto *s = static_cast<State *>(user);
            try {
                return (*s->callback)(done, total) ? 1 : 0;
            } catch (...) { // never let an exception unwind through libdspnet
                s->error = std::current_exception();
                return 1;
            }
        };
        c.user_data = &state;
    }

    SegmentSummary s;
    s.slice_confidence.assign(max_slices, -1.0f);
    dspnet_segment_summary_t cs{};
    cs.struct_size = sizeof cs;
    cs.slice_confidence = s.slice_confidence.data();
    cs.slice_confidence_capacity = s.slice_confidence.size();
    const dspnet_status_t status = call(&c, &cs);
    if (state.error) {
        std::rethrow_exception(state.error);
    }
    check(status);
    s.slice_axis = cs.slice_axis;
    s.modality = static_cast<Modality>(cs.modality);
    s.num_classes = cs.num_classes;
    s.slices_processed = cs.slices_processed;
    s.labelled_voxels = cs.labelled_voxels;
    s.seconds = cs.seconds;
    s.slice_confidence.resize(cs.num_slices < max_slices ? cs.num_slices : max_slices);
    s.suggested_slices.assign(cs.suggested_slices, cs.suggested_slices + cs.num_suggested);
    return s;
}

inline std::size_t largest(const Dims &d) { return d[0] > d[1] ? (d[0] > d[2] ? d[0] : d[2]) : (d[1] > d[2] ? d[1] : d[2]); }

} // namespace detail

/// Release version of the loaded library, e.g. "0.2.0".
inline std::string version() { return dspnet_version(); }
/// True when the loaded library implements the ABI this header describes.
inline bool abi_compatible() noexcept { return dspnet_abi_version() == DSPNET_ABI_VERSION; }

/// A loaded model: move-only owner of a dspnet_model_t. Immutable; share it between threads freely.
class Model {
public:
    /// An empty model (like a moved-from one): segment() on it throws DSPNET_ERROR_NULL_ARGUMENT.
    Model() noexcept = default;

    /// Load weights (empty path = the default model, see dspnet_model_load) onto a device ("cpu",
    /// "cuda", "cuda:N"; empty = best available). Throws dspnet::Error.
    explicit Model(const std::string &weights_path, const std::string &device = std::string()) {
        if (!abi_compatible()) {
            throw Error(DSPNET_ERROR_BACKEND_UNAVAILABLE, "libdspnet ABI " + std::to_string(dspnet_abi_version()) +
                                                               " does not match dspnet.hpp (ABI " + std::to_string(DSPNET_ABI_VERSION) + ")");
        }
        dspnet_model_t *raw = nullptr;
        detail::check(dspnet_model_load(weights_path.c_str(), device.empty() ? nullptr : device.c_str(), &raw));
        handle_.reset(raw);
    }

    Model(Model &&) noexcept = default;
    Model &operator=(Model &&) noexcept = default;
    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;

    /// The C handle (still owned by this object); NULL after a move.
    const dspnet_model_t *get() const noexcept { return handle_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(handle_); }
    /// "cpu" or "cuda:N".
    std::string device() const { return dspnet_model_device(handle_.get()); }

    /// Segment `image` from `support` (uint16 labels with the image's dims) into `out` (caller buffer of
    /// image.size() values, written only on success). Returns what the run did. Throws dspnet::Error.
    template <class T>
    SegmentSummary segment_into(const VolumeView<T> &image, const std::uint16_t *support, std::uint16_t *out,
                                const SegmentOptions &options = SegmentOptions()) const {
        const dspnet_volume_t volume = image.c_volume();
        return detail::run_segment(options, detail::largest(image.dims()), [&](const dspnet_segment_options_t *c, dspnet_segment_summary_t *cs) {
            return dspnet_segment_with_summary(handle_.get(), &volume, support, out, c, cs);
        });
    }

    /// Segment and return the label volume (image.size() values). `summary`, if given, receives what
    /// the run did. Throws dspnet::Error.
    template <class T>
    std::vector<std::uint16_t> segment(const VolumeView<T> &image, const std::uint16_t *support,
                                       const SegmentOptions &options = SegmentOptions(), SegmentSummary *summary = nullptr) const {
        std::vector<std::uint16_t> out(image.size());
        SegmentSummary s = segment_into(image, support, out.data(), options);
        if (summary != nullptr) {
            *summary = s;
        }
        return out;
    }

    /// As above with the support in a vector, whose size must match the image.
    template <class T>
    std::vector<std::uint16_t> segment(const VolumeView<T> &image, const std::vector<std::uint16_t> &support,
                                       const SegmentOptions &options = SegmentOptions(), SegmentSummary *summary = nullptr) const {
        if (support.size() != image.size()) {
            throw Error(DSPNET_ERROR_SHAPE, "support labels size does not match the image");
        }
        return segment(image, support.data(), options, summary);
    }

private:
    struct Deleter {
        void operator()(dspnet_model_t *m) const noexcept { dspnet_model_free(m); }
    };
    std::unique_ptr<dspnet_model_t, Deleter> handle_;
};

/// An interactive session: move-only owner of a dspnet_session_t. Holds a copy of the image and keeps
/// the slices it encodes (within its feature budget), so that segmenting again after a correction
/// re-runs the prototype head only. The model stays alive as long as the session.
class Session {
public:
    /// An empty session (like a moved-from one): segment() on it throws DSPNET_ERROR_NULL_ARGUMENT.
    Session() noexcept = default;

    /// Copy `image` into a new session on `model`. `feature_budget_bytes`: 0 = the library default
    /// (DSPNET_SESSION_DEFAULT_FEATURE_BUDGET); at least one slice. Throws dspnet::Error.
    template <class T> Session(const Model &model, const VolumeView<T> &image, std::size_t feature_budget_bytes = 0) : dims_(image.dims()) {
        dspnet_session_options_t o;
        dspnet_session_options_init(&o);
        o.feature_budget_bytes = feature_budget_bytes;
        const dspnet_volume_t volume = image.c_volume();
        dspnet_session_t *raw = nullptr;
        detail::check(dspnet_session_create(model.get(), &volume, &o, &raw));
        handle_.reset(raw);
    }

    Session(Session &&) noexcept = default;
    Session &operator=(Session &&) noexcept = default;
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;

    dspnet_session_t *get() const noexcept { return handle_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(handle_); }
    /// The image's dims (support and output volumes must have them).
    const Dims &dims() const noexcept { return dims_; }

    /// Segment the session's image from `support` into `out` (image-sized buffers; same results as
    /// Model::segment_into on the same image). Throws dspnet::Error (DSPNET_ERROR_BUSY if the session is
    /// already segmenting).
    SegmentSummary segment_into(const std::uint16_t *support, std::uint16_t *out, const SegmentOptions &options = SegmentOptions()) {
        return detail::run_segment(options, detail::largest(dims_), [&](const dspnet_segment_options_t *c, dspnet_segment_summary_t *cs) {
            return dspnet_session_segment_with_summary(handle_.get(), support, out, c, cs);
        });
    }

    std::vector<std::uint16_t> segment(const std::uint16_t *support, const SegmentOptions &options = SegmentOptions(), SegmentSummary *summary = nullptr) {
        std::vector<std::uint16_t> out(voxel_count(dims_));
        SegmentSummary s = segment_into(support, out.data(), options);
        if (summary != nullptr) {
            *summary = std::move(s);
        }
        return out;
    }

    /// As above with the support in a vector, whose size must match the image.
    std::vector<std::uint16_t> segment(const std::vector<std::uint16_t> &support, const SegmentOptions &options = SegmentOptions(),
                                       SegmentSummary *summary = nullptr) {
        if (!handle_) {
            throw Error(DSPNET_ERROR_NULL_ARGUMENT, "the session is empty (default-constructed or moved from)");
        }
        if (support.size() != voxel_count(dims_)) {
            throw Error(DSPNET_ERROR_SHAPE, "support labels size does not match the session's image");
        }
        return segment(support.data(), options, summary);
    }

    /// What the session holds. Throws dspnet::Error.
    SessionInfo info() const {
        dspnet_session_info_t c{};
        c.struct_size = sizeof c;
        detail::check(dspnet_session_info(handle_.get(), &c));
        SessionInfo i;
        for (int a = 0; a < 3; ++a) {
            i.dims[a] = c.dims[a];
        }
        i.feature_budget_bytes = c.feature_budget_bytes;
        i.cached_slices = c.cached_slices;
        i.cached_bytes = c.cached_bytes;
        i.image_bytes = c.image_bytes;
        i.slices_encoded = c.slices_encoded;
        i.slices_reused = c.slices_reused;
        i.chain_bytes = c.chain_bytes;
        i.chains_replayed = c.chains_replayed;
        return i;
    }

private:
    struct Deleter {
        void operator()(dspnet_session_t *s) const noexcept { dspnet_session_free(s); }
    };
    std::unique_ptr<dspnet_session_t, Deleter> handle_;
    Dims dims_{};
};

} // namespace dspnet

#endif // DSPNET_HPP
