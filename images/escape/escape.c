// escape: a wasm32-wasi guest that tries what an attacker inside a wasm
// container would, and says what it reached. Built with clang --target=wasm32-wasi.
//
//   escape probe <planted> <marker> [--] [dir...]
//
// One line per attempt: `REACHED <what>` when the attempt got somewhere it
// must not, `denied <what>: <reason>` otherwise; `probe done` at the end.
// It always exits 0, so the test reads every line.
//
// <planted> names a file on the host, outside every rootfs, relative to the
// host's `/` (e.g. `tmp/x/planted.txt`); <marker> is its content. The guest
// walks `..` from `/`, `.` and every <dir> towards it, and reports REACHED only
// when a read returns the marker. Neither the marker nor what it reads is ever
// printed.
//
// Nothing here writes a byte anywhere that matters: the write to
// /proc/self/mem writes back the byte it read (a private copy-on-write page of
// the process's own code), and /proc/sys/kernel/core_pattern is only opened.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *marker;

static void reached(const char *what) {
    printf("REACHED %s\n", what);
    fflush(stdout);
}

static void denied(const char *what, const char *why) {
    printf("denied %s: %s\n", what, why);
    fflush(stdout);
}

// Opens `path` with `flags`: REACHED if it opens.
static void try_open(const char *verb, const char *path, int flags) {
    char what[512];
    snprintf(what, sizeof what, "%s %s", verb, path);
    int fd = open(path, flags);
    if (fd < 0) {
        denied(what, strerror(errno));
        return;
    }
    close(fd);
    reached(what);
}

// Lists `path`: REACHED if it has any entry besides `.` and `..`.
static void try_list(const char *path) {
    char what[512];
    snprintf(what, sizeof what, "list %s", path);
    DIR *dir = opendir(path);
    if (!dir) {
        denied(what, strerror(errno));
        return;
    }
    int entries = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) entries++;
    }
    closedir(dir);
    if (entries == 0) {
        denied(what, "empty");
        return;
    }
    snprintf(what, sizeof what, "list %s (%d entries)", path, entries);
    reached(what);
}

// Reads all of `path` into a NUL-terminated buffer; NULL (errno set) if it
// cannot be opened or read.
static char *slurp(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            char *bigger = realloc(buf, cap + 1);
            if (!bigger) break;
            buf = bigger;
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0) {
            int saved = errno;
            free(buf);
            close(fd);
            errno = saved;
            return NULL;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
}

// Whether `path` opens and its first bytes hold the marker.
static int holds_marker(const char *path, char *why, size_t whylen) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        return 0;
    }
    char buf[4097];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int err = errno;
    close(fd);
    if (n < 0) {
        snprintf(why, whylen, "opened, read failed: %s", strerror(err));
        return 0;
    }
    buf[n] = 0;
    if (strstr(buf, marker)) return 1;
    snprintf(why, whylen, "opened, no marker (%zd bytes)", n);
    return 0;
}

static void try_marker(const char *what_prefix, const char *path) {
    char what[1024], why[256];
    snprintf(what, sizeof what, "%s %s", what_prefix, path);
    if (holds_marker(path, why, sizeof why))
        reached(what);
    else
        denied(what, why);
}

// The /proc/self/maps line of the mapping to aim a write at: the first
// executable (r-xp) mapping of a file, the shim's code if it is listed.
static int pick_code(const char *maps, unsigned long long *start, unsigned long long *end,
                     char *name, size_t namelen) {
    int found = 0;
    const char *line = maps;
    while (line && *line) {
        const char *next = strchr(line, '\n');
        char buf[1024];
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (len >= sizeof buf) len = sizeof buf - 1;
        memcpy(buf, line, len);
        buf[len] = 0;
        unsigned long long s, e;
        char perms[8] = "", path[900] = "";
        // start-end perms offset dev inode path
        if (sscanf(buf, "%llx-%llx %7s %*s %*s %*s %899[^\n]", &s, &e, perms, path) >= 3 &&
            !strcmp(perms, "r-xp") && path[0] == '/') {
            int shim = strstr(path, "containerd-shim-wasmtime") != NULL;
            if (!found || shim) {
                *start = s;
                *end = e;
                snprintf(name, namelen, "%s", path);
                found = 1;
                if (shim) return 1;
            }
        }
        line = next ? next + 1 : NULL;
    }
    return found;
}

static void proc_self_mem(void) {
    size_t len = 0;
    char *maps = slurp("/proc/self/maps", &len);
    if (!maps) {
        denied("read /proc/self/maps", strerror(errno));
    } else {
        char what[128];
        snprintf(what, sizeof what, "read /proc/self/maps (%zu bytes)", len);
        reached(what);
    }
    unsigned long long start = 0, end = 0;
    char name[900] = "";
    int aimed = maps && pick_code(maps, &start, &end, name, sizeof name);
    free(maps);
    int fd = open("/proc/self/mem", O_RDWR);
    if (fd < 0) {
        denied("open-rw /proc/self/mem", strerror(errno));
        return;
    }
    if (!aimed) {
        // No map to aim with: somewhere in the usual range of a PIE's code.
        start = 0x555555554000ULL;
        end = start + 1;
        snprintf(name, sizeof name, "(guessed)");
    }
    // The last byte of the mapping: page padding after the code, if any.
    unsigned long long addr = end - 1;
    unsigned char byte = 0;
    ssize_t r = pread(fd, &byte, 1, (off_t)addr);
    char what[1200];
    snprintf(what, sizeof what, "read /proc/self/mem at %#llx (%s)", addr, name);
    if (r == 1)
        reached(what);
    else
        denied(what, r < 0 ? strerror(errno) : "short read");
    // Writes back what was there (or 0 into the padding, if unread): the
    // code stays as it was, but the write itself is the escape.
    ssize_t w = pwrite(fd, &byte, 1, (off_t)addr);
    snprintf(what, sizeof what, "write /proc/self/mem at %#llx (%s)", addr, name);
    if (w == 1)
        reached(what);
    else
        denied(what, w < 0 ? strerror(errno) : "short write");
    close(fd);
}

static void walks(const char *planted, char **dirs, int ndirs) {
    const char *base = strrchr(planted, '/');
    base = base ? base + 1 : planted;
    const char *names[2] = {planted, base};
    int nnames = strcmp(planted, base) ? 2 : 1;
    char path[4096];
    snprintf(path, sizeof path, "/%s", planted);
    try_marker("walk", path);
    for (int d = 0; d < ndirs; d++) {
        for (int n = 0; n < nnames; n++) {
            for (int k = 1; k <= 8; k++) {
                size_t at = (size_t)snprintf(path, sizeof path, "%s/", dirs[d]);
                for (int i = 0; i < k && at + 3 < sizeof path; i++) {
                    memcpy(path + at, "../", 3);
                    at += 3;
                }
                snprintf(path + at, sizeof path - at, "%s", names[n]);
                try_marker("walk", path);
            }
        }
    }
}

// Links to /proc/self/mem made by the guest in `dir`, then opened.
static void links_in(const char *dir) {
    char link_path[1024], target[1024], what[2200];
    // Relative: as many `..` as `dir` is deep, then proc/self/mem.
    int depth = 0;
    for (const char *p = dir; *p; p++)
        if (*p == '/' && p[1] && p[1] != '/') depth++;
    if (!strcmp(dir, "/")) depth = 0;
    size_t at = 0;
    for (int i = 0; i < depth; i++) at += (size_t)snprintf(target + at, sizeof target - at, "../");
    snprintf(target + at, sizeof target - at, "proc/self/mem");
    const char *targets[2] = {"/proc/self/mem", target};
    const char *kinds[2] = {"abs", "rel"};
    const char *sep = dir[strlen(dir) - 1] == '/' ? "" : "/";
    for (int t = 0; t < 2; t++) {
        snprintf(link_path, sizeof link_path, "%s%sescape-%s-link", dir, sep, kinds[t]);
        snprintf(what, sizeof what, "symlink %s -> %s", link_path, targets[t]);
        unlink(link_path);
        if (symlink(targets[t], link_path) != 0) {
            denied(what, strerror(errno));
            continue;
        }
        snprintf(what, sizeof what, "open %s (symlink to %s)", link_path, targets[t]);
        int fd = open(link_path, O_RDONLY);
        if (fd >= 0) {
            close(fd);
            reached(what);
        } else {
            denied(what, strerror(errno));
        }
        unlink(link_path);
    }
    snprintf(link_path, sizeof link_path, "%s%sescape-hard-link", dir, sep);
    snprintf(what, sizeof what, "link /proc/self/mem -> %s", link_path);
    unlink(link_path);
    if (link("/proc/self/mem", link_path) == 0) {
        reached(what);
        unlink(link_path);
    } else {
        denied(what, strerror(errno));
    }
}

static void probe(const char *planted, char **dirs, int ndirs) {
    // Memory of the process running the guest.
    proc_self_mem();
    static const char *files[] = {
        "/proc/self/mem",      "/proc/self/environ",   "/proc/self/status",
        "/proc/self/exe",      "/proc/self/mountinfo", "/proc/self/cmdline",
        "/proc/1/environ",     "/proc/1/mem",          "/proc/self/root",
        "/proc/self/cwd",      "/proc/kcore",          "/proc/sysrq-trigger",
        "/proc/self/fd",       "/proc/self/map_files", "/sys/fs/cgroup",
        "/sys/kernel",         "/sys/fs/cgroup/cgroup.procs",
        "/dev/null",           "/dev/zero",            "/dev/full",
        "/dev/mem",            "/dev/kmsg",            "/dev/ptmx",
        "/dev/pts",            "/dev/shm",             "/dev/mqueue",
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) try_open("open", files[i], O_RDONLY);
    // Opened for writing, never written.
    try_open("open-w", "/proc/sys/kernel/core_pattern", O_WRONLY);
    try_open("open-w", "/sys/fs/cgroup/cgroup.procs", O_WRONLY);
    char path[64];
    for (int n = 0; n <= 20; n++) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", n);
        try_open("open", path, O_RDONLY);
        try_list(path);
    }
    try_list("/proc/self/root");
    try_list("/proc/self/cwd");
    // The pseudo-filesystems' mount points: an empty directory is no way in.
    try_list("/proc");
    try_list("/sys");
    try_list("/dev");
    // `..` out of the root, the working directory and every mount.
    char *bases[64];
    int nbases = 0;
    bases[nbases++] = "/";
    bases[nbases++] = ".";
    for (int i = 0; i < ndirs && nbases < 64; i++) bases[nbases++] = dirs[i];
    walks(planted, bases, nbases);
    // Links to /proc/self/mem, wherever the guest may write.
    char *writable[64];
    int nwritable = 0;
    writable[nwritable++] = "/";
    writable[nwritable++] = "/tmp";
    for (int i = 0; i < ndirs && nwritable < 64; i++) writable[nwritable++] = dirs[i];
    for (int i = 0; i < nwritable; i++) links_in(writable[i]);
    puts("probe done");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc > 3 && !strcmp(argv[1], "probe")) {
        marker = argv[3];
        if (!*marker) {
            fputs("escape: the marker must not be empty\n", stderr);
            return 2;
        }
        int first = 4;
        if (first < argc && !strcmp(argv[first], "--")) first++;
        probe(argv[2], argv + first, argc - first);
        return 0;
    }
    fputs("usage: escape probe <planted> <marker> [--] [dir...]\n", stderr);
    return 2;
}
