// probe: a native sidecar that attacks its pod's wasm containers. Built static.
//
//   probe hold                       waits for SIGTERM (the sidecar's process)
//   probe status                     prints Seccomp, NoNewPrivs, CapEff, CapBnd
//                                    of its own /proc/self/status
//   probe scan <basename> <marker>   for every process it can see (a pod that
//                                    shares its PID namespace shows it the wasm
//                                    containers' processes): their descriptors,
//                                    memory, environment, maps, mapped files
//                                    (map_files) and root
//
// scan prints one line per attempt: `REACHED <what>` or `denied <what>: <why>`
// (`seen` and `skip` lines only inform), then `scan done`. A directory
// descriptor of another process is walked up (`<fd>/../../<basename>`)
// towards a file planted on the host; REACHED when what it reads holds
// <marker>. Neither the marker nor what is read is printed.
// It skips itself, the processes of its own container (they share its mount
// namespace) and the pod's pause process: native processes as runc runs them,
// not the wasm runtime under test.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *marker;

static void reached(const char *who, const char *what) {
    printf("REACHED %s: %s\n", who, what);
    fflush(stdout);
}

static void denied(const char *who, const char *what, const char *why) {
    printf("denied %s: %s: %s\n", who, what, why);
    fflush(stdout);
}

static void stop(int signal) {
    (void)signal;
    _exit(0);
}

static int status(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        printf("error: /proc/self/status: %s\n", strerror(errno));
        return 1;
    }
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "Seccomp:", 8) || !strncmp(line, "NoNewPrivs:", 11) ||
            !strncmp(line, "CapEff:", 7) || !strncmp(line, "CapBnd:", 7))
            fputs(line, stdout);
    }
    fclose(f);
    return 0;
}

// Whether the file open at `fd` holds the marker in its first bytes.
static int fd_holds_marker(int fd, char *why, size_t whylen) {
    char buf[4097];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n < 0) {
        snprintf(why, whylen, "opened, read failed: %s", strerror(errno));
        return 0;
    }
    buf[n] = 0;
    if (strstr(buf, marker)) return 1;
    snprintf(why, whylen, "opened, no marker (%zd bytes)", n);
    return 0;
}

// `..` walks from the directory `dirfd` towards `basename`.
static void walk_from(const char *who, const char *shown, int dirfd, const char *basename) {
    char rel[256], what[1024], why[256];
    for (int k = 0; k <= 8; k++) {
        size_t at = 0;
        for (int i = 0; i < k; i++) at += (size_t)snprintf(rel + at, sizeof rel - at, "../");
        snprintf(rel + at, sizeof rel - at, "%s", basename);
        snprintf(what, sizeof what, "walk %s/%s", shown, rel);
        int fd = openat(dirfd, rel, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            denied(who, what, strerror(errno));
            continue;
        }
        if (fd_holds_marker(fd, why, sizeof why))
            reached(who, what);
        else
            denied(who, what, why);
        close(fd);
    }
}

static void try_open(const char *who, const char *verb, const char *path, int flags) {
    char what[512];
    snprintf(what, sizeof what, "%s %s", verb, path);
    int fd = open(path, flags | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        denied(who, what, strerror(errno));
        return;
    }
    close(fd);
    reached(who, what);
}

static void try_read(const char *who, const char *path) {
    char what[512];
    snprintf(what, sizeof what, "read %s", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        denied(who, what, strerror(errno));
        return;
    }
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    int err = errno;
    close(fd);
    if (n < 0) {
        denied(who, what, strerror(err));
        return;
    }
    snprintf(what, sizeof what, "read %s (%zd bytes)", path, n);
    reached(who, what);
}

static void scan_fds(const char *who, const char *proc, const char *basename) {
    char path[512], what[2048], target[1024];
    snprintf(path, sizeof path, "%s/fd", proc);
    DIR *dir = opendir(path);
    if (!dir) {
        snprintf(what, sizeof what, "list %s", path);
        denied(who, what, strerror(errno));
        return;
    }
    int count = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.') continue;
        count++;
        char fdpath[600];
        snprintf(fdpath, sizeof fdpath, "%s/fd/%s", proc, e->d_name);
        ssize_t n = readlink(fdpath, target, sizeof target - 1);
        if (n < 0) {
            snprintf(what, sizeof what, "readlink %s", fdpath);
            denied(who, what, strerror(errno));
        } else {
            target[n] = 0;
            snprintf(what, sizeof what, "readlink %s -> %s", fdpath, target);
            reached(who, what);
        }
        int fd = open(fdpath, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        snprintf(what, sizeof what, "open %s", fdpath);
        if (fd < 0) {
            denied(who, what, strerror(errno));
            continue;
        }
        reached(who, what);
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) walk_from(who, fdpath, fd, basename);
        close(fd);
    }
    closedir(dir);
    // Listing the numbers takes no more than read permission on the
    // directory (root's, in any container); each descriptor above is what counts.
    printf("seen %s: list %s (%d descriptors)\n", who, path, count);
}

static void scan_pid(const char *pid, const char *basename) {
    char proc[64], path[512], comm[64] = "?", who[128], what[1024], why[256];
    snprintf(proc, sizeof proc, "/proc/%s", pid);
    snprintf(path, sizeof path, "%s/comm", proc);
    FILE *f = fopen(path, "r");
    if (f) {
        if (fgets(comm, sizeof comm, f)) comm[strcspn(comm, "\n")] = 0;
        fclose(f);
    }
    snprintf(who, sizeof who, "pid %s (%s)", pid, comm);
    char mine[128] = "", theirs[128] = "";
    ssize_t a = readlink("/proc/self/ns/mnt", mine, sizeof mine - 1);
    snprintf(path, sizeof path, "%s/ns/mnt", proc);
    ssize_t b = readlink(path, theirs, sizeof theirs - 1);
    if (a > 0 && b > 0) {
        mine[a] = theirs[b] = 0;
        if (!strcmp(mine, theirs)) {
            printf("skip %s: this container's own process\n", who);
            return;
        }
    }
    if (!strcmp(comm, "pause")) {
        printf("skip %s: the pod's sandbox\n", who);
        return;
    }
    scan_fds(who, proc, basename);
    snprintf(path, sizeof path, "%s/mem", proc);
    try_open(who, "open", path, O_RDONLY);
    try_open(who, "open-rw", path, O_RDWR);
    snprintf(path, sizeof path, "%s/environ", proc);
    try_read(who, path);
    snprintf(path, sizeof path, "%s/maps", proc);
    try_read(who, path);
    // Every mapped file by its range (the wasm process maps its code and
    // the page it shares with the shim, its memory budget): open each.
    snprintf(path, sizeof path, "%s/map_files", proc);
    DIR *maps = opendir(path);
    if (!maps) {
        snprintf(what, sizeof what, "list %s", path);
        denied(who, what, strerror(errno));
    } else {
        struct dirent *m;
        errno = 0;
        while ((m = readdir(maps))) {
            if (m->d_name[0] == '.') continue;
            char mapped[400];
            snprintf(mapped, sizeof mapped, "%s/map_files/%s", proc, m->d_name);
            try_open(who, "open-rw", mapped, O_RDWR);
            try_open(who, "open", mapped, O_RDONLY);
            errno = 0;
        }
        // Listing it takes the right to read the process's mappings.
        snprintf(what, sizeof what, "list %s", path);
        if (errno)
            denied(who, what, strerror(errno));
        closedir(maps);
    }
    snprintf(path, sizeof path, "%s/root", proc);
    DIR *root = opendir(path);
    snprintf(what, sizeof what, "list %s", path);
    if (root) {
        closedir(root);
        reached(who, what);
    } else {
        denied(who, what, strerror(errno));
    }
    snprintf(path, sizeof path, "%s/root/%s", proc, basename);
    snprintf(what, sizeof what, "walk %s", path);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        denied(who, what, strerror(errno));
    } else {
        if (fd_holds_marker(fd, why, sizeof why))
            reached(who, what);
        else
            denied(who, what, why);
        close(fd);
    }
}

static int scan(const char *basename) {
    char self[32];
    snprintf(self, sizeof self, "%d", (int)getpid());
    DIR *proc = opendir("/proc");
    if (!proc) {
        printf("error: /proc: %s\n", strerror(errno));
        return 1;
    }
    struct dirent *e;
    while ((e = readdir(proc))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || !strcmp(e->d_name, self)) continue;
        scan_pid(e->d_name, basename);
    }
    closedir(proc);
    puts("scan done");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "hold")) {
        signal(SIGTERM, stop);
        signal(SIGINT, stop);
        for (;;) pause();
    }
    if (!strcmp(cmd, "status")) return status();
    if (!strcmp(cmd, "scan") && argc > 3 && argv[3][0]) {
        marker = argv[3];
        return scan(argv[2]);
    }
    fputs("usage: probe hold | status | scan <basename> <marker>\n", stderr);
    return 2;
}
