/* A stand-in for the web servers critest runs (nginx, httpd, hostnet-nginx):
 * answers every HTTP request with 200 and a small page, on the port given as
 * its first argument (80 by default). Like nginx it writes its pid to
 * /var/run/nginx.pid; it announces itself on stderr under its own name (the
 * container log critest reads for httpd says "httpd"). Built static by the
 * Makefile; test/src/critest.rs puts it into busybox stand-in images. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char page[] = "<html><body><h1>Welcome to the stand-in web server!</h1></body></html>\n";

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 80;
    const char *name = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    FILE *pid = fopen("/var/run/nginx.pid", "w");
    if (pid) {
        fprintf(pid, "%d\n", getpid());
        fclose(pid);
    }
    int server = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (server < 0 || bind(server, (struct sockaddr *)&addr, sizeof addr) || listen(server, 64)) {
        perror(name);
        return 1;
    }
    fprintf(stderr, "%s: serving on port %d\n", name, port);
    char header[256], request[4096];
    int length = snprintf(header, sizeof header,
                          "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %zu\r\n"
                          "Connection: close\r\n\r\n",
                          strlen(page));
    for (;;) {
        int client = accept(server, NULL, NULL);
        if (client < 0) continue;
        /* The request itself does not matter: read what came, answer, close. */
        if (read(client, request, sizeof request) >= 0) {
            if (write(client, header, length) == length) {
                if (write(client, page, strlen(page)) < 0) perror(name);
            }
        }
        close(client);
    }
}
