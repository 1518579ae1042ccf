/* test_placement.c — golden cpusets of dpep_placement_cpuset on synthetic hwloc
 * topologies and saved XML, its invariants, GPU locality lookup and binding.
 * Usage: test_placement DATA_DIR (the folder holding this-machine.xml and gpu-node.xml). */
#include "dpep_world.h"

#include <stdlib.h>
#include <string.h>

static int n_pass, n_fail;

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (cond) {                                                            \
            n_pass++;                                                          \
        } else {                                                               \
            n_fail++;                                                          \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                        \
            printf(__VA_ARGS__);                                               \
            printf("\n");                                                      \
        }                                                                      \
    } while (0)

static const char *mode_name(dpep_bind m)
{
    switch (m) {
    case DPEP_BIND_AUTO: return "auto";
    case DPEP_BIND_NONE: return "none";
    case DPEP_BIND_CORE: return "core";
    case DPEP_BIND_NUMA: return "numa";
    }
    return "?";
}

static hwloc_topology_t load_synthetic(const char *desc)
{
    hwloc_topology_t t;
    if (hwloc_topology_init(&t) != 0) return NULL;
    if (hwloc_topology_set_synthetic(t, desc) != 0 || hwloc_topology_load(t) != 0) {
        hwloc_topology_destroy(t);
        return NULL;
    }
    return t;
}

/* with_io: keep PCI devices (needed by the GPU locality lookup). */
static hwloc_topology_t load_xml(const char *dir, const char *name, bool with_io)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    hwloc_topology_t t;
    if (hwloc_topology_init(&t) != 0) return NULL;
    if (with_io) hwloc_topology_set_io_types_filter(t, HWLOC_TYPE_FILTER_KEEP_ALL);
    if (hwloc_topology_set_xml(t, path) != 0 || hwloc_topology_load(t) != 0) {
        printf("cannot load %s\n", path);
        hwloc_topology_destroy(t);
        return NULL;
    }
    return t;
}

/* Checks every local rank of one configuration against golden list strings
 * (hwloc_bitmap_list_asprintf of the cpuset: PU OS indices), then the
 * invariants: each set is whole cores; in AUTO without oversubscription the
 * sets are pairwise disjoint and their union is `pool` (NULL: the machine). */
static void check_case(const char *what, hwloc_topology_t topo, int local_size,
                       const int *gpu_numa, int n_gpus, dpep_bind mode,
                       const char *const *golden, bool disjoint, hwloc_const_cpuset_t pool)
{
    hwloc_bitmap_t *sets = calloc((size_t)local_size, sizeof *sets);
    hwloc_bitmap_t uni = hwloc_bitmap_alloc();
    for (int r = 0; r < local_size; r++) {
        sets[r] = hwloc_bitmap_alloc();
        dpep_status st = dpep_placement_cpuset(topo, r, local_size, gpu_numa, n_gpus, mode, sets[r]);
        char *s = NULL;
        hwloc_bitmap_list_asprintf(&s, sets[r]);
        bool ok = st == DPEP_OK && s && strcmp(s, golden[r]) == 0;
        EXPECT(ok, "%s [%s] rank %d/%d: got %s (%s), want %s", what, mode_name(mode), r,
               local_size, s ? s : "?", dpep_status_string(st), golden[r]);
        free(s);
        hwloc_bitmap_or(uni, uni, sets[r]);

        /* Whole cores: every core is either fully in or fully out. */
        bool whole = true;
        hwloc_obj_t core = NULL;
        while ((core = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_CORE, core)))
            if (hwloc_bitmap_intersects(core->cpuset, sets[r]) &&
                !hwloc_bitmap_isincluded(core->cpuset, sets[r]))
                whole = false;
        EXPECT(whole, "%s [%s] rank %d: set splits a core", what, mode_name(mode), r);
    }
    if (disjoint) {
        bool dis = true;
        for (int a = 0; a < local_size; a++)
            for (int b = a + 1; b < local_size; b++)
                if (hwloc_bitmap_intersects(sets[a], sets[b])) dis = false;
        EXPECT(dis, "%s [%s]: sets of %d ranks overlap", what, mode_name(mode), local_size);
    }
    if (mode == DPEP_BIND_AUTO && disjoint) {
        hwloc_const_cpuset_t want = pool ? pool : hwloc_topology_get_topology_cpuset(topo);
        EXPECT(hwloc_bitmap_isequal(uni, want), "%s [auto]: union does not cover the pool", what);
    }
    /* CORE picks the first core of the AUTO block, so it is a subset of it. */
    if (mode == DPEP_BIND_CORE) {
        hwloc_bitmap_t a = hwloc_bitmap_alloc();
        bool sub = true;
        for (int r = 0; r < local_size; r++) {
            dpep_placement_cpuset(topo, r, local_size, gpu_numa, n_gpus, DPEP_BIND_AUTO, a);
            if (!hwloc_bitmap_isincluded(sets[r], a)) sub = false;
            if (hwloc_get_nbobjs_inside_cpuset_by_type(topo, sets[r], HWLOC_OBJ_CORE) != 1)
                sub = false;
        }
        EXPECT(sub, "%s [core]: not one core inside the auto set", what);
        hwloc_bitmap_free(a);
    }
    for (int r = 0; r < local_size; r++) hwloc_bitmap_free(sets[r]);
    free(sets);
    hwloc_bitmap_free(uni);
}

/* ---- 2 packages x 2 NUMA x 16 cores x 2 PUs = 64 cores, 128 PUs ---------- *
 * GPUs 0-3 on package 0, 4-7 on package 1, two per NUMA node:
 *   gpu_numa = {0, 0, 1, 1, 2, 2, 3, 3}.
 * Core c (logical) holds PUs 2c and 2c+1; NUMA n holds PUs 32n..32n+31. */
static void test_big_synthetic(void)
{
    hwloc_topology_t t = load_synthetic("pack:2 numa:2 core:16 pu:2");
    EXPECT(t != NULL, "synthetic 2x2x16 loads");
    if (!t) return;
    const int g8[8] = {0, 0, 1, 1, 2, 2, 3, 3};

    static const char *const auto8[] = {"0-15",   "16-31",  "32-47",  "48-63",
                                        "64-79",  "80-95",  "96-111", "112-127"};
    check_case("2x2x16 8gpu 8rank", t, 8, g8, 8, DPEP_BIND_AUTO, auto8, true, NULL);

    /* Ranks r and r+8 drive GPU r; NUMA 0 is shared by ranks 0,1,8,9 (in rank order). */
    static const char *const auto16[] = {
        "0-7",   "8-15",  "32-39", "40-47", "64-71", "72-79", "96-103",  "104-111",
        "16-23", "24-31", "48-55", "56-63", "80-87", "88-95", "112-119", "120-127"};
    check_case("2x2x16 8gpu 16rank", t, 16, g8, 8, DPEP_BIND_AUTO, auto16, true, NULL);

    static const char *const core8[] = {"0-1",   "16-17", "32-33", "48-49",
                                        "64-65", "80-81", "96-97", "112-113"};
    check_case("2x2x16 8gpu 8rank", t, 8, g8, 8, DPEP_BIND_CORE, core8, true, NULL);

    static const char *const core16[] = {
        "0-1",   "8-9",   "32-33", "40-41", "64-65", "72-73", "96-97",   "104-105",
        "16-17", "24-25", "48-49", "56-57", "80-81", "88-89", "112-113", "120-121"};
    check_case("2x2x16 8gpu 16rank", t, 16, g8, 8, DPEP_BIND_CORE, core16, true, NULL);

    static const char *const numa8[] = {"0-31",  "0-31",  "32-63",  "32-63",
                                        "64-95", "64-95", "96-127", "96-127"};
    check_case("2x2x16 8gpu 8rank", t, 8, g8, 8, DPEP_BIND_NUMA, numa8, false, NULL);

    static const char *const none8[] = {"0-127", "0-127", "0-127", "0-127",
                                        "0-127", "0-127", "0-127", "0-127"};
    check_case("2x2x16 8gpu 8rank", t, 8, g8, 8, DPEP_BIND_NONE, none8, false, NULL);

    /* More GPUs than ranks: ranks 0-3 drive GPUs 0-3, on NUMA 0 and 1 only. */
    static const char *const auto4of8[] = {"0-15", "16-31", "32-47", "48-63"};
    hwloc_bitmap_t pool01 = hwloc_bitmap_alloc();
    hwloc_bitmap_set_range(pool01, 0, 63);
    check_case("2x2x16 8gpu 4rank", t, 4, g8, 8, DPEP_BIND_AUTO, auto4of8, true, pool01);

    /* No GPU: contiguous blocks of the 64 cores, spread over the NUMA nodes. */
    static const char *const cpu4[] = {"0-31", "32-63", "64-95", "96-127"};
    check_case("2x2x16 cpu 4rank", t, 4, NULL, 0, DPEP_BIND_AUTO, cpu4, true, NULL);
    check_case("2x2x16 cpu 8rank", t, 8, NULL, 0, DPEP_BIND_AUTO, auto8, true, NULL);
    static const char *const cpu3[] = {"0-41", "42-83", "84-127"};
    check_case("2x2x16 cpu 3rank", t, 3, NULL, 0, DPEP_BIND_AUTO, cpu3, true, NULL);
    static const char *const cpucore4[] = {"0-1", "32-33", "64-65", "96-97"};
    check_case("2x2x16 cpu 4rank", t, 4, NULL, 0, DPEP_BIND_CORE, cpucore4, true, NULL);
    static const char *const cpunuma6[] = {"0-31", "32-63", "64-95", "96-127", "0-31", "32-63"};
    check_case("2x2x16 cpu 6rank", t, 6, NULL, 0, DPEP_BIND_NUMA, cpunuma6, false, NULL);

    /* Unknown GPU locality (all, or only one GPU): the CPU-only spread. */
    const int gunk[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    check_case("2x2x16 unknown-gpu 4rank", t, 4, gunk, 8, DPEP_BIND_AUTO, cpu4, true, NULL);
    const int gpart[4] = {0, 0, 1, -1}; /* GPU path would give 0-15,16-31,32-63,? */
    check_case("2x2x16 part-unknown-gpu 4rank", t, 4, gpart, 4, DPEP_BIND_AUTO, cpu4, true, NULL);
    /* Only the GPUs some rank drives matter: GPU 7 is unknown but unused. */
    const int gunused[8] = {0, 0, 1, 1, 2, 2, 3, -1};
    check_case("2x2x16 unused-unknown-gpu 4rank", t, 4, gunused, 8, DPEP_BIND_AUTO, auto4of8,
               true, pool01);
    static const char *const numa_unk4[] = {"0-31", "32-63", "64-95", "96-127"};
    check_case("2x2x16 unknown-gpu 4rank", t, 4, gunk, 8, DPEP_BIND_NUMA, numa_unk4, false, NULL);

    /* Oversubscribed with GPUs: 40 ranks per NUMA node on its 16 cores share
     * them round-robin: rank 0 is position 0 on NUMA 0, rank 8 position 2, … */
    {
        hwloc_bitmap_t s = hwloc_bitmap_alloc();
        char *str = NULL;
        /* Rank 152 = 8*19: position 38 on NUMA 0 -> core 38 % 16 = 6 -> PUs 12-13. */
        dpep_status st = dpep_placement_cpuset(t, 152, 160, g8, 8, DPEP_BIND_AUTO, s);
        hwloc_bitmap_list_asprintf(&str, s);
        EXPECT(st == DPEP_OK && strcmp(str, "12-13") == 0, "oversubscribed GPU rank 152/160: %s", str);
        free(str);
        /* Rank 159: GPU 7 (NUMA 3), position 39 -> core 48 + 7 = 55 -> PUs 110-111. */
        st = dpep_placement_cpuset(t, 159, 160, g8, 8, DPEP_BIND_CORE, s);
        hwloc_bitmap_list_asprintf(&str, s);
        EXPECT(st == DPEP_OK && strcmp(str, "110-111") == 0, "oversubscribed GPU rank 159/160 core: %s", str);
        free(str);
        hwloc_bitmap_free(s);
    }

    /* Bad input: a status, and `out` untouched. */
    {
        hwloc_bitmap_t s = hwloc_bitmap_alloc();
        hwloc_bitmap_only(s, 77);
        const int gbad[2] = {0, 4};
        EXPECT(dpep_placement_cpuset(t, 8, 8, g8, 8, DPEP_BIND_AUTO, s) == DPEP_ERR_INVALID,
               "rank >= size is invalid");
        EXPECT(dpep_placement_cpuset(t, -1, 8, g8, 8, DPEP_BIND_AUTO, s) == DPEP_ERR_INVALID,
               "negative rank is invalid");
        EXPECT(dpep_placement_cpuset(t, 0, 0, g8, 8, DPEP_BIND_AUTO, s) == DPEP_ERR_INVALID,
               "size 0 is invalid");
        EXPECT(dpep_placement_cpuset(t, 0, 2, gbad, 2, DPEP_BIND_AUTO, s) == DPEP_ERR_INVALID,
               "NUMA index out of range is invalid");
        EXPECT(dpep_placement_cpuset(t, 0, 2, NULL, 2, DPEP_BIND_AUTO, s) == DPEP_ERR_INVALID,
               "GPUs without gpu_numa is invalid");
        EXPECT(dpep_placement_cpuset(t, 0, 2, NULL, 0, (dpep_bind)42, s) == DPEP_ERR_INVALID,
               "unknown mode is invalid");
        EXPECT(hwloc_bitmap_weight(s) == 1 && hwloc_bitmap_isset(s, 77), "out untouched on error");
        hwloc_bitmap_free(s);
    }
    hwloc_bitmap_free(pool01);
    hwloc_topology_destroy(t);
}

/* ---- 1 NUMA x 2 cores x 1 PU: the shape of the machine this was written on. */
static void test_small_synthetic(void)
{
    hwloc_topology_t t = load_synthetic("numa:1 core:2 pu:1");
    EXPECT(t != NULL, "synthetic 1x2 loads");
    if (!t) return;
    static const char *const r1[] = {"0-1"};
    static const char *const r2[] = {"0", "1"};
    static const char *const r4[] = {"0", "1", "0", "1"};
    static const char *const r8[] = {"0", "1", "0", "1", "0", "1", "0", "1"};
    static const char *const c1[] = {"0"};
    static const char *const n2[] = {"0-1", "0-1"};
    check_case("1x2 cpu 1rank", t, 1, NULL, 0, DPEP_BIND_AUTO, r1, true, NULL);
    check_case("1x2 cpu 2rank", t, 2, NULL, 0, DPEP_BIND_AUTO, r2, true, NULL);
    check_case("1x2 cpu 4rank (oversubscribed)", t, 4, NULL, 0, DPEP_BIND_AUTO, r4, false, NULL);
    check_case("1x2 cpu 8rank (oversubscribed)", t, 8, NULL, 0, DPEP_BIND_AUTO, r8, false, NULL);
    check_case("1x2 cpu 8rank (oversubscribed)", t, 8, NULL, 0, DPEP_BIND_CORE, r8, false, NULL);
    check_case("1x2 cpu 1rank", t, 1, NULL, 0, DPEP_BIND_CORE, c1, true, NULL);
    check_case("1x2 cpu 2rank", t, 2, NULL, 0, DPEP_BIND_NUMA, n2, false, NULL);
    check_case("1x2 cpu 2rank", t, 2, NULL, 0, DPEP_BIND_NONE, n2, false, NULL);
    const int g1[1] = {0};
    check_case("1x2 1gpu 4rank (oversubscribed)", t, 4, g1, 1, DPEP_BIND_AUTO, r4, false, NULL);
    check_case("1x2 1gpu 2rank", t, 2, g1, 1, DPEP_BIND_AUTO, r2, true, NULL);
    hwloc_topology_destroy(t);

    /* No Core objects: PUs are the unit. */
    t = load_synthetic("pack:1 pu:4");
    EXPECT(t != NULL, "synthetic pu-only loads");
    if (!t) return;
    static const char *const p2[] = {"0-1", "2-3"};
    check_case("pu-only cpu 2rank", t, 2, NULL, 0, DPEP_BIND_AUTO, p2, true, NULL);
    hwloc_topology_destroy(t);
}

/* ---- saved XML of this machine (lstopo --no-io): 1 NUMA, 2 cores. -------- */
static void test_this_machine_xml(const char *dir)
{
    hwloc_topology_t t = load_xml(dir, "this-machine.xml", false);
    EXPECT(t != NULL, "this-machine.xml loads");
    if (!t) return;
    static const char *const r1[] = {"0-1"};
    static const char *const r2[] = {"0", "1"};
    static const char *const r3[] = {"0", "1", "0"};
    check_case("this-machine cpu 1rank", t, 1, NULL, 0, DPEP_BIND_AUTO, r1, true, NULL);
    check_case("this-machine cpu 2rank", t, 2, NULL, 0, DPEP_BIND_AUTO, r2, true, NULL);
    check_case("this-machine cpu 3rank", t, 3, NULL, 0, DPEP_BIND_AUTO, r3, false, NULL);
    check_case("this-machine cpu 2rank", t, 2, NULL, 0, DPEP_BIND_NUMA, (const char *const[]){"0-1", "0-1"}, false, NULL);
    hwloc_topology_destroy(t);
}

/* ---- gpu-node.xml (make_gpu_node_xml.py): 2 packages x 2 NUMA x 4 cores x 2
 * PUs, Intel numbering (core c has PUs c and c+16), one GPU per NUMA node. */
static void test_gpu_node_xml(const char *dir)
{
    hwloc_topology_t t = load_xml(dir, "gpu-node.xml", true);
    EXPECT(t != NULL, "gpu-node.xml loads");
    if (!t) return;
    struct { const char *busid; int numa; } bus[] = {
        {"0000:1b:00.0", 0},     {"0000:3B:00.0", 1}, /* upper case, as CUDA prints it */
        {"00000000:8b:00.0", 2}, /* nvidia-smi's 8-digit domain */
        {"0000:bb:00.0", 3},
        {"0000:5d:00.0", -1},    /* under a package spanning two NUMA nodes */
        {"0000:e1:00.0", -1},    /* under the Machine */
        {"0000:ff:00.0", -1},    /* not in the topology */
        {"", -1},
    };
    for (size_t i = 0; i < sizeof bus / sizeof bus[0]; i++) {
        int n = dpep_placement_busid_numa(t, bus[i].busid);
        EXPECT(n == bus[i].numa, "busid %s -> NUMA %d, want %d", bus[i].busid, n, bus[i].numa);
    }
    int g4[4];
    for (int g = 0; g < 4; g++) g4[g] = dpep_placement_busid_numa(t, bus[g].busid);

    static const char *const a4[] = {"0-3,16-19", "4-7,20-23", "8-11,24-27", "12-15,28-31"};
    check_case("gpu-node 4gpu 4rank", t, 4, g4, 4, DPEP_BIND_AUTO, a4, true, NULL);
    static const char *const a8[] = {"0-1,16-17", "4-5,20-21", "8-9,24-25", "12-13,28-29",
                                     "2-3,18-19", "6-7,22-23", "10-11,26-27", "14-15,30-31"};
    check_case("gpu-node 4gpu 8rank", t, 8, g4, 4, DPEP_BIND_AUTO, a8, true, NULL);
    static const char *const c8[] = {"0,16", "4,20", "8,24", "12,28",
                                     "2,18", "6,22", "10,26", "14,30"};
    check_case("gpu-node 4gpu 8rank", t, 8, g4, 4, DPEP_BIND_CORE, c8, true, NULL);
    check_case("gpu-node 4gpu 4rank", t, 4, g4, 4, DPEP_BIND_NUMA, a4, false, NULL);
    static const char *const cpu2[] = {"0-7,16-23", "8-15,24-31"};
    check_case("gpu-node cpu 2rank", t, 2, NULL, 0, DPEP_BIND_AUTO, cpu2, true, NULL);
    hwloc_topology_destroy(t);

    /* Loaded without I/O objects, the PCI lookup cannot tell. */
    t = load_xml(dir, "gpu-node.xml", false);
    EXPECT(t && dpep_placement_busid_numa(t, "0000:1b:00.0") == -1,
           "without I/O objects the GPU locality is unknown");
    if (t) hwloc_topology_destroy(t);
}

/* ---- dpep_placement_gpu_numa on the real machine. -------------------------- */
static void test_gpu_numa_here(void)
{
    hwloc_topology_t t;
    EXPECT(hwloc_topology_init(&t) == 0, "topology init");
    hwloc_topology_set_io_types_filter(t, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    EXPECT(hwloc_topology_load(t) == 0, "topology load");
    int n_numa = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);

    EXPECT(dpep_placement_gpu_numa(t, 0, NULL) == DPEP_OK, "no GPU asked: OK");
    int count = 0;
    char why[256];
    dpep_status cst = dpep_cuda_device_count(&count, why, sizeof why);
    if (cst != DPEP_OK || count <= 0) {
        int g[2] = {-7, -7};
        dpep_status st = dpep_placement_gpu_numa(t, 2, g);
        EXPECT(st == DPEP_ERR_NO_DEVICE,
               "gpu_numa without GPU: %s", dpep_status_string(st));
        EXPECT(st == DPEP_OK || (g[0] == -7 && g[1] == -7), "gpu_numa untouched on error");
        printf("no GPU here (%s): gpu_numa -> %s\n", cst == DPEP_OK ? "0 devices" : why,
               dpep_status_string(st));
    } else {
        int *g = malloc((size_t)count * sizeof *g);
        dpep_status st = dpep_placement_gpu_numa(t, count, g);
        EXPECT(st == DPEP_OK, "gpu_numa with %d GPU(s): %s", count, dpep_status_string(st));
        for (int i = 0; st == DPEP_OK && i < count; i++) {
            char busid[32] = "";
            dpep_cuda_pci_bus_id(i, busid, sizeof busid);
            printf("GPU %d (%s): NUMA L#%d\n", i, busid, g[i]);
            EXPECT(g[i] >= -1 && g[i] < n_numa, "GPU %d NUMA %d in range", i, g[i]);
        }
        free(g);
    }
    hwloc_topology_destroy(t);
}

/* ---- dpep_placement_apply on the real process; the binding is restored. --- */
static void test_apply(void)
{
    hwloc_topology_t t;
    if (hwloc_topology_init(&t) != 0 || hwloc_topology_load(t) != 0) {
        EXPECT(0, "topology load");
        return;
    }
    hwloc_bitmap_t orig = hwloc_bitmap_alloc();
    bool have_orig = hwloc_get_cpubind(t, orig, HWLOC_CPUBIND_PROCESS) == 0;
    char *orig_s = NULL;
    hwloc_bitmap_list_asprintf(&orig_s, orig);
    hwloc_const_cpuset_t all = hwloc_topology_get_topology_cpuset(t);

    char desc[128];
    bool kept = true;
    EXPECT(dpep_placement_apply(t, NULL, DPEP_BIND_NONE, &kept, desc, sizeof desc) == DPEP_OK,
           "apply none");
    EXPECT(!kept, "apply none keeps nothing");
    EXPECT(!have_orig || strcmp(desc, orig_s) == 0, "apply none desc %s = current %s", desc, orig_s);
    EXPECT(dpep_placement_apply(t, NULL, DPEP_BIND_AUTO, &kept, desc, sizeof desc) == DPEP_ERR_INVALID,
           "apply auto without a set is invalid");

    hwloc_obj_t core0 = hwloc_get_obj_by_type(t, HWLOC_OBJ_CORE, 0);
    if (!core0) core0 = hwloc_get_obj_by_type(t, HWLOC_OBJ_PU, 0);
    bool orig_full = have_orig && hwloc_bitmap_isincluded(all, orig);
    if (core0 && orig_full && !hwloc_bitmap_isequal(core0->cpuset, all)) {
        char *c0 = NULL;
        hwloc_bitmap_list_asprintf(&c0, core0->cpuset);
        /* CORE binds explicitly. */
        dpep_status st = dpep_placement_apply(t, core0->cpuset, DPEP_BIND_CORE, &kept, desc, sizeof desc);
        EXPECT(st == DPEP_OK && !kept, "apply core: %s", dpep_status_string(st));
        bool bound = strcmp(desc, c0) == 0;
        printf("apply core: bound to %s (want %s)\n", desc, c0);
        if (bound) {
            /* Now bound to a strict subset (as by mpirun): AUTO keeps it. */
            st = dpep_placement_apply(t, all, DPEP_BIND_AUTO, &kept, desc, sizeof desc);
            EXPECT(st == DPEP_OK && kept && strcmp(desc, c0) == 0,
                   "apply auto keeps the launcher binding: kept=%d desc=%s", kept, desc);
            /* Back to the whole machine: AUTO binds. */
            hwloc_set_cpubind(t, orig, HWLOC_CPUBIND_PROCESS);
            st = dpep_placement_apply(t, core0->cpuset, DPEP_BIND_AUTO, &kept, desc, sizeof desc);
            EXPECT(st == DPEP_OK && !kept && strcmp(desc, c0) == 0,
                   "apply auto binds when unbound: kept=%d desc=%s", kept, desc);
        }
        free(c0);
    } else {
        printf("apply: process already bound to %s or single-core machine; bind checks skipped\n",
               orig_s ? orig_s : "?");
    }
    if (have_orig) hwloc_set_cpubind(t, orig, HWLOC_CPUBIND_PROCESS);
    free(orig_s);
    hwloc_bitmap_free(orig);
    hwloc_topology_destroy(t);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/placement/data";
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep lines in order with the log on stderr */
    dpep_log_init();
    test_big_synthetic();
    test_small_synthetic();
    test_this_machine_xml(dir);
    test_gpu_node_xml(dir);
    test_gpu_numa_here();
    test_apply();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
