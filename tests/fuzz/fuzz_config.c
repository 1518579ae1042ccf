/* fuzz_config.c — libFuzzer target for the YAML config loader: any input
 * must end in DPEP_OK or a diagnosed DPEP_ERR_INVALID, never a crash, a
 * leak or unbounded work. Overrides and validation run on what loaded. */
#include "dpep_config.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    dpep_config cfg;
    if (dpep_config_init(&cfg) != DPEP_OK) abort();
    dpep_diag diag;
    dpep_diag_init(&diag);
    /* The first byte picks a cookbook entry name to exercise selection. */
    const char *conf = NULL;
    if (size > 0 && (data[0] & 3) == 1) conf = "high-throughput-dp";
    dpep_status st = dpep_config_load_buffer(&cfg, (const char *)data, size, "fuzz/cfg.yaml",
                                             conf, &diag);
    if (st != DPEP_OK && st != DPEP_ERR_INVALID) abort();
    if (st == DPEP_ERR_INVALID && diag.n_errors == 0) abort(); /* errors are always named */
    if (st == DPEP_OK) {
        if (dpep_config_validate(&cfg, 0, &diag) == DPEP_OK) {
            dpep_layout l;
            if (dpep_layout_from_config(&cfg, 0, &l) != DPEP_OK) abort();
            for (int r = 0; r < l.world && r < 4096; r++) {
                dpep_rank_info ri;
                dpep_layout_rank(&l, r, &ri);
                if (ri.ep_rank * l.moe_tp + ri.moe_tp_rank != ri.instance_rank) abort();
            }
        }
        char buf[4096];
        for (size_t i = 0; i < dpep_config_option_count(); i++)
            dpep_config_format_value(&cfg, (int)i, buf, sizeof buf);
    }
    dpep_config_free(&cfg);
    return 0;
}
