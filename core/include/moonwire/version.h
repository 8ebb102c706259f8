/* moonwire version and plugin ABI version. */
#ifndef MOONWIRE_VERSION_H
#define MOONWIRE_VERSION_H

#define MW_VERSION_STRING "0.1.0"

/* Plugin ABI: a plugin must have an equal major and a minor not newer than
 * the host's. Minor grows when fields are appended; major on any break. */
#define MW_ABI_MAJOR 1
#define MW_ABI_MINOR 3

#endif
