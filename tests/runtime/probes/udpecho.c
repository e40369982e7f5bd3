/* A UDP echo server for the network tests (busybox's nc has no UDP): binds 0.0.0.0:PORT and
 * answers each datagram with "echo:" and its payload, until killed. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: udpecho PORT\n");
        return 2;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("udpecho");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        char buf[1500], out[1510];
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n < 0)
            continue;
        memcpy(out, "echo:", 5);
        memcpy(out + 5, buf, (size_t)n);
        sendto(s, out, (size_t)n + 5, 0, (struct sockaddr *)&peer, len);
    }
}
