/* The host table handed to plugins (moonwire/host.h), wired to the core. */
#ifndef MW_HOST_INTERNAL_H
#define MW_HOST_INTERNAL_H

#include "moonwire/host.h"

/* The one host table of this process. */
const mw_host_v1_t *mw__host(void);

#endif
