/* The core's own endpoints: /api/publish, /api/broadcast, /healthz,
 * /metrics and the page at /. */
#ifndef MW_API_H
#define MW_API_H

#include "server.h"

/* Registers the core routes on the server (before the workers start). */
void mw__api_register(mw_server_t *s);

#endif
