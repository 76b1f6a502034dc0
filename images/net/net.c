// A WASI 0.2 command that opens a TCP connection through wasi:sockets, for
// the tests of the network annotation:
//
//   net connect A.B.C.D PORT   prints "connected" or "error: <error-code>"
//                              and exits 0 or 1
//
// wasi-libc here targets preview 1, which has no sockets, so the calls are
// declared by hand against the canonical ABI of wasi:sockets@0.2.12 (the WIT
// that wasmtime-wasi ships); `wasm-oci componentize --wit --world` embeds it
// and the command adapter supplies stdio, args and exit.

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NETWORK "wasi:sockets/instance-network@0.2.12"
#define CREATE "wasi:sockets/tcp-create-socket@0.2.12"
#define TCP "wasi:sockets/tcp@0.2.12"
#define POLL "wasi:io/poll@0.2.12"
#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))

typedef int32_t handle;

IMPORT(NETWORK, "instance-network") handle instance_network(void);
// result<own<tcp-socket>, error-code>: tag at 0, payload at 4.
IMPORT(CREATE, "create-tcp-socket") void create_tcp_socket(int32_t family, void *ret);
// start-connect(self, network, ip-socket-address) -> result<_, error-code>.
// The address variant flattens to its case and the 11 slots its ipv4 and
// ipv6 payloads share (ipv4: port, then the four bytes).
IMPORT(TCP, "[method]tcp-socket.start-connect")
void start_connect(handle socket, handle network, int32_t is_ipv6, int32_t p0, int32_t p1,
                   int32_t p2, int32_t p3, int32_t p4, int32_t p5, int32_t p6, int32_t p7,
                   int32_t p8, int32_t p9, int32_t p10, void *ret);
IMPORT(TCP, "[method]tcp-socket.subscribe") handle tcp_subscribe(handle socket);
// result<tuple<own<input-stream>, own<output-stream>>, error-code>.
IMPORT(TCP, "[method]tcp-socket.finish-connect") void finish_connect(handle socket, void *ret);
IMPORT(POLL, "[method]pollable.block") void pollable_block(handle pollable);
IMPORT(POLL, "[resource-drop]pollable") void drop_pollable(handle pollable);

static const char *ERRORS[] = {
    "unknown", "access-denied", "not-supported", "invalid-argument", "out-of-memory",
    "timeout", "concurrency-conflict", "not-in-progress", "would-block", "invalid-state",
    "new-socket-limit", "address-not-bindable", "address-in-use", "remote-unreachable",
    "connection-refused", "connection-reset", "connection-aborted", "datagram-too-large",
    "name-unresolvable", "temporary-resolver-failure", "permanent-resolver-failure",
};

static int fail(uint8_t code) {
    printf("error: %s\n", code < sizeof ERRORS / sizeof *ERRORS ? ERRORS[code] : "?");
    return 1;
}

static int connect_to(const char *ip, int port) {
    unsigned a, b, c, d;
    if (sscanf(ip, "%u.%u.%u.%u", &a, &b, &c, &d) != 4) {
        printf("usage: net connect A.B.C.D PORT\n");
        return 2;
    }
    uint32_t ret[3] = {0};
    create_tcp_socket(0 /* ipv4 */, ret);
    if ((uint8_t)ret[0]) return fail((uint8_t)ret[1]);
    handle socket = (handle)ret[1];
    uint8_t started[2] = {0};
    start_connect(socket, instance_network(), 0, port, a, b, c, d, 0, 0, 0, 0, 0, 0, started);
    if (started[0]) return fail(started[1]);
    for (;;) {
        uint32_t done[3] = {0};
        finish_connect(socket, done);
        if (!(uint8_t)done[0]) break;
        if ((uint8_t)done[1] != 8 /* would-block */) return fail((uint8_t)done[1]);
        handle ready = tcp_subscribe(socket);
        pollable_block(ready);
        drop_pollable(ready);
    }
    printf("connected\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "connect")) return connect_to(argv[2], atoi(argv[3]));
    printf("usage: net connect A.B.C.D PORT\n");
    return 2;
}
