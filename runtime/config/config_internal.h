/* config_internal.h — internal to runtime/: shared between the option table
 * and the config loader. */
#ifndef DPEP_CONFIG_INTERNAL_H
#define DPEP_CONFIG_INTERNAL_H

#include "dpep_config.h"

/* Section names in file order, NULL-terminated. */
extern const char *const dpep_config_sections[];

/* Edit distance between two short strings (capped at 64 chars each). */
int dpep_edit_distance(const char *a, const char *b);

#endif
