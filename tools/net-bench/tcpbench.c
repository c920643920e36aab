/* tcpbench: one-way TCP throughput, timed at the sender until the receiver
 * confirms it has every byte (busybox nc closes early and cannot be timed).
 *   tcpbench sink PORT [COUNT]    accept COUNT connections (default 1), one at a
 *                                 time; read each to EOF; answer with the byte
 *                                 count (8 bytes, big-endian); close
 *   tcpbench send HOST PORT MIB   connect (retrying for 10 s while refused), send
 *                                 MIB MiB, shut down writing, wait for the count;
 *                                 prints "tcpbench MIB SECONDS MiB/s"
 * Built static (gcc -O2 -static) so it runs in the busybox guest and in L1. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char buf[1 << 17];

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) die("write");
    p += w;
    n -= (size_t)w;
  }
}

static int sink(int port, int count) {
  int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (ls < 0) die("socket");
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (listen(ls, 4) < 0) die("listen");
  for (int i = 0; i < count; i++) {
    int c = accept(ls, NULL, NULL);
    uint64_t total = 0;
    ssize_t r;
    unsigned char reply[8];
    if (c < 0) die("accept");
    while ((r = read(c, buf, sizeof buf)) > 0) total += (uint64_t)r;
    if (r < 0) die("read");
    for (int b = 0; b < 8; b++) reply[b] = (unsigned char)(total >> (56 - 8 * b));
    write_all(c, (char *)reply, sizeof reply);
    close(c);
  }
  return 0;
}

static int send_to(const char *host, int port, long mib) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  uint64_t want = (uint64_t)mib << 20, got = 0;
  unsigned char reply[8];
  size_t have = 0;
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) die("socket");
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", host); return 2; }
  /* The sink may still be starting (another namespace, a booting guest). */
  for (int tries = 0; connect(s, (struct sockaddr *)&a, sizeof a) < 0; tries++) {
    if (errno != ECONNREFUSED || tries >= 100) die("connect");
    usleep(100000);
  }
  memset(buf, 0x5a, sizeof buf);
  double t0 = now();
  for (uint64_t left = want; left > 0;) {
    size_t n = left < sizeof buf ? (size_t)left : sizeof buf;
    write_all(s, buf, n);
    left -= n;
  }
  shutdown(s, SHUT_WR);
  while (have < sizeof reply) {
    ssize_t r = read(s, reply + have, sizeof reply - have);
    if (r <= 0) die("read reply");
    have += (size_t)r;
  }
  double t = now() - t0;
  for (int b = 0; b < 8; b++) got = got << 8 | reply[b];
  if (got != want) { fprintf(stderr, "receiver got %llu bytes of %llu\n", (unsigned long long)got, (unsigned long long)want); return 1; }
  printf("tcpbench %ld %.3f %.1f\n", mib, t, mib / t);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && !strcmp(argv[1], "sink")) return sink(atoi(argv[2]), argc > 3 ? atoi(argv[3]) : 1);
  if (argc == 5 && !strcmp(argv[1], "send")) return send_to(argv[2], atoi(argv[3]), atol(argv[4]));
  fprintf(stderr, "usage: tcpbench sink PORT [COUNT] | tcpbench send HOST PORT MIB\n");
  return 2;
}
