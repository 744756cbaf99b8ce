/* moekit tests and benches: a real redis-server on 127.0.0.1 for the tenant/quota code (tests in
 * tests/tenant, bench/bench_gateway.c). No test-framework dependency, so benches include it too. */
#ifndef MOE_REDIS_UTIL_H
#define MOE_REDIS_UTIL_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* A free TCP port on 127.0.0.1 (bound then closed; the caller uses it at once). */
static inline int tt_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (struct sockaddr *)&a, &l)) {
        perror("free port");
        exit(2);
    }
    int port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static inline int tt_port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Start redis-server on port (127.0.0.1 only, no persistence) in dir; returns its pid or -1
 * when redis-server is not installed. */
static inline pid_t tt_redis_start(const char *dir, int port) {
    pid_t pid = fork();
    if (pid == 0) {
        char p[16];
        snprintf(p, sizeof p, "%d", port);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", dir, "--protected-mode", "yes", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        if (tt_port_open(port)) return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return -1;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static inline void tt_redis_stop(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

#endif
