#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
int main() {
    srand(3);
    long bad = 0, n = 0;
    for (int t = 0; t < 2000000; t++) {
        uint32_t u = ((uint32_t)rand() << 16) ^ (uint32_t)rand();
        float v; memcpy(&v, &u, 4);
        if (!isfinite(v)) continue;
        int s = rand() % 300 - 140;
        float ref = ldexpf(v, -s);
        float out[16];
        _mm512_storeu_ps(out, _mm512_scalef_ps(_mm512_set1_ps(v), _mm512_set1_ps((float)-s)));
        n++;
        if (memcmp(&ref, &out[0], 4)) { if (bad < 5) printf("v %a s %d ref %a got %a\n", v, s, ref, out[0]); bad++; }
    }
    printf("bad %ld of %ld\n", bad, n);
}
