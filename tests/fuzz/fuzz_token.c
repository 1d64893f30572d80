/*
 * Credentials through ts_auth_verify() (src/auth.c), against a policy with
 * an API key and an HS256 JWT key. Besides never crashing or leaking, an
 * accepted credential must be the API key, or a JWT whose signature an
 * independent check accepts: HMAC-SHA256 of "header.payload" with the key
 * computed here by OpenSSL (not libjwt), base64url without padding, equal
 * to the third part.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "config.h"
#include "taskstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define API_KEY "fuzz-api-key"
static const char secret[] = "fuzz-secret-of-at-least-thirty-two-bytes";

static struct ts_auth *
policy(void)
{
    static struct ts_auth *a;
    static struct ts_auth_metrics metrics;
    static struct ts_metrics *registry;
    char path[] = "/tmp/fuzz_token.XXXXXX", err[256];
    struct ts_config cfg;
    int fd;

    if (a != NULL)
        return a;
    fd = mkstemp(path);
    if (fd < 0 || write(fd, secret, sizeof(secret) - 1) != (ssize_t)(sizeof(secret) - 1))
        abort();
    close(fd);
    if (ts_config_init(&cfg) != 0 || ts_metrics_new(&registry) != 0 ||
        ts_auth_metrics_init(&metrics, registry) != 0)
        abort();
    cfg.api_auth_key = strdup(API_KEY);
    cfg.jwt_secret_file = strdup(path);
    if (ts_auth_new(&a, &cfg, false, NULL, &metrics, ts_clock_real(), NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    unlink(path);
    ts_config_dispose(&cfg);
    return a;
}

static size_t
b64url(const unsigned char *in, size_t len, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = 0, i;

    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

        out[n++] = abc[v >> 18 & 63];
        out[n++] = abc[v >> 12 & 63];
        out[n++] = abc[v >> 6 & 63];
        out[n++] = abc[v & 63];
    }
    if (len - i == 1) {
        out[n++] = abc[in[i] >> 2];
        out[n++] = abc[(in[i] & 3) << 4];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 8 | in[i + 1];

        out[n++] = abc[v >> 10 & 63];
        out[n++] = abc[v >> 4 & 63];
        out[n++] = abc[(v & 15) << 2];
    }
    return n;
}

/* Does the HS256 signature of `tok` verify? (our own reading) */
static int
signature_ok(const char *tok, size_t len)
{
    const char *last = memrchr(tok, '.', len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char want[128];
    size_t n;

    if (last == NULL)
        return 0;
    if (HMAC(EVP_sha256(), secret, sizeof(secret) - 1, (const unsigned char *)tok,
             (size_t)(last - tok), mac, &maclen) == NULL)
        abort();
    n = b64url(mac, maclen, want);
    return (size_t)(tok + len - last - 1) == n && memcmp(last + 1, want, n) == 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ts_auth *a = policy();
    enum ts_auth_reason why = TS_AUTH_NREASONS;
    struct ts_principal p;
    char *s = malloc(size + 1);

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    if (ts_auth_verify(a, s, size, &p, &why) == 0) {
        if (p.kind == TS_PRINCIPAL_KEY) {
            if (size != strlen(API_KEY) || memcmp(s, API_KEY, size) != 0)
                abort();
        } else if (!signature_ok(s, size)) {
            abort();
        }
        ts_principal_dispose(&p);
    } else if (why >= TS_AUTH_NREASONS) {
        abort();
    }
    free(s);
    return 0;
}
