/* Test plugin: exports something, but not mw_plugin_v1. */
#include "moonwire/plugin.h"

static int bad_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                    void **state) {
  return 0;
}

/* A plugin struct under the wrong name. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin = {
    MW_PLUGIN_V1_HEADER(MW_PLUGIN_TRANSPORT, "no_symbol", "1.0"),
    .init = bad_init,
};
