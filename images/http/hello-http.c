// A wasi:http/incoming-handler (WASI 0.2) written in C, for the shim's HTTP
// tests and the Kubernetes example.
//
//   GET <path>        200 "hello from wasm at <path>\n"
//   GET /slow<...>    the same, after holding the request for one second
//                     (graceful-stop tests: the answer must still arrive)
//   GET /trap         traps: the shim answers 500 and keeps serving
//
// Each request is also logged to stdout ("served <path>"), which is the
// container's log.
//
// There is no wasm Rust toolchain here, so the component-model calls are
// declared by hand against the canonical ABI of wasi:http@0.2.12 (the WIT that
// wasmtime-wasi-http ships). `wasm-oci componentize --wit` embeds that WIT and
// wraps this core module, with the preview-1 proxy adapter for stdout, into a
// component. Results wider than one value come back through a return area.

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TYPES "wasi:http/types@0.2.12"
#define STREAMS "wasi:io/streams@0.2.12"
#define POLL "wasi:io/poll@0.2.12"
#define CLOCK "wasi:clocks/monotonic-clock@0.2.12"
#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))

typedef int32_t handle;

// option<string> / result<own<T>> as the canonical ABI lays them out in memory.
struct option_string {
    uint8_t is_some;
    char *ptr;
    size_t len;
};
struct result_handle {
    uint8_t is_err;
    handle value;
};

IMPORT(TYPES, "[method]incoming-request.path-with-query")
void request_path_with_query(handle request, struct option_string *ret);
IMPORT(TYPES, "[resource-drop]incoming-request") void drop_incoming_request(handle);
IMPORT(TYPES, "[constructor]fields") handle new_fields(void);
IMPORT(TYPES, "[constructor]outgoing-response") handle new_outgoing_response(handle headers);
IMPORT(TYPES, "[method]outgoing-response.body")
void outgoing_response_body(handle response, struct result_handle *ret);
IMPORT(TYPES, "[method]outgoing-body.write")
void outgoing_body_write(handle body, struct result_handle *ret);
// finish(this, option<own<trailers>>) -> result<_, error-code>
IMPORT(TYPES, "[static]outgoing-body.finish")
void outgoing_body_finish(handle body, int32_t has_trailers, handle trailers, void *ret);
// set(param, result<own<outgoing-response>, error-code>), flattened: the
// discriminant, then the seven slots the Ok/Err payloads share.
IMPORT(TYPES, "[static]response-outparam.set")
void response_outparam_set(handle param, int32_t is_err, int32_t p0, int32_t p1, int64_t p2,
                           int32_t p3, int32_t p4, int32_t p5, int32_t p6);
IMPORT(STREAMS, "[method]output-stream.blocking-write-and-flush")
void output_stream_blocking_write_and_flush(handle stream, const void *ptr, size_t len, void *ret);
IMPORT(STREAMS, "[resource-drop]output-stream") void drop_output_stream(handle);
IMPORT(CLOCK, "subscribe-duration") handle subscribe_duration(uint64_t nanoseconds);
IMPORT(POLL, "[method]pollable.block") void pollable_block(handle);
IMPORT(POLL, "[resource-drop]pollable") void drop_pollable(handle);

// The host allocates strings it returns (the request path) with this.
__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size) {
    (void)old_size;
    (void)align;
    return realloc(ptr, new_size);
}

static void sleep_ms(uint64_t ms) {
    handle pollable = subscribe_duration(ms * 1000000);
    pollable_block(pollable);
    drop_pollable(pollable);
}

static handle expect_handle(struct result_handle r, const char *what) {
    if (r.is_err) {
        fprintf(stderr, "hello-http: %s failed\n", what);
        abort();
    }
    return r.value;
}

__attribute__((export_name("wasi:http/incoming-handler@0.2.12#handle")))
void handle_request(handle request, handle response_out) {
    struct option_string path = {0};
    request_path_with_query(request, &path);
    drop_incoming_request(request);
    const char *p = path.is_some ? path.ptr : "/";
    int n = path.is_some ? (int)path.len : 1;

    if (n >= 5 && strncmp(p, "/slow", 5) == 0)
        sleep_ms(1000);
    if (n == 5 && strncmp(p, "/trap", 5) == 0)
        __builtin_trap();

    char body[512];
    int len = snprintf(body, sizeof body, "hello from wasm at %.*s\n", n, p);
    if (len >= (int)sizeof body)
        len = sizeof body - 1;

    handle response = new_outgoing_response(new_fields());
    struct result_handle r;
    outgoing_response_body(response, &r);
    handle out_body = expect_handle(r, "outgoing-response.body");
    outgoing_body_write(out_body, &r);
    handle stream = expect_handle(r, "outgoing-body.write");
    // Status 200 and headers go out now; the body follows on the stream.
    response_outparam_set(response_out, 0, response, 0, 0, 0, 0, 0, 0);

    _Alignas(8) uint8_t ret[64];
    output_stream_blocking_write_and_flush(stream, body, (size_t)len, ret);
    if (ret[0])
        fprintf(stderr, "hello-http: writing the body of %.*s failed\n", n, p);
    drop_output_stream(stream);
    outgoing_body_finish(out_body, 0, 0, ret);

    printf("served %.*s\n", n, p);
    fflush(stdout);
    free(path.ptr);
}
