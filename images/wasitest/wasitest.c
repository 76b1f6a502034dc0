// wasitest: one WASI program with a subcommand per behaviour the shim's tests check.
// Built with clang --target=wasm32-wasi (see images/Makefile).
#include <errno.h>
#include <fcntl.h>
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

// Calls itself through a volatile pointer, adding after the call: no inlining,
// no tail call, no loop; only wasm's own call stack grows (no locals in linear
// memory), until the engine traps with "call stack exhausted".
static int recurse_step(int depth);
static int (*volatile recurse_next)(int) = recurse_step;
static int recurse_step(int depth) { return recurse_next(depth + 1) + depth; }

static int recurse(void) {
    puts("recursing");
    fflush(stdout);
    return recurse_step(0) == 42;
}

// Writes `total` bytes to stdout as 64-byte lines ("0123...xyz\n"), in 64 KiB
// writes straight to fd 1; says on stderr how much went out.
static int flood(long long total) {
    static char buf[1 << 16];
    const char line[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n";
    for (size_t off = 0; off < sizeof buf; off += 64) memcpy(buf + off, line, 64);
    long long done = 0;
    while (done < total) {
        // After a short write, go on from the same place in the pattern.
        size_t skip = (size_t)(done % 64), room = sizeof buf - skip;
        size_t want = total - done < (long long)room ? (size_t)(total - done) : room;
        ssize_t n = write(1, buf + skip, want);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "flood: write after %lld bytes: %s\n", done, strerror(errno));
            return 1;
        }
        done += n;
    }
    fprintf(stderr, "flooded %lld bytes\n", done);
    return 0;
}

// Opens `path` `count` times without closing any; reports how many opened and
// the first error, then closes them all and opens it once more.
static int openmany(int count, const char *path) {
    static int fds[100000];
    int opened = 0;
    if (count > 100000) count = 100000;
    for (; opened < count; opened++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            printf("open #%d failed: %s\n", opened + 1, strerror(errno));
            break;
        }
        fds[opened] = fd;
    }
    printf("opened %d of %d\n", opened, count);
    for (int i = 0; i < opened; i++) close(fds[i]);
    int fd = open(path, O_RDONLY);
    printf("after closing them: %s\n", fd < 0 ? strerror(errno) : "open again");
    if (fd >= 0) close(fd);
    return 0;
}

// Grows linear memory by 1 MiB (16 pages) at a time with memory.grow, never
// touching it: only the engine's limits can stop it.
static int grow(int mb) {
    for (int i = 0; i < mb; i++) {
        if (__builtin_wasm_memory_grow(0, 16) == (size_t)-1) {
            printf("memory.grow failed after %d MiB (memory is %zu MiB)\n", i,
                   __builtin_wasm_memory_size(0) / 16);
            return 1;
        }
    }
    printf("grew %d MiB (memory is %zu MiB)\n", mb, __builtin_wasm_memory_size(0) / 16);
    return 0;
}

// Grows linear memory 1 MiB at a time up to `mb` MiB in all, without touching
// it; while a grow fails it says once "stuck at N MiB" and tries again every
// 50 ms (a resize may raise the limit); at the target it says "reached N MiB"
// and keeps the memory, sleeping, until killed.
static int grow_to(int mb) {
    size_t stuck = 0;
    while (__builtin_wasm_memory_size(0) / 16 < (size_t)mb) {
        if (__builtin_wasm_memory_grow(0, 16) != (size_t)-1) continue;
        size_t now = __builtin_wasm_memory_size(0) / 16;
        if (now != stuck) {
            printf("stuck at %zu MiB\n", now);
            fflush(stdout);
            stuck = now;
        }
        usleep(50000);
    }
    printf("reached %zu MiB\n", __builtin_wasm_memory_size(0) / 16);
    fflush(stdout);
    for (;;) sleep(1);
}

static int report(const char *what, int rc, const char *a, const char *b) {
    if (rc != 0) {
        printf("error: %s %s %s: %s\n", what, a, b, strerror(errno));
        return 1;
    }
    printf("%s %s %s: ok\n", what, a, b);
    return 0;
}

static int run(int argc, char **argv);

// `do CMD ARGS... -- CMD ARGS... -- ...`: runs each command in turn and prints
// "=> STATUS" after each, so one container checks several things.
static int run_each(int argc, char **argv) {
    int start = 2, failed = 0;
    while (start < argc) {
        int end = start;
        while (end < argc && strcmp(argv[end], "--")) end++;
        char *saved = argv[start - 1];
        argv[start - 1] = argv[0];
        int rc = run(end - start + 1, argv + start - 1);
        argv[start - 1] = saved;
        fflush(stdout);
        printf("=> %d\n", rc);
        fflush(stdout);
        failed |= rc != 0;
        start = end + 1;
    }
    return failed;
}

int main(int argc, char **argv) { return run(argc, argv); }

static int run(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "hello";
    if (!strcmp(cmd, "hello")) {
        puts("hello from wasm");
        return 0;
    }
    if (!strcmp(cmd, "tty")) {
        /* Whether stdin, stdout and stderr are a terminal. */
        printf("tty: %d %d %d\n", isatty(0), isatty(1), isatty(2));
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
    if (!strcmp(cmd, "do")) return run_each(argc, argv);
    if (!strcmp(cmd, "recurse")) return recurse();
    if (!strcmp(cmd, "flood") && argc > 2) return flood(atoll(argv[2]));
    if (!strcmp(cmd, "openmany") && argc > 3) return openmany(atoi(argv[2]), argv[3]);
    if (!strcmp(cmd, "grow") && argc > 2) return grow(atoi(argv[2]));
    if (!strcmp(cmd, "growto") && argc > 2) return grow_to(atoi(argv[2]));
    if (!strcmp(cmd, "link") && argc > 3) return report("link", link(argv[2], argv[3]), argv[2], argv[3]);
    if (!strcmp(cmd, "symlink") && argc > 3)
        return report("symlink", symlink(argv[2], argv[3]), argv[2], argv[3]);
    if (!strcmp(cmd, "rename") && argc > 3)
        return report("rename", rename(argv[2], argv[3]), argv[2], argv[3]);
    if (!strcmp(cmd, "unlink") && argc > 2) return report("unlink", unlink(argv[2]), argv[2], "");
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
