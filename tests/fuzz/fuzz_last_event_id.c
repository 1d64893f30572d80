/*
 * Last-Event-ID values (header or ?last_event_id=) through
 * ts_parse_last_event_id(), checked against an independent reading of the
 * rule: optional blanks, 1+ decimal digits whose value fits in 0..2^63-1,
 * optional blanks, nothing else.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "event_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
reference_parse(const char *s, uint64_t *out)
{
    const char *digits;
    size_t ndigits;
    uint64_t v = 0;

    while (*s == ' ' || *s == '\t')
        s++;
    digits = s;
    while (*s >= '0' && *s <= '9')
        s++;
    ndigits = (size_t)(s - digits);
    while (*s == ' ' || *s == '\t')
        s++;
    if (ndigits == 0 || *s != '\0')
        return -EINVAL;
    /* Leading zeros do not count towards the size. */
    while (ndigits > 1 && *digits == '0') {
        digits++;
        ndigits--;
    }
    if (ndigits > 19)
        return -EINVAL;
    for (size_t i = 0; i < ndigits; i++)
        v = v * 10 + (uint64_t)(digits[i] - '0');
    if (v > INT64_MAX)
        return -EINVAL;
    *out = v;
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t got = 0, want = 0;
    int rc_got, rc_want;
    char *s;

    /* MHD hands the value over as a C string: it ends at the first NUL. */
    s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    rc_got = ts_parse_last_event_id(s, &got);
    rc_want = reference_parse(s, &want);
    if (rc_got != rc_want || (rc_got == 0 && got != want))
        abort();
    if (rc_got == 0 && got > INT64_MAX)
        abort();
    free(s);
    return 0;
}
