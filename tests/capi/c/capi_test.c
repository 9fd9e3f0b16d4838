/*
 * C consumer of libdspnet: every error path of the C ABI, then real segmentations of a 64x64x6 crop of
 * the LiTS liver CT (tests/capi/data, int16 HU + uint16 labels, i fastest).
 *
 *   capi_test WEIGHTS DATA_DIR MODE
 *
 * WEIGHTS: synthetic depth-50 weights (dspnet synthetic-weights); MODE:
 *   errors  every failure path (no successful segmentation)
 *   light   errors + a full API round trip whose extent is the support slice alone (no backbone pass:
 *           what runs under valgrind by default)
 *   quick   errors + one segmentation with a 2-slice extent, and the same and a correction through a session
 *           (under valgrind with DSPNET_CAPI_VALGRIND=full)
 *   full    quick + cancel after a slice, f32 and f64 input, in-place output, 4 threads sharing one model
 * Prints one line per failed check and "capi_test MODE: N checks, M failed"; exits 1 on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <dspnet.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#define NI 64
#define NJ 64
#define NK 6
#define NV (NI * NJ * NK)
#define SUPPORT_K 2
#define SENTINEL 0xBEEF

static int checks = 0;
static int failures = 0;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        checks++;                                                                \
        if (!(cond)) {                                                           \
            failures++;                                                          \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
        }                                                                        \
    } while (0)

/* A call must return `want`; a failure must come with a non-empty message, success with "". */
#define EXPECT(call, want)                                                                         \
    do {                                                                                           \
        dspnet_status_t st_ = (call);                                                              \
        const char *msg_ = dspnet_last_error_message();                                            \
        CHECK(st_ == (want), "%s -> %s, expected %s (message: %s)", #call, dspnet_status_name(st_), \
              dspnet_status_name(want), msg_);                                                     \
        CHECK(msg_ != NULL && ((st_ == DSPNET_OK) == (msg_[0] == '\0')), "message '%s' after %s",  \
              msg_ ? msg_ : "(null)", dspnet_status_name(st_));                                    \
    } while (0)

static int16_t image[NV];
static uint16_t truth[NV];
static uint16_t support[NV];
static uint16_t out[NV];

static int read_file(const char *dir, const char *name, void *dst, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return 0;
    }
    size_t got = fread(dst, 1, bytes, f);
    fclose(f);
    if (got != bytes) {
        fprintf(stderr, "%s: %zu bytes, expected %zu\n", path, got, bytes);
        return 0;
    }
    return 1;
}

static int write_file(const char *path, const void *data, size_t bytes) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) return 0;
    size_t put = fwrite(data, 1, bytes, f);
    return fclose(f) == 0 && put == bytes;
}

static void fill_sentinel(uint16_t *buf) {
    for (size_t v = 0; v < NV; ++v) buf[v] = SENTINEL;
}

static int untouched(const uint16_t *buf) {
    for (size_t v = 0; v < NV; ++v)
        if (buf[v] != SENTINEL) return 0;
    return 1;
}

static dspnet_volume_t image_volume(void) {
    dspnet_volume_t v;
    memset(&v, 0, sizeof v);
    v.data = image;
    v.dtype = DSPNET_DTYPE_I16;
    v.dims[0] = NI;
    v.dims[1] = NJ;
    v.dims[2] = NK;
    v.spacing[0] = v.spacing[1] = v.spacing[2] = 1.0;
    return v;
}

/* The options every successful run uses: CT, slices 1..3 (support on 2, so 2 query slices). */
static dspnet_segment_options_t run_options(void) {
    dspnet_segment_options_t o;
    dspnet_segment_options_init(&o);
    o.modality = DSPNET_MODALITY_CT;
    o.extent = DSPNET_EXTENT_RANGE;
    o.extent_first = 1;
    o.extent_last = 3;
    return o;
}

struct progress_log {
    int calls;
    int cancel_at; /* cancel when done == cancel_at (-1: never) */
    size_t last_done, last_total;
    int monotone;
};

static int on_progress(void *user_data, size_t done, size_t total) {
    struct progress_log *log = (struct progress_log *)user_data;
    if (log->calls > 0 && done < log->last_done) log->monotone = 0;
    if (done > total) log->monotone = 0;
    log->calls++;
    log->last_done = done;
    log->last_total = total;
    return log->cancel_at >= 0 && done == (size_t)log->cancel_at;
}

static void test_versions(void) {
    char expected[64];
    CHECK(dspnet_abi_version() == DSPNET_ABI_VERSION, "abi %u vs header %d", dspnet_abi_version(), DSPNET_ABI_VERSION);
    snprintf(expected, sizeof expected, "%d.%d.%d", DSPNET_VERSION_MAJOR, DSPNET_VERSION_MINOR, DSPNET_VERSION_PATCH);
    CHECK(strcmp(dspnet_version(), expected) == 0, "dspnet_version() = %s, macros say %s", dspnet_version(), expected);
    CHECK(DSPNET_VERSION_NUMBER == ((DSPNET_VERSION_MAJOR << 16) | (DSPNET_VERSION_MINOR << 8) | DSPNET_VERSION_PATCH),
          "DSPNET_VERSION_NUMBER = %d", DSPNET_VERSION_NUMBER);
    CHECK(dspnet_last_error_message() != NULL && dspnet_last_error_message()[0] == '\0', "initial message '%s'",
          dspnet_last_error_message());
    CHECK(strcmp(dspnet_status_name(DSPNET_OK), "DSPNET_OK") == 0, "%s", dspnet_status_name(DSPNET_OK));
    CHECK(strcmp(dspnet_status_name(DSPNET_ERROR_PANIC), "DSPNET_ERROR_PANIC") == 0, "%s", dspnet_status_name(DSPNET_ERROR_PANIC));
    CHECK(strcmp(dspnet_status_name(12345), "DSPNET_ERROR_UNKNOWN") == 0, "%s", dspnet_status_name(12345));
    CHECK(strcmp(dspnet_status_name(-1), "DSPNET_ERROR_UNKNOWN") == 0, "%s", dspnet_status_name(-1));
}

static void test_load_errors(const char *weights, const char *tmpdir) {
    dspnet_model_t *m = (dspnet_model_t *)&m; /* garbage: must be reset to NULL on failure */
    char path[4096];

    EXPECT(dspnet_model_load(weights, "cpu", NULL), DSPNET_ERROR_NULL_ARGUMENT);

    snprintf(path, sizeof path, "%s/does-not-exist.safetensors", tmpdir);
    EXPECT(dspnet_model_load(path, "cpu", &m), DSPNET_ERROR_IO);
    CHECK(m == NULL, "out_model not reset on failure");
    CHECK(strstr(dspnet_last_error_message(), "does-not-exist") != NULL, "message names the file: %s", dspnet_last_error_message());

    /* A directory is not a weight file. */
    m = (dspnet_model_t *)&m;
    {
        dspnet_status_t st = dspnet_model_load(tmpdir, "cpu", &m);
        CHECK(st == DSPNET_ERROR_IO || st == DSPNET_ERROR_MODEL_FORMAT, "directory -> %s", dspnet_status_name(st));
        CHECK(m == NULL, "out_model not reset");
    }

    /* Truncated copies of the real weights: inside the header, and in the tensor data. */
    {
        FILE *f = fopen(weights, "rb");
        CHECK(f != NULL, "cannot open %s", weights);
        if (f != NULL) {
            static unsigned char head[1 << 20];
            size_t got = fread(head, 1, sizeof head, f);
            fclose(f);
            CHECK(got == sizeof head, "weights shorter than 1 MiB");
            snprintf(path, sizeof path, "%s/truncated-header.safetensors", tmpdir);
            CHECK(write_file(path, head, 100), "write %s", path);
            EXPECT(dspnet_model_load(path, "cpu", &m), DSPNET_ERROR_MODEL_FORMAT);
            snprintf(path, sizeof path, "%s/truncated-data.safetensors", tmpdir);
            CHECK(write_file(path, head, sizeof head), "write %s", path);
            EXPECT(dspnet_model_load(path, "cpu", &m), DSPNET_ERROR_MODEL_FORMAT);
            CHECK(m == NULL, "out_model not reset");
        }
    }

    /* Foreign files: empty, text, PNG signature, and a valid safetensors file that is not a DSPNet model. */
    snprintf(path, sizeof path, "%s/empty.safetensors", tmpdir);
    CHECK(write_file(path, "", 0), "write %s", path);
    EXPECT(dspnet_model_load(path, "cpu", &m), DSPNET_ERROR_MODEL_FORMAT);
    snprintf(path, sizeof path, "%s/text.safetensors", tmpdir);
    CHECK(write_file(path, "hello, this is not a model\n", 27), "write %s", path);
    EXPECT(dspnet_model_load(path, "cpu", &m), DSPNET_ERROR_MODEL_FORMAT);
    snprintf(path, sizeof path, "%s/image.png", tmpdir);
    CHECK(write_file(path, "\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 16), "write %s", path);
    EXPECT(dspnet_model_load(path, "cpu", &m), DSPNET_ERROR_MODEL_FORMAT);
    {
        const char json[] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
        unsigned char buf[8 + sizeof json - 1 + 4];
        uint64_t n = sizeof json - 1;
        for (int b = 0; b < 8; ++b) buf[b] = (unsigned char)(n >> (8 * b));
        memcpy(buf + 8, json, n);
        memset(buf + 8 + n, 0, 4);
        snprintf(path, sizeof path, "%s/foreign.safetensors", tmpdir);
        CHECK(write_file(path, buf, sizeof buf), "write %s", path);
        EXPECT(dspnet_model_load(path, "cpu", &m), DSPNET_ERROR_MODEL_FORMAT);
    }

    /* Devices: CUDA in a CPU-only build, unknown names. */
    EXPECT(dspnet_model_load(weights, "cuda", &m), DSPNET_ERROR_BACKEND_UNAVAILABLE);
    EXPECT(dspnet_model_load(weights, "cuda:0", &m), DSPNET_ERROR_BACKEND_UNAVAILABLE);
    EXPECT(dspnet_model_load(weights, "cuda:x", &m), DSPNET_ERROR_INVALID_ARGUMENT);
    EXPECT(dspnet_model_load(weights, "tpu", &m), DSPNET_ERROR_INVALID_ARGUMENT);
    CHECK(m == NULL, "out_model not reset");

    /* Freeing NULL, twice, and asking a dead handle for its device are harmless. */
    dspnet_model_free(NULL);
    CHECK(strcmp(dspnet_model_device(NULL), "") == 0, "device of NULL");
}

/* NULL weights path or "" = the default model; $DSPNET_WEIGHTS points at it here. */
static void test_default_weights(const char *weights) {
    dspnet_model_t *m = NULL;
    setenv("DSPNET_WEIGHTS", weights, 1);
    EXPECT(dspnet_model_load(NULL, NULL, &m), DSPNET_OK);
    CHECK(m != NULL, "no model");
    CHECK(strcmp(dspnet_model_device(m), "cpu") == 0, "device %s", dspnet_model_device(m));
    dspnet_model_free(m);
    m = NULL;
    EXPECT(dspnet_model_load("", "", &m), DSPNET_OK);
    dspnet_model_free(m);
    dspnet_model_free(m); /* double free: a no-op */
    CHECK(strcmp(dspnet_model_device(m), "") == 0, "device of a freed model");
    unsetenv("DSPNET_WEIGHTS");
}

static void test_segment_errors(const dspnet_model_t *model) {
    dspnet_volume_t v = image_volume();
    dspnet_segment_options_t o = run_options();
    dspnet_segment_summary_t summary;
    memset(&summary, 0, sizeof summary);
    summary.struct_size = sizeof summary;
    fill_sentinel(out);

    /* NULL everywhere. */
    EXPECT(dspnet_segment(NULL, &v, support, out, &o), DSPNET_ERROR_NULL_ARGUMENT);
    EXPECT(dspnet_segment(model, NULL, support, out, &o), DSPNET_ERROR_NULL_ARGUMENT);
    EXPECT(dspnet_segment(model, &v, NULL, out, &o), DSPNET_ERROR_NULL_ARGUMENT);
    EXPECT(dspnet_segment(model, &v, support, NULL, &o), DSPNET_ERROR_NULL_ARGUMENT);
    EXPECT(dspnet_segment_with_summary(NULL, NULL, NULL, NULL, NULL, NULL), DSPNET_ERROR_NULL_ARGUMENT);
    v.data = NULL;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_NULL_ARGUMENT);
    v = image_volume();
    dspnet_segment_options_init(NULL); /* no-op */

    /* A handle that never came from dspnet_model_load. */
    {
        uint64_t fake[4] = {0, 0, 0, 0};
        EXPECT(dspnet_segment((const dspnet_model_t *)fake, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
        dspnet_model_free((dspnet_model_t *)fake); /* not live: ignored */
    }

    /* Zero and overflowing dims. */
    v.dims[1] = 0;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_SHAPE);
    v = image_volume();
    v.dims[0] = SIZE_MAX / 2;
    v.dims[1] = 4;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_SHAPE);
    v.dims[0] = SIZE_MAX;
    v.dims[1] = SIZE_MAX;
    v.dims[2] = SIZE_MAX;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_SHAPE);
    /* The voxel count fits size_t but not in bytes (2^62 int16 voxels). */
    v.dims[0] = (size_t)1 << 31;
    v.dims[1] = (size_t)1 << 31;
    v.dims[2] = 1;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_SHAPE);
    v = image_volume();

    /* Bad dtype values. */
    v.dtype = 0;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    v.dtype = 99;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    v.dtype = 0xFFFFFFFFu;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    v = image_volume();

    /* Misaligned buffers. */
    {
        static int16_t shifted[NV + 1];
        v.data = (const char *)shifted + 1;
        EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
        v = image_volume();
        EXPECT(dspnet_segment(model, &v, (const uint16_t *)((const char *)support + 1), out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    }

    /* Spacing: zero, negative, NaN. */
    v.spacing[0] = 0.0;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    v.spacing[0] = -1.0;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    v.spacing[0] = NAN;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    v = image_volume();

    /* NaN and infinite voxels. */
    {
        static float fimage[NV];
        static double dimage[NV];
        for (size_t i = 0; i < NV; ++i) fimage[i] = dimage[i] = image[i];
        fimage[1234] = NAN;
        v.data = fimage;
        v.dtype = DSPNET_DTYPE_F32;
        EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_NON_FINITE);
        fimage[1234] = INFINITY;
        EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_NON_FINITE);
        dimage[99] = 1e300; /* finite as double, infinite as float */
        v.data = dimage;
        v.dtype = DSPNET_DTYPE_F64;
        EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_NON_FINITE);
        v = image_volume();
    }

    /* Empty support; a class absent from the support. */
    {
        static uint16_t empty[NV];
        EXPECT(dspnet_segment(model, &v, empty, out, &o), DSPNET_ERROR_NO_SUPPORT);
        uint16_t classes[2] = {1, 7};
        o.classes = classes;
        o.num_classes = 2;
        EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_NO_SUPPORT);
        o = run_options();
    }

    /* Options: struct_size too small, bad enum values, range outside the volume. */
    o.struct_size = 0;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o.struct_size = offsetof(dspnet_segment_options_t, propagation) - 8; /* shorter than ABI version 1 */
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(dspnet_last_error_message(), "struct_size") != NULL, "message: %s", dspnet_last_error_message());
    o = run_options();
    o.propagation = 2;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(dspnet_last_error_message(), "propagation") != NULL, "message: %s", dspnet_last_error_message());
    /* Head parameters: the defaults are the official code's; one out of range is refused, naming it. */
    o = run_options();
    CHECK(o.head.max_num_sp == 5 && o.head.avg_sp_area == 100 && o.head.val_wsize == 2 && o.head.n_iter == 10 &&
              o.head.fg_thresh == 0.95f && o.head.w1_w2_w3[1] == 0.8f,
          "head defaults");
    o.head.val_wsize = 3;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(dspnet_last_error_message(), "head.val_wsize") != NULL, "message: %s", dspnet_last_error_message());
    o = run_options();
    o.head.fg_thresh = NAN;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(dspnet_last_error_message(), "head.fg_thresh") != NULL, "message: %s", dspnet_last_error_message());
    o = run_options();
    /* A caller built against the first header: its struct ends before `propagation`, which is not read
     * (the default applies), whatever lies in memory after the caller's struct. */
    o.struct_size = offsetof(dspnet_segment_options_t, propagation);
    o.extent_first = o.extent_last = SUPPORT_K; /* nothing to infer: no backbone pass (this runs under valgrind) */
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_OK);
    CHECK(memcmp(out, support, sizeof out) == 0, "a support-only extent returns the support");
    fill_sentinel(out); /* the failed calls below must leave it as it is */
    o = run_options();
    o.slice_axis = 3;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o.slice_axis = -2;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o = run_options();
    o.modality = 7;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o = run_options();
    o.extent = 3;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o = run_options();
    o.fov = 2;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o = run_options();
    o.components = 2;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o = run_options();
    o.extent_last = NK; /* past the last slice */
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o = run_options();
    o.extent_first = 3;
    o.extent_last = 1;
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o = run_options();
    o.slice_axis = 0; /* the labels lie on one k slice, not on few i slices */
    EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    o = run_options();

    /* Summary struct_size too small. */
    summary.struct_size = 8;
    EXPECT(dspnet_segment_with_summary(model, &v, support, out, &o, &summary), DSPNET_ERROR_INVALID_ARGUMENT);

    /* Cancel from the first callback (done == 0): nothing computed, output untouched. */
    {
        struct progress_log log = {0, 0, 0, 0, 1};
        o.progress = on_progress;
        o.user_data = &log;
        EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_CANCELLED);
        CHECK(log.calls == 1, "%d progress calls", log.calls);
        o = run_options();
    }

    CHECK(untouched(out), "a failed call wrote to out_labels");
}

static int run_ok(const dspnet_model_t *model, const void *data, dspnet_dtype_t dtype, const uint16_t *sup, uint16_t *dst) {
    dspnet_volume_t v = image_volume();
    dspnet_segment_options_t o = run_options();
    v.data = data;
    v.dtype = dtype;
    dspnet_status_t st = dspnet_segment(model, &v, sup, dst, &o);
    CHECK(st == DSPNET_OK, "dtype %u -> %s: %s", dtype, dspnet_status_name(st), dspnet_last_error_message());
    return st == DSPNET_OK;
}

static uint16_t reference[NV];

/* One real run (with a larger-than-known options struct and a summary), checked in detail. */
static void test_segment(const dspnet_model_t *model) {
    /* A caller compiled against a future header: a bigger struct with unknown trailing fields. */
    struct {
        dspnet_segment_options_t v1;
        uint64_t future_fields[8];
    } big;
    struct progress_log log = {0, -1, 0, 0, 1};
    dspnet_segment_summary_t summary;
    dspnet_volume_t v = image_volume();
    size_t labelled = 0, outside = 0, support_diff = 0;

    memset(&big, 0xA5, sizeof big);
    big.v1 = run_options();
    big.v1.struct_size = sizeof big;
    big.v1.progress = on_progress;
    big.v1.user_data = &log;
    memset(&summary, 0, sizeof summary);
    summary.struct_size = sizeof summary;
    fill_sentinel(out);

    EXPECT(dspnet_segment_with_summary(model, &v, support, out, &big.v1, &summary), DSPNET_OK);
    CHECK(summary.struct_size == sizeof summary, "summary.struct_size %zu", summary.struct_size);
    CHECK(summary.slice_axis == 2, "axis %d", summary.slice_axis);
    CHECK(summary.modality == DSPNET_MODALITY_CT, "modality %u", summary.modality);
    CHECK(summary.num_classes == 1, "classes %zu", summary.num_classes);
    CHECK(summary.slices_processed == 2, "slices %zu", summary.slices_processed);
    CHECK(summary.seconds > 0.0, "seconds %f", summary.seconds);
    CHECK(log.calls == 3 && log.monotone && log.last_done == 2 && log.last_total == 2, "progress: %d calls, last %zu/%zu",
          log.calls, log.last_done, log.last_total);
    for (size_t v2 = 0; v2 < NV; ++v2) {
        size_t k = v2 / (NI * NJ);
        if (out[v2] != 0) labelled++;
        if (out[v2] > 1) outside++;
        if (k == SUPPORT_K && out[v2] != support[v2]) support_diff++;
        if ((k == 0 || k > 3) && out[v2] != 0) outside++; /* outside the 1..3 extent */
    }
    CHECK(labelled == summary.labelled_voxels, "labelled %zu vs summary %zu", labelled, summary.labelled_voxels);
    CHECK(outside == 0, "%zu voxels with a label they should not have", outside);
    CHECK(support_diff == 0, "support slice changed in %zu voxels", support_diff);
    memcpy(reference, out, sizeof out);
    printf("segmented %dx%dx%d: %zu labelled voxels, %zu slices in %.2f s\n", NI, NJ, NK, labelled, summary.slices_processed,
           summary.seconds);
}

/* Every step of a successful call (conversion, options, callback, copy-out, summary) with an extent that
 * holds only the support slice: nothing to infer, so cheap enough for valgrind. */
static void test_light(const dspnet_model_t *model) {
    struct progress_log log = {0, -1, 0, 0, 1};
    dspnet_segment_summary_t summary;
    dspnet_volume_t v = image_volume();
    dspnet_segment_options_t o = run_options();
    static uint16_t classes[1] = {1};
    o.extent_first = o.extent_last = SUPPORT_K;
    o.classes = classes;
    o.num_classes = 1;
    o.progress = on_progress;
    o.user_data = &log;
    memset(&summary, 0, sizeof summary);
    summary.struct_size = sizeof summary + 16; /* a caller with a larger (future) summary struct */
    fill_sentinel(out);
    EXPECT(dspnet_segment_with_summary(model, &v, support, out, &o, &summary), DSPNET_OK);
    CHECK(memcmp(out, support, sizeof out) == 0, "output is not the support");
    CHECK(summary.struct_size == sizeof summary, "filled %zu bytes", summary.struct_size);
    CHECK(summary.slices_processed == 0 && summary.num_classes == 1 && summary.slice_axis == 2, "summary %zu %zu %d",
          summary.slices_processed, summary.num_classes, summary.slice_axis);
    CHECK(log.calls >= 1 && log.last_done == 0 && log.last_total == 0, "progress %d %zu/%zu", log.calls, log.last_done,
          log.last_total);
}


/* Sessions: bad input, then (quick) a first run and a correction through one session. */
static void test_session_errors(const dspnet_model_t *model) {
    dspnet_volume_t v = image_volume();
    dspnet_segment_options_t o = run_options();
    dspnet_session_options_t so;
    dspnet_session_t *s = (dspnet_session_t *)&s; /* garbage: must be reset to NULL on failure */
    dspnet_session_info_t info;
    fill_sentinel(out);

    dspnet_session_options_init(NULL); /* no-op */
    dspnet_session_options_init(&so);
    CHECK(so.struct_size == sizeof so && so.feature_budget_bytes == 0, "session defaults");
    EXPECT(dspnet_session_create(model, &v, &so, NULL), DSPNET_ERROR_NULL_ARGUMENT);
    EXPECT(dspnet_session_create(NULL, &v, &so, &s), DSPNET_ERROR_NULL_ARGUMENT);
    CHECK(s == NULL, "out_session not reset on failure");
    EXPECT(dspnet_session_create(model, NULL, &so, &s), DSPNET_ERROR_NULL_ARGUMENT);
    so.feature_budget_bytes = 4096; /* less than one slice's features */
    EXPECT(dspnet_session_create(model, &v, &so, &s), DSPNET_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(dspnet_last_error_message(), "budget") != NULL, "message: %s", dspnet_last_error_message());
    dspnet_session_options_init(&so);
    so.struct_size = 4;
    EXPECT(dspnet_session_create(model, &v, &so, &s), DSPNET_ERROR_INVALID_ARGUMENT);
    v.dtype = 0;
    EXPECT(dspnet_session_create(model, &v, NULL, &s), DSPNET_ERROR_INVALID_ARGUMENT);
    v = image_volume();
    {
        uint64_t fake[4] = {0, 0, 0, 0};
        EXPECT(dspnet_session_create((const dspnet_model_t *)fake, &v, NULL, &s), DSPNET_ERROR_INVALID_ARGUMENT);
        EXPECT(dspnet_session_segment((dspnet_session_t *)fake, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
        dspnet_session_free((dspnet_session_t *)fake); /* not live: ignored */
    }
    EXPECT(dspnet_session_segment(NULL, support, out, &o), DSPNET_ERROR_NULL_ARGUMENT);
    info.struct_size = sizeof info;
    EXPECT(dspnet_session_info(NULL, &info), DSPNET_ERROR_NULL_ARGUMENT);
    dspnet_session_free(NULL);

    EXPECT(dspnet_session_create(model, &v, NULL, &s), DSPNET_OK);
    if (s == NULL) return;
    EXPECT(dspnet_session_segment(s, NULL, out, &o), DSPNET_ERROR_NULL_ARGUMENT);
    EXPECT(dspnet_session_segment(s, support, NULL, &o), DSPNET_ERROR_NULL_ARGUMENT);
    {
        static uint16_t empty[NV];
        EXPECT(dspnet_session_segment(s, empty, out, &o), DSPNET_ERROR_NO_SUPPORT);
    }
    o.extent = 9;
    EXPECT(dspnet_session_segment(s, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    info.struct_size = 8;
    EXPECT(dspnet_session_info(s, &info), DSPNET_ERROR_INVALID_ARGUMENT);
    info.struct_size = sizeof info;
    EXPECT(dspnet_session_info(s, &info), DSPNET_OK);
    CHECK(info.dims[0] == NI && info.dims[1] == NJ && info.dims[2] == NK && info.image_bytes == NV * sizeof(float) &&
              info.feature_budget_bytes == DSPNET_SESSION_DEFAULT_FEATURE_BUDGET && info.slices_encoded == 0,
          "session info %zu %zu %zu", info.image_bytes, info.feature_budget_bytes, info.slices_encoded);
    dspnet_session_free(s);
    dspnet_session_free(s); /* double free: a no-op */
    EXPECT(dspnet_session_segment(s, support, out, &o), DSPNET_ERROR_INVALID_ARGUMENT);
    CHECK(untouched(out), "a failed session call wrote to out_labels");
}

/* A session outlives its model handle; a correction re-uses the encoded slices and equals dspnet_segment. */
static void test_session(dspnet_model_t **model_handle, const char *weights) {
    static uint16_t corrected[NV], fresh[NV];
    static float confidence[NK + 2];
    dspnet_volume_t v = image_volume();
    dspnet_segment_options_t o = run_options();
    dspnet_session_t *s = NULL;
    dspnet_session_info_t first, second;
    dspnet_segment_summary_t summary;

    EXPECT(dspnet_session_create(*model_handle, &v, NULL, &s), DSPNET_OK);
    if (s == NULL) return;
    /* The session keeps the model: free the caller's handle and load it again afterwards. */
    dspnet_model_free(*model_handle);
    *model_handle = NULL;

    memset(&summary, 0, sizeof summary);
    summary.struct_size = sizeof summary;
    for (size_t z = 0; z < NK + 2; ++z) confidence[z] = 42.0f;
    summary.slice_confidence = confidence;
    summary.slice_confidence_capacity = NK + 2;
    fill_sentinel(out);
    EXPECT(dspnet_session_segment_with_summary(s, support, out, &o, &summary), DSPNET_OK);
    CHECK(memcmp(out, reference, sizeof out) == 0, "the session's labels differ from dspnet_segment's");
    CHECK(summary.num_slices == NK && summary.slices_processed == 2, "summary %zu slices, %zu processed", summary.num_slices,
          summary.slices_processed);
    CHECK(confidence[SUPPORT_K] == -1.0f && confidence[0] == -1.0f && confidence[NK] == 42.0f, "confidence %f %f %f",
          confidence[SUPPORT_K], confidence[0], confidence[NK]);
    CHECK(confidence[1] >= 0.0f && confidence[1] <= 1.0f && confidence[3] >= 0.0f && confidence[3] <= 1.0f,
          "confidence %f %f", confidence[1], confidence[3]);
    CHECK(summary.num_suggested <= DSPNET_MAX_SUGGESTIONS, "%zu suggestions", summary.num_suggested);
    first.struct_size = sizeof first;
    EXPECT(dspnet_session_info(s, &first), DSPNET_OK);
    CHECK(first.slices_encoded == 3 && first.cached_slices == 3, "first run: %zu encoded, %zu cached", first.slices_encoded,
          first.cached_slices);

    /* The correction: slice 1 painted from the truth as well. Same buffer in and out. */
    for (size_t vx = 0; vx < NV; ++vx) corrected[vx] = (vx / (NI * NJ) == 1) ? truth[vx] : support[vx];
    memcpy(fresh, corrected, sizeof fresh);
    EXPECT(dspnet_session_segment(s, corrected, corrected, &o), DSPNET_OK);
    second.struct_size = sizeof second;
    EXPECT(dspnet_session_info(s, &second), DSPNET_OK);
    CHECK(second.slices_encoded == first.slices_encoded, "the correction encoded %zu slices again",
          second.slices_encoded - first.slices_encoded);
    CHECK(second.slices_reused > first.slices_reused, "nothing reused");
    EXPECT(dspnet_model_load(weights, "cpu", model_handle), DSPNET_OK);
    if (*model_handle != NULL) {
        EXPECT(dspnet_segment(*model_handle, &v, fresh, fresh, &o), DSPNET_OK);
        CHECK(memcmp(fresh, corrected, sizeof fresh) == 0, "the corrected session run differs from dspnet_segment");
    }
    dspnet_session_free(s);
}

struct thread_job {
    const dspnet_model_t *model;
    uint16_t *labels;
    dspnet_status_t status;
    char message[256];
};

static void *thread_main(void *arg) {
    struct thread_job *job = (struct thread_job *)arg;
    dspnet_volume_t v = image_volume();
    dspnet_segment_options_t o = run_options();
    job->status = dspnet_segment(job->model, &v, support, job->labels, &o);
    snprintf(job->message, sizeof job->message, "%s", dspnet_last_error_message());
    return NULL;
}

static void test_full(const dspnet_model_t *model) {
    static uint16_t labels[4][NV];
    static float fimage[NV];
    static double dimage[NV];
    dspnet_volume_t v = image_volume();
    dspnet_segment_options_t o = run_options();

    /* Cancel after the first query slice: output untouched. */
    {
        struct progress_log log = {0, 1, 0, 0, 1};
        o.progress = on_progress;
        o.user_data = &log;
        fill_sentinel(out);
        EXPECT(dspnet_segment(model, &v, support, out, &o), DSPNET_ERROR_CANCELLED);
        CHECK(log.calls == 2, "%d progress calls", log.calls);
        CHECK(untouched(out), "cancelled run wrote to out_labels");
        o = run_options();
    }

    /* Other dtypes give the same labels (the HU values are exact in each). */
    for (size_t i = 0; i < NV; ++i) {
        fimage[i] = image[i];
        dimage[i] = image[i];
    }
    if (run_ok(model, fimage, DSPNET_DTYPE_F32, support, out)) CHECK(memcmp(out, reference, sizeof out) == 0, "f32 differs");
    if (run_ok(model, dimage, DSPNET_DTYPE_F64, support, out)) CHECK(memcmp(out, reference, sizeof out) == 0, "f64 differs");

    /* In place: the output buffer is the support buffer. */
    memcpy(out, support, sizeof out);
    if (run_ok(model, image, DSPNET_DTYPE_I16, out, out)) CHECK(memcmp(out, reference, sizeof out) == 0, "in-place differs");

    /* Four threads, one model, at once: identical output. */
    {
        pthread_t threads[4];
        struct thread_job jobs[4];
        for (int t = 0; t < 4; ++t) {
            jobs[t].model = model;
            jobs[t].labels = labels[t];
            jobs[t].status = DSPNET_ERROR_PANIC;
            CHECK(pthread_create(&threads[t], NULL, thread_main, &jobs[t]) == 0, "pthread_create %d", t);
        }
        for (int t = 0; t < 4; ++t) {
            pthread_join(threads[t], NULL);
            CHECK(jobs[t].status == DSPNET_OK, "thread %d: %s: %s", t, dspnet_status_name(jobs[t].status), jobs[t].message);
            CHECK(memcmp(labels[t], reference, sizeof reference) == 0, "thread %d: labels differ", t);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s WEIGHTS DATA_DIR errors|light|quick|full\n", argv[0]);
        return 2;
    }
    const char *weights = argv[1], *data_dir = argv[2], *mode = argv[3];
    int light = strcmp(mode, "light") == 0;
    int quick = strcmp(mode, "quick") == 0 || strcmp(mode, "full") == 0;
    int full = strcmp(mode, "full") == 0;
    if (!light && !quick && strcmp(mode, "errors") != 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char tmpdir[4096];
    snprintf(tmpdir, sizeof tmpdir, "%s/dspnet-capi-c-XXXXXX", tmp);
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    if (!read_file(data_dir, "ct-liver-64x64x6-i16.raw", image, sizeof image) ||
        !read_file(data_dir, "ct-liver-64x64x6-labels-u16.raw", truth, sizeof truth)) {
        return 2;
    }
    /* Support: the ground truth on slice k = 2 only. */
    for (size_t v = 0; v < NV; ++v) support[v] = (v / (NI * NJ) == SUPPORT_K) ? truth[v] : 0;

    test_versions();
    test_load_errors(weights, tmpdir);
    test_default_weights(weights);

    dspnet_model_t *model = NULL;
    EXPECT(dspnet_model_load(weights, "cpu", &model), DSPNET_OK);
    if (model != NULL) {
        test_segment_errors(model);
        test_session_errors(model);
        if (light || quick) test_light(model);
        if (quick) test_segment(model);
        if (quick) test_session(&model, weights);
        if (full && model != NULL) test_full(model);
        dspnet_model_free(model);
    }

    {
        static const char *created[] = {"truncated-header.safetensors", "truncated-data.safetensors", "empty.safetensors",
                                        "text.safetensors", "image.png", "foreign.safetensors"};
        char path[4200];
        for (size_t f = 0; f < sizeof created / sizeof created[0]; ++f) {
            snprintf(path, sizeof path, "%s/%s", tmpdir, created[f]);
            remove(path);
        }
        if (remove(tmpdir) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    }
    printf("capi_test %s: %d checks, %d failed\n", mode, checks, failures);
    return failures == 0 ? 0 : 1;
}
