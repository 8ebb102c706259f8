/* Test plugin: built for ABI 2.0 (a major this moonwire does not speak). */
#include "moonwire/plugin.h"

/* Stays a refusal if the host's major ever becomes 2. */
_Static_assert(MW_ABI_MAJOR != 2, "bad_major must not match the host's major");

static int bad_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                    void **state) {
  return 0;
}

/* The exported plugin struct, with a wrong abi_major. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    .abi_major = 2, /* what this moonwire refuses */
    .abi_minor = 0,
    .struct_size = sizeof(mw_plugin_v1_t),
    .kind = MW_PLUGIN_TRANSPORT,
    .name = "bad_major",
    .version = "1.0",
    .init = bad_init,
};
