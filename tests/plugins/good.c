/* Test plugin: a well-formed transport plugin named "good". */
#include "moonwire/plugin.h"

static int good_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                     void **state) {
  *state = NULL;
  return 0;
}

/* The exported plugin struct. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    MW_PLUGIN_V1_HEADER(MW_PLUGIN_TRANSPORT, "good", "1.0"),
    .init = good_init,
};
