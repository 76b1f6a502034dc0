/* A stand-in for critest's nonewprivs image: installed setuid root, it prints
 * its effective uid, so a spec run as uid 1000 sees 0 only when the container
 * allows privilege escalation (noNewPrivileges false). */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
