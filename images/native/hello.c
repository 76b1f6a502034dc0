// A static native program: runs beside wasm containers in the same shim
// (pod sandboxes and sidecars are native). `hello sleep` waits for a signal,
// as a long-running native sidecar.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "sleep")) {
        for (;;) pause();
    }
    printf("hello from a native binary (%d args)\n", argc);
    return 0;
}
