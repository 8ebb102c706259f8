/* Test plugin: declares a struct_size larger than its own symbol. */
#include "moonwire/plugin.h"

static int bad_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                    void **state) {
  return 0;
}

/* The exported plugin struct, claiming 256 bytes more than it has. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    .abi_major = MW_ABI_MAJOR,
    .abi_minor = MW_ABI_MINOR,
    .struct_size = sizeof(mw_plugin_v1_t) + 256, /* larger than itself */
    .kind = MW_PLUGIN_TRANSPORT,
    .name = "oversize",
    .version = "1.0",
    .init = bad_init,
};
