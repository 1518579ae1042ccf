/* grow.c — dpep_grow: the one growable-array helper (off the step path). */
#include "dpep_base.h"

#include <stdlib.h>

#define GROW_MIN 16

bool dpep_grow(void **p, int64_t *cap, int64_t need, size_t elem)
{
    if (need <= *cap) return true;
    int64_t c = *cap > 0 ? *cap : GROW_MIN;
    while (c < need) c *= 2;
    void *q = realloc(*p, elem * (size_t)c);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}
