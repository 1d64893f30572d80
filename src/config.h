/* Configuration helpers for other modules (the API is in taskstream.h). */
#ifndef TS_CONFIG_H
#define TS_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "taskstream.h"

/*
 * Split a listen address as ts_config_parse() accepts it: "host:port" with an
 * IPv4 literal or "localhost", or "[IPv6]:port"; port 0..65535. `host` gets
 * the host without brackets (hostlen >= 46 fits any valid one). `host` may be
 * NULL to only validate. Returns 0 or -EINVAL. Any thread.
 */
int ts_config_address_split(const char *addr, char *host, size_t hostlen, uint16_t *port);

#endif
