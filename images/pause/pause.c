// The pod sandbox's process for the CRI tests: holds the pod's namespaces
// until it is told to stop. Built static, imported as the sandbox image.
#include <signal.h>
#include <unistd.h>

static void stop(int signal) {
    (void)signal;
    _exit(0);
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;) pause();
}
