/* The demo page at `/` and the JavaScript client at `/moonwire.js`, both
 * embedded in the binary at build time (examples/demo/index.html,
 * examples/client/moonwire.js; see embed_file.cmake). */
#ifndef MW_DEMO_H
#define MW_DEMO_H

#include "server.h"

/* Registers GET /, /demo.css, /demo.js and /moonwire.js (before the
 * workers start). */
void mw__demo_register(mw_server_t *s);

#endif
