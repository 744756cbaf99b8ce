/* moekit core: the bits of a binary32 and back (internal; dtype conversions, the sampler's exp). */
#ifndef MOE_BITS_H
#define MOE_BITS_H

#include <stdint.h>
#include <string.h>

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#endif
