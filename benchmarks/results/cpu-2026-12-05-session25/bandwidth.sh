#!/usr/bin/env bash
# Read bandwidth of this machine (session 25): AVX-512 loads summed, 1 and 2 OpenMP threads, a 512 MB buffer
# streamed once per pass (best of 7), then 16-128 MB working sets read repeatedly (what stays in the L3).
# Usage: bash bandwidth.sh   (needs gcc); output in bandwidth.txt beside it
set -euo pipefail
tmp=$(mktemp -d)
cat > "$tmp/bw.c" <<'EOF'
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  size_t n = (size_t)512<<20; char *buf = aligned_alloc(64, n);
  for (size_t i=0;i<n;i++) buf[i]=(char)i;
  for (int th=1; th<=2; th++){
    double best=1e9; float sink=0;
    for(int r=0;r<7;r++){
      double t=now();
      #pragma omp parallel num_threads(th) reduction(+:sink)
      {
        __m512 a0=_mm512_setzero_ps(),a1=a0,a2=a0,a3=a0;
        #pragma omp for
        for(size_t i=0;i<n;i+=256){
          a0=_mm512_add_ps(a0,_mm512_load_ps(buf+i)); a1=_mm512_add_ps(a1,_mm512_load_ps(buf+i+64));
          a2=_mm512_add_ps(a2,_mm512_load_ps(buf+i+128)); a3=_mm512_add_ps(a3,_mm512_load_ps(buf+i+192));
        }
        sink += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0,a1),_mm512_add_ps(a2,a3)));
      }
      t=now()-t; if(t<best)best=t;
    }
    printf("%d threads: %.1f GB/s (%g)\n", th, n/best/1e9, sink);
  }
  // smaller working sets (cache effects)
  for (size_t m = 16<<20; m <= (128<<20); m*=2){
    double best=1e9; float sink=0;
    for(int r=0;r<20;r++){
      double t=now();
      #pragma omp parallel num_threads(2) reduction(+:sink)
      { __m512 a0=_mm512_setzero_ps(),a1=a0;
        #pragma omp for
        for(size_t i=0;i<m;i+=128){a0=_mm512_add_ps(a0,_mm512_load_ps(buf+i));a1=_mm512_add_ps(a1,_mm512_load_ps(buf+i+64));}
        sink+=_mm512_reduce_add_ps(_mm512_add_ps(a0,a1)); }
      t=now()-t; if(t<best)best=t;
    }
    printf("2 threads %zu MB repeated: %.1f GB/s\n", m>>20, m/best/1e9);
  }
}
EOF
gcc -O2 -mavx512f -fopenmp "$tmp/bw.c" -o "$tmp/bw"
OMP_WAIT_POLICY=ACTIVE "$tmp/bw"
