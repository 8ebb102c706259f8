/* Test plugin: an unknown kind (99). */
#include "moonwire/plugin.h"

/* Stays unknown if kinds are added. */
_Static_assert(99 != MW_PLUGIN_TRANSPORT && 99 != MW_PLUGIN_STORAGE,
               "bad_kind must name no known kind");

static int bad_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                    void **state) {
  return 0;
}

/* The exported plugin struct, of kind 99. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    MW_PLUGIN_V1_HEADER(99, "bad_kind", "1.0"),
    .init = bad_init,
};
