// wasitest: one WASI program with a subcommand per behaviour the shim's tests check.
// Built with clang --target=wasm32-wasi (see images/Makefile).
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cat(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("error: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
    fclose(f);
    return 0;
}

static int write_file(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f || fputs("written by wasitest\n", f) < 0 || fclose(f) != 0) {
        printf("error: %s: %s\n", path, strerror(errno));
        return 1;
    }
    printf("wrote %s\n", path);
    return 0;
}

static int echo_lines(int count) {
    char line[1024];
    for (int i = 0; i < count && fgets(line, sizeof line, stdin); i++) printf("echo: %s", line);
    return 0;
}

// Allocates `mb` MiB in 1 MiB chunks and writes to every page, keeping each
// chunk reachable through a volatile table so nothing can be optimised away.
static int alloc(int mb) {
    static char *volatile chunks[4096];
    for (int i = 0; i < mb && i < 4096; i++) {
        char *chunk = malloc(1 << 20);
        if (!chunk) {
            printf("allocation failed after %d MiB\n", i);
            return 1;
        }
        for (int off = 0; off < (1 << 20); off += 4096) chunk[off] = (char)(i + off);
        chunks[i] = chunk;
    }
    long sum = 0;
    for (int i = 0; i < mb && i < 4096; i++) sum += chunks[i][4096];
    printf("allocated %d MiB (checksum %ld)\n", mb, sum);
    return 0;
}

static int spin(void) {
    puts("looping");
    fflush(stdout);
    volatile unsigned long counter = 0;
    for (;;) counter++;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "hello";
    if (!strcmp(cmd, "hello")) {
        puts("hello from wasm");
        return 0;
    }
    if (!strcmp(cmd, "args")) {
        for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
        return 0;
    }
    if (!strcmp(cmd, "env") && argc > 2) {
        const char *value = getenv(argv[2]);
        printf("%s=%s\n", argv[2], value ? value : "(unset)");
        return 0;
    }
    if (!strcmp(cmd, "cat") && argc > 2) return cat(argv[2]);
    if (!strcmp(cmd, "write") && argc > 2) return write_file(argv[2]);
    if (!strcmp(cmd, "exit") && argc > 2) {
        printf("exiting with %d\n", atoi(argv[2]));
        exit(atoi(argv[2]));
    }
    if (!strcmp(cmd, "echo") && argc > 2) return echo_lines(atoi(argv[2]));
    if (!strcmp(cmd, "loop")) return spin();
    if (!strcmp(cmd, "sleep")) {
        // An idle service: the memory benchmark's resident guest.
        sleep(argc > 2 ? (unsigned)atoi(argv[2]) : 3600);
        return 0;
    }
    if (!strcmp(cmd, "alloc") && argc > 2) return alloc(atoi(argv[2]));
    if (!strcmp(cmd, "tail")) {
        // Output written right before exit, without a trailing newline.
        fputs("last words", stdout);
        return 3;
    }
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
