// Reads the same resident 8 MiB buffer four times, and runs a loop of arithmetic, back to back and after 900 ms of
// sleep: how much of a frame's time on a shared VM is the caches emptied while the process idles, and whether
// the clock drops (README, "The node agrees with the bench").
//   gcc -O2 -o /tmp/cold_cache_probe scripts/cold_cache_probe.c && /tmp/cold_cache_probe
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(void) {
    enum { BYTES = 8 << 20, ROUNDS = 8 };
    static long buf[BYTES / sizeof(long)];
    memset(buf, 1, sizeof buf);
    long sink = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int idle_ms = 0; idle_ms <= 900; idle_ms += 900) {
            double read = 0, arith = 0;
            for (int r = 0; r < ROUNDS; r++) {
                usleep(idle_ms * 1000);
                double t0 = now_ms();
                // One long per 64-byte line: every line of the buffer once per pass.
                for (int rep = 0; rep < 4; rep++)
                    for (size_t k = 0; k < BYTES / sizeof(long); k += 8) sink += buf[k];
                read += now_ms() - t0;
                usleep(idle_ms * 1000);
                t0 = now_ms();
                volatile double x = 1.0;
                for (long i = 0; i < 20000000; i++) x = x * 1.0000001 + 1e-9;
                arith += now_ms() - t0;
            }
            printf("idle %3d ms before each: 4 x 8 MiB read in %.2f ms, 2e7 multiply-adds in %.2f ms (means of %d)\n",
                   idle_ms, read / ROUNDS, arith / ROUNDS, ROUNDS);
        }
    }
    return sink == 42;
}
