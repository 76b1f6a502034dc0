// A static native program: runs beside wasm containers in the same shim
// (pod sandboxes and sidecars are native).
#include <stdio.h>

int main(int argc, char **argv) {
    printf("hello from a native binary (%d args)\n", argc);
    return 0;
}
