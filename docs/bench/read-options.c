/*
 * The read-path options of issue 16, item 1, as a C prototype of one typed call: a 22-byte
 * request answered by a 40-byte reply over a UNIX socket pair, the client in this process, the
 * server forked, both pinned to CPU 0 (the one-CPU case, where every context switch is on the
 * critical path). Each option is measured in CPU time per call (user + system of both
 * processes, getrusage over a child that runs the whole sample) and context switches per call,
 * 12 rounds, the options' order rotated from round to round; the median is printed.
 *
 *   gcc -O2 -o /tmp/read-options docs/bench/read-options.c && /tmp/read-options
 *
 * Options (syscalls per call, client + server):
 *   raw          16-byte write/read ping-pong on SOCK_STREAM, blocking reads: the floor (2 + 2)
 *   exact        fdserver before read-ahead: client send, 2 recvmsg (5 bytes, rest); server poll,
 *                2 recvmsg (2-byte header, body), send (3 + 4)
 *   peek         server peeks the request (MSG_PEEK) then consumes it exactly (3 + 4)
 *   ra-poll      read-ahead on a stream: one recvmsg per message; server polls first (2 + 3)
 *   ra-block     the same, the server blocking in recvmsg (2 + 2)
 *   ra-both-poll the same, both polling first (3 + 3): fdserver's stream pair
 *   seq-poll     SOCK_SEQPACKET, one recvmsg per message, server polls first (2 + 3)
 *   seq-block    SOCK_SEQPACKET, both blocking in recvmsg (2 + 2): fdserver's default pair
 */
#define _GNU_SOURCE
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum { RAW, EXACT, PEEK, RA_POLL, RA_BLOCK, RA_BOTH_POLL, SEQ_POLL, SEQ_BLOCK, N };
static const char *names[N] = {"raw", "exact", "peek", "ra-poll", "ra-block", "ra-both-poll", "seq-poll", "seq-block"};
static int pattern;
static char req[22] = "\x00\x14hello\0Joe\0Dalton\0";
static char rep[40] = "\x00\x26ok\0Hello Joe Dalton, how are you?\0001234";

static ssize_t rcv(int fd, char *b, size_t n, int flags) {
    struct iovec iov = {b, n};
    union { char c[512]; struct cmsghdr a; } cm;
    struct msghdr m = {0};
    m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = cm.c; m.msg_controllen = sizeof cm.c;
    return recvmsg(fd, &m, flags | MSG_CMSG_CLOEXEC);
}
static void snd(int fd, const char *b, size_t n) { send(fd, b, n, MSG_NOSIGNAL); }
static void wait_in(int fd) { struct pollfd p[2] = {{fd, POLLIN, 0}, {-1, 0, 0}}; poll(p, 2, -1); }

static void server(int fd) {
    char b[4096];
    for (;;) {
        ssize_t n;
        switch (pattern) {
        case RAW: if (read(fd, b, 16) <= 0) _exit(0); write(fd, b, 16); continue;
        case EXACT: wait_in(fd); if (rcv(fd, b, 2, 0) <= 0) _exit(0); rcv(fd, b + 2, 20, 0); break;
        case PEEK: wait_in(fd); if (rcv(fd, b, sizeof b, MSG_PEEK) <= 0) _exit(0); rcv(fd, b, 22, 0); break;
        case RA_POLL: case RA_BOTH_POLL: case SEQ_POLL: wait_in(fd); /* fall through */
        case RA_BLOCK: case SEQ_BLOCK: n = rcv(fd, b, sizeof b, 0); if (n <= 0) _exit(0); break;
        }
        snd(fd, rep, sizeof rep);
    }
}

static void call(int fd) {
    char b[4096];
    switch (pattern) {
    case RAW: write(fd, b, 16); read(fd, b, 16); return;
    case EXACT: snd(fd, req, sizeof req); rcv(fd, b, 5, 0); rcv(fd, b + 5, sizeof rep - 5, 0); return;
    case RA_BOTH_POLL: snd(fd, req, sizeof req); wait_in(fd); rcv(fd, b, sizeof b, 0); return;
    default: snd(fd, req, sizeof req); rcv(fd, b, sizeof b, 0); return;
    }
}

static double secs(struct timeval t) { return t.tv_sec + t.tv_usec * 1e-6; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    int calls = argc > 1 ? atoi(argv[1]) : 50000, rounds = 12;
    double cpu[N][12], cs[N][12];
    cpu_set_t one; CPU_ZERO(&one); CPU_SET(0, &one); sched_setaffinity(0, sizeof one, &one);
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < N; i++) {
            pattern = (i + r) % N;
            struct rusage a, b;
            getrusage(RUSAGE_CHILDREN, &a);
            pid_t sample = fork();
            if (sample == 0) {
                int sv[2];
                socketpair(AF_UNIX, pattern >= SEQ_POLL ? SOCK_SEQPACKET : SOCK_STREAM, 0, sv);
                pid_t srv = fork();
                if (srv == 0) { prctl(PR_SET_PDEATHSIG, SIGKILL); close(sv[0]); server(sv[1]); }
                close(sv[1]);
                for (int k = 0; k < calls; k++) call(sv[0]);
                close(sv[0]);
                waitpid(srv, 0, 0);
                _exit(0);
            }
            waitpid(sample, 0, 0);
            getrusage(RUSAGE_CHILDREN, &b);
            cpu[pattern][r] = (secs(b.ru_utime) - secs(a.ru_utime) + secs(b.ru_stime) - secs(a.ru_stime)) / calls * 1e6;
            cs[pattern][r] = (double)(b.ru_nvcsw - a.ru_nvcsw + b.ru_nivcsw - a.ru_nivcsw) / calls;
        }
    }
    double raw;
    printf("| option | CPU per call (median of %d) | / raw | context switches per call |\n|---|---|---|---|\n", rounds);
    for (int p = 0; p < N; p++) {
        qsort(cpu[p], rounds, sizeof(double), cmp);
        qsort(cs[p], rounds, sizeof(double), cmp);
        double m = (cpu[p][rounds / 2 - 1] + cpu[p][rounds / 2]) / 2;
        if (p == RAW) raw = m;
        printf("| %s | %.2f us | %.2fx | %.2f |\n", names[p], m, m / raw, (cs[p][rounds / 2 - 1] + cs[p][rounds / 2]) / 2);
    }
    return 0;
}
