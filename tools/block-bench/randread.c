/* 4 KiB random reads for a fixed time: prints "IOPS <n>".
 * usage: randread FILE SECONDS
 * Uses O_DIRECT where the file system allows it, so a guest's reads reach
 * its virtio disk instead of its page cache. Static, so the same binary
 * runs on a host and inside a guest. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: randread FILE SECONDS\n"); return 2; }
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0) fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror(argv[1]); return 1; }
    uint64_t size = 0;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) ioctl(fd, BLKGETSIZE64, &size);
    else size = st.st_size;
    uint64_t blocks = size / 4096;
    if (blocks == 0) { fprintf(stderr, "%s: too small\n", argv[1]); return 1; }
    void *buf;
    if (posix_memalign(&buf, 4096, 4096)) return 1;
    double secs = atof(argv[2]), start = now(), end = start + secs;
    uint64_t x = 88172645463325252ull, n = 0;
    while (now() < end) {
        for (int i = 0; i < 64; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if (pread(fd, buf, 4096, (off_t)((x % blocks) * 4096)) != 4096) { perror("pread"); return 1; }
            n++;
        }
    }
    printf("IOPS %.0f\n", n / (now() - start));
    return 0;
}
