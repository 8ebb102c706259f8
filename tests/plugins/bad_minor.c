/* Test plugin: built for a newer minor ABI than this moonwire's. */
#include "moonwire/plugin.h"

static int bad_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                    void **state) {
  return 0;
}

/* The exported plugin struct, with abi_minor one ahead. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    .abi_major = MW_ABI_MAJOR,
    .abi_minor = MW_ABI_MINOR + 1, /* newer than this moonwire */
    .struct_size = sizeof(mw_plugin_v1_t),
    .kind = MW_PLUGIN_TRANSPORT,
    .name = "bad_minor",
    .version = "1.0",
    .init = bad_init,
};
