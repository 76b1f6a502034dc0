// The demo program: greets from inside a wasm container and shows what WASI gave it.
#include <stdio.h>

int main(int argc, char **argv) {
    printf("Hello from WebAssembly! Running in wasmtime under containerd.\n");
    for (int i = 0; i < argc; i++) printf("  argv[%d] = %s\n", i, argv[i]);
    return 0;
}
